#!/usr/bin/env python3
"""Benchmark `detector live` against `tcpdump -w` under the same DNS load, same run.

A local dnsmasq answers every name on 127.0.0.1:PORT; dnsperf (Debian) sends
queries at fixed rates (default 5k and 20k per second) for --seconds each. For
each rate, one after the other:

  detector live --ports PORT -q -o /dev/null   (the sensor: capture, decode, detect)
  tcpdump -i lo -w FILE udp port PORT           (the peer: capture only)

and prints, per rate: DNS messages seen, BPF events lost, CPU seconds (user +
system, read from /proc during the load window only, so BPF compilation at
start-up is not counted) per 1,000 DNS messages, the ratio to tcpdump, and
peak RSS. Needs root.

    .venv/bin/python bench/live.py [--rates 5000,20000] [--seconds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK  # utime + stime


def rss_peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dnsperf(port: int, qfile: str, rate: int, seconds: float) -> dict:
    out = subprocess.run(["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", qfile, "-Q", str(rate),
                          "-l", str(seconds), "-c", "4", "-T", "1"], capture_output=True, text=True)
    sent = done = 0
    for line in out.stdout.splitlines():
        line = line.strip()
        if line.startswith("Queries sent:"):
            sent = int(line.split()[2])
        elif line.startswith("Queries completed:"):
            done = int(line.split()[2])
    return {"sent": sent, "completed": done}


def run_with(cmd: list[str], ready, port: int, qfile: str, rate: int, seconds: float) -> dict:
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        ready(p)
        c0 = cpu_seconds(p.pid)
        load = dnsperf(port, qfile, rate, seconds)
        time.sleep(0.5)  # let the reader drain
        c1 = cpu_seconds(p.pid)
        rss = rss_peak_mib(p.pid)
    finally:
        p.send_signal(2)
        try:
            _, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
    return {**load, "cpu": c1 - c0, "rss": rss, "stderr": err}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="5000,20000")
    ap.add_argument("--seconds", type=float, default=30)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/live.py needs root", file=sys.stderr)
        return 10
    for tool in ("dnsperf", "tcpdump"):
        if not shutil.which(tool):
            print(f"{tool} is missing: ./setup.sh installs it", file=sys.stderr)
            return 2
    dnsmasq = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="bench-live-"))
    qfile = tmp / "queries.txt"
    rnd = random.Random(1)
    qfile.write_text("".join(f"host{rnd.randrange(10**6)}.example.com A\n" for _ in range(50000)))
    srv = subprocess.Popen([dnsmasq, "-k", "--no-resolv", "--no-hosts", "--address=/#/1.2.3.4",
                            "--listen-address=127.0.0.1", f"--port={port}", "--bind-interfaces", "-z",
                            "--user=root", "--pid-file=", "--cache-size=0", "--dns-forward-max=10000"])
    time.sleep(0.5)
    detector = [str(REPO / ".venv" / "bin" / "detector")]
    if not os.path.exists(detector[0]):
        detector = [sys.executable, "-m", "detector"]
    rows = []
    try:
        for rate in [int(r) for r in args.rates.split(",")]:
            summ = tmp / f"live-{rate}.json"

            def live_ready(p):
                t = time.monotonic()
                while time.monotonic() - t < 120:
                    line = p.stderr.readline()
                    if "capturing DNS" in line or not line:
                        return
                raise SystemExit("detector live did not start")

            live = run_with(detector + ["live", "--ports", str(port), "-o", "/dev/null",
                                        "--summary-json", str(summ), "--rules", str(REPO / "rules")],
                            live_ready, port, str(qfile), rate, args.seconds)
            s = json.loads(summ.read_text()) if summ.exists() else {}
            msgs = s.get("dns_messages", 0)
            pcap = tmp / f"tcpdump-{rate}.pcap"
            td = run_with(["tcpdump", "-i", "lo", "-w", str(pcap), "-U", "-n", "udp", "port", str(port)],
                          lambda p: time.sleep(1.0), port, str(qfile), rate, args.seconds)
            td_pkts = 0
            if "packets captured" in td["stderr"]:
                for line in td["stderr"].splitlines():
                    if "packets captured" in line:
                        td_pkts = int(line.split()[0])
            rows.append((rate, live, msgs, s.get("lost_bpf_events"), td, td_pkts))
    finally:
        srv.terminate()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nlocal dnsmasq, dnsperf {args.seconds:.0f} s per rate; CPU = user+system seconds "
          "during the load window")
    print(f"{'rate q/s':>9} {'run':<16}{'sent':>9}{'messages':>10}{'lost':>6}{'CPU s':>8}"
          f"{'CPU s/1k msg':>13}{'vs tcpdump':>11}{'peak RSS':>10}")
    for rate, live, msgs, lost, td, td_pkts in rows:
        lk = live["cpu"] / max(msgs, 1) * 1000
        tk = td["cpu"] / max(td_pkts, 1) * 1000
        print(f"{rate:>9} {'detector live':<16}{live['sent']:>9,}{msgs:>10,}{lost or 0:>6}{live['cpu']:>8.2f}"
              f"{lk:>13.4f}{lk / tk if tk else float('nan'):>10.2f}x{live['rss']:>7.0f} MiB")
        print(f"{rate:>9} {'tcpdump -w':<16}{td['sent']:>9,}{td_pkts:>10,}{'-':>6}{td['cpu']:>8.2f}"
              f"{tk:>13.4f}{1.0:>10.2f}x{td['rss']:>7.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
