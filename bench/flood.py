#!/usr/bin/env python3
"""Memory under a random-subdomain flood: does the engine stay flat?

Builds (once, cached in bench/out/) a capture of --names unique names under
--domains registered domains (a water-torture flood: random labels, each
answered NXDOMAIN) from 50 clients, with a little ordinary traffic mixed in.
Then, pinned to one core, times

  detector replay pcap FILE -q --rules rules/ (+ the capture's resolver allowlisted)
  tshark -r FILE -T fields -e dns.qry.name -e dns.flags.rcode

sampling the detector's resident memory (VmRSS) every 0.25 s, and prints
RSS at each quarter of the run, its peak, the flood alerts raised, and the
run time against tshark's in the same run. Flat means the last quarter's RSS
is within a few MiB of the second quarter's: every table is bounded.

    .venv/bin/python bench/flood.py [--names 1000000] [--domains 300]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import OUT, cached_capture, detector_command, site_rules  # noqa: E402
from detector.capture.pcapwrite import ETH4, PcapWriter, dns_query, dns_response, ip4, udp  # noqa: E402


def build(path: Path, names: int, domains: int, seed: int = 5) -> None:
    rnd = random.Random(seed)
    targets = [f"victim{i}.example{i % 7}.com" for i in range(domains)]
    ordinary = ["www.example.org", "mail.example.net", "api.example.com", "cdn.example.io"]
    clients = [bytes([10, 2, i // 250, i % 250 + 1]) for i in range(50)]
    srv = bytes([10, 0, 0, 53])
    ts = 1_700_000_000.0
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    with open(path, "wb") as f:
        w = PcapWriter(f)
        for i in range(names):
            ts += 0.0001
            c = clients[i % len(clients)]
            if i % 20 == 0:
                name, rcode = rnd.choice(ordinary), 0
            else:
                label = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(8, 16)))
                name, rcode = f"{label}.{targets[i % domains]}", 3
            qid = i & 0xFFFF
            sport = 1024 + (i * 7919) % 60000
            w.write(ts, ETH4 + ip4(c, srv, 17, udp(sport, 53, dns_query(qid, name))))
            ans = [(1, bytes([192, 0, 2, 1]))] if rcode == 0 else []
            w.write(ts + 0.00005, ETH4 + ip4(srv, c, 17, udp(53, sport, dns_response(qid, name, answers=ans,
                                                                                     rcode=rcode))))


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_sampled(cmd: list[str]) -> tuple[float, list[int], int]:
    """Run cmd pinned to CPU 0; return (seconds, RSS samples in KiB, exit code)."""
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    t = time.perf_counter()
    p = subprocess.Popen(pin + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = []
    while p.poll() is None:
        samples.append(rss_kib(p.pid))
        time.sleep(0.25)
    return time.perf_counter() - t, [s for s in samples if s], p.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--names", type=int, default=1_000_000, help="DNS queries (each answered)")
    ap.add_argument("--domains", type=int, default=300)
    args = ap.parse_args()
    cap = cached_capture(f"flood-{args.names}-{args.domains}.pcap", build, args.names, args.domains)
    detector = detector_command()
    rules = site_rules("flood", ["10.0.0.53"])
    summary = OUT / "flood-summary.json"
    sec, rss, rc = run_sampled(detector + ["replay", "pcap", str(cap), "-q", "-o", "/dev/null",
                                           "--summary-json", str(summary),
                                           *rules])
    if rc != 0:
        raise SystemExit(f"detector exited {rc}")
    tsec, trss, trc = run_sampled(["tshark", "-n", "-r", str(cap), "-T", "fields", "-e", "dns.qry.name",
                                   "-e", "dns.flags.rcode"])
    s = json.loads(summary.read_text())
    packets = s["packets"]
    q = [rss[min(len(rss) - 1, len(rss) * k // 4)] / 1024 for k in range(1, 5)] if rss else [0] * 4
    print(f"\nflood: {args.names:,} queries ({packets:,} packets), {args.domains} target domains, "
          f"all rules, one core (taskset -c 0)")
    print(f"{'run':<22}{'seconds':>9}{'packets/s':>12}{'vs tshark':>11}{'peak RSS':>11}")
    print(f"{'detector replay':<22}{sec:>9.1f}{packets / sec:>12,.0f}{tsec / sec:>10.2f}x"
          f"{max(rss, default=0) / 1024:>8.0f} MiB")
    print(f"{'tshark fields':<22}{tsec:>9.1f}{packets / tsec:>12,.0f}{1:>10.2f}x"
          f"{max(trss, default=0) / 1024:>8.0f} MiB")
    print("detector RSS at 25/50/75/100% of the run: " + " / ".join(f"{x:.0f}" for x in q) + " MiB"
          f"  (last quarter minus second: {q[3] - q[1]:+.0f} MiB)")
    print(f"alerts by rule: {s['alerts_by_rule']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
