#!/usr/bin/env python3
"""Benchmark `detector replay pcap` against tshark on the same capture, same run.

Builds (once, cached in bench/out/) a capture of --packets DNS packets from real
names in ../shared/data: popular domains (benign/) plus a few percent DGA
domains (dga/families), queries and responses, over UDP and TCP, IPv4 and IPv6.
Then times, pinned to one core:

  detector replay pcap FILE -q --rules rules/ (+ the capture's resolvers allowlisted)
  detector replay pcap FILE -q --rules rules/denylist.yaml   (decode, TCP/IP reassembly,
                                              correlate, enrich, one rule: the pipeline's own cost)
  detector replay pcap FILE -q --events --format jsonl -o /dev/null   (all rules + every event)
  tshark -r FILE -T fields -e dns.qry.name -e dns.flags.rcode -e dns.a

and prints packets/s, the ratio to tshark and each one's peak RSS.

    .venv/bin/python bench/replay.py [--packets 1000000] [--dga-share 0.03]
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from detector.capture.pcapwrite import (  # noqa: E402
    ETH4, ETH6, PcapWriter, dns_query, dns_response, ip4, ip6, tcp, udp)
from detector.paths import shared_data  # noqa: E402

from bench.common import cached_capture, detector_command, site_rules  # noqa: E402


def load_names(data: Path, dga_share: float, seed: int) -> tuple[list[str], list[str]]:
    benign = []
    with open(data / "benign" / "alexa_top100k_2015.csv") as f:
        for line in f:
            parts = line.strip().split(",")
            if len(parts) >= 2:
                benign.append(parts[1])
    dga = []
    for p in sorted((data / "dga" / "families").iterdir()):
        with open(p, errors="replace") as f:
            dga.extend(line.strip().split(",")[0] for line in f if line.strip())
    rnd = random.Random(seed)
    rnd.shuffle(dga)
    return benign, dga


def build(path: Path, packets: int, dga_share: float, seed: int = 1) -> None:
    data = shared_data()
    benign, dga = load_names(data, dga_share, seed)
    rnd = random.Random(seed)
    clients4 = [bytes([10, 1, i // 250, i % 250 + 1]) for i in range(500)]
    clients6 = [bytes.fromhex("fd000000000000000000000000") + bytes([0, i // 256, i % 256]) for i in range(200)]
    srv4, srv6 = bytes([10, 0, 0, 53]), bytes.fromhex("fd000000000000000000000000000053")
    zipf = [int(len(benign) * (rnd.random() ** 3)) for _ in range(200_000)]  # popular names repeat
    ts = 1_700_000_000.0
    with open(path, "wb") as f:
        w = PcapWriter(f)

        def put(frame: bytes) -> None:
            nonlocal ts
            ts += 0.00005
            w.write(ts, frame)

        i = di = 0
        while w.count < packets:
            i += 1
            if rnd.random() < dga_share:
                name = dga[di % len(dga)]
                di += 1
            else:
                name = benign[zipf[i % len(zipf)]]
                if rnd.random() < 0.3:
                    name = "www." + name
            qid = i & 0xFFFF
            q = dns_query(qid, name)
            if rnd.random() < 0.08:
                r = dns_response(qid, name, rcode=3)
            else:
                r = dns_response(qid, name, answers=[(1, rnd.randbytes(4))
                                                     for _ in range(rnd.randint(1, 4))])
            sport = 1024 + (i * 7919) % 60000
            kind = rnd.random()
            if kind < 0.05:  # TCP, no handshake in the capture: length-prefixed data only
                c = clients4[i % len(clients4)]
                put(ETH4 + ip4(c, srv4, 6, tcp(sport, 53, 1000, 1, 0x18, struct.pack("!H", len(q)) + q)))
                put(ETH4 + ip4(srv4, c, 6, tcp(53, sport, 5000, 1001 + len(q) + 2, 0x18,
                                               struct.pack("!H", len(r)) + r)))
            elif kind < 0.20:
                c = clients6[i % len(clients6)]
                put(ETH6 + ip6(c, srv6, 17, udp(sport, 53, q)))
                put(ETH6 + ip6(srv6, c, 17, udp(53, sport, r)))
            else:
                c = clients4[i % len(clients4)]
                put(ETH4 + ip4(c, srv4, 17, udp(sport, 53, q)))
                put(ETH4 + ip4(srv4, c, 17, udp(53, sport, r)))


def measure(cmd: list[str]) -> tuple[float, int]:
    """Run cmd pinned to CPU 0; return (seconds, peak RSS in KiB)."""
    wrapper = [sys.executable, "-c",
               "import resource,subprocess,sys,time;t=time.perf_counter();"
               "r=subprocess.run(sys.argv[1:],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL);"
               "print(time.perf_counter()-t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode)"]
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    out = subprocess.run(wrapper + pin + cmd, capture_output=True, text=True, check=True).stdout.split()
    if out[2] != "0":  # a crashed run must not pass for a fast one
        raise SystemExit(f"{cmd[0]} exited {out[2]}")
    return float(out[0]), int(out[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--dga-share", type=float, default=0.03)
    ap.add_argument("--repeat", type=int, default=1, help="runs each; the best is kept")
    args = ap.parse_args()
    cap = cached_capture(f"bench-{args.packets}-{args.dga_share}.pcap", build, args.packets, args.dga_share)
    detector = detector_command()
    rules = site_rules("bench", ["10.0.0.53", "fd00::53"])
    runs = {
        "detector, all 8 rules": detector + ["replay", "pcap", str(cap), "-q", "-o", "/dev/null"] + rules,
        "detector, pipeline + denylist": detector + ["replay", "pcap", str(cap), "-q", "-o", "/dev/null",
                                                     "--rules", str(REPO / "rules" / "denylist.yaml")],
        "detector, all rules --events": detector + ["replay", "pcap", str(cap), "-q", "--events",
                                                    "--format", "jsonl", "-o", "/dev/null"] + rules,
        "tshark fields": ["tshark", "-n", "-r", str(cap), "-T", "fields", "-e", "dns.qry.name",
                          "-e", "dns.flags.rcode", "-e", "dns.a"],
    }
    res = {}
    for name, cmd in runs.items():
        best = min((measure(cmd) for _ in range(args.repeat)), key=lambda x: x[0])
        res[name] = best
    ref = res["tshark fields"][0]
    print(f"\ncapture: {args.packets:,} packets, {args.dga_share:.0%} DGA names, one core (taskset -c 0)")
    print(f"{'run':<32}{'seconds':>9}{'packets/s':>12}{'vs tshark':>11}{'peak RSS':>12}")
    for name, (sec, rss) in res.items():
        print(f"{name:<32}{sec:>9.2f}{args.packets / sec:>12,.0f}{ref / sec:>10.2f}x{rss / 1024:>9.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
