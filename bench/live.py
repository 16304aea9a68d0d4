#!/usr/bin/env python3
"""Benchmark `detector live` (every rule on) against `tcpdump -w` under the same DNS load, same run.

A local dnsmasq answers every name on 127.0.0.1:PORT; dnsperf (Debian) sends
queries at fixed rates (default 20k and 100k per second; a query and its
response are two messages) for --seconds each. For each rate, one after the
other:

  detector live --ports PORT -o ALERTS --rules rules/   (the sensor: capture, decode, every rule)
  tcpdump -i lo -w FILE udp port PORT                   (the peer: capture only)

Per run it prints: queries sent, DNS messages seen (of 2 x completed queries),
BPF events lost, messages shed under overload (sampled out in the kernel,
dropped from the backlog) and the sensor-overload alerts raised, the process's
CPU share (user + system CPU seconds over wall seconds of the load window, read
from /proc, so BPF compilation at start-up is not counted), CPU µs per message
and the ratio to tcpdump's, peak RSS (VmHWM: includes BCC's compiler at
start-up) and RSS at the end of the load; then the time SIGINT takes to stop
the process, sent while the load still runs. Needs root.

    .venv/bin/python bench/live.py [--rates 20000,100000] [--seconds 10]

Run it alone: flock /tmp/bench.lock .venv/bin/python bench/live.py
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import detector_command  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK  # utime + stime


def rss_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_dnsperf(out: str) -> dict:
    sent = done = 0
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Queries sent:"):
            sent = int(line.split()[2])
        elif line.startswith("Queries completed:"):
            done = int(line.split()[2])
    return {"sent": sent, "completed": done}


def dnsperf(port: int, qfile: str, rate: int, seconds: float) -> subprocess.Popen:
    return subprocess.Popen(["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", qfile, "-Q", str(rate),
                             "-l", str(seconds), "-c", "4", "-T", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def scrape(port: int) -> dict[str, float]:
    """dns_detector_input{kind=...} from the sensor's metrics endpoint."""
    import urllib.request

    out: dict[str, float] = {}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("dns_detector_input_total{kind="):
                k = line.split('"')[1]
                out[k] = float(line.rsplit(" ", 1)[1])
    return out


def run_with(cmd: list[str], ready, port: int, qfile: str, rate: int, seconds: float,
             metrics_port: int | None = None) -> dict:
    """Start cmd, wait until ready, load for `seconds` and measure; then (with metrics) SIGINT
    it while a second load runs and time the stop; else SIGINT it right away."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO)
    perf = None
    counts: dict[str, float] = {}
    try:
        ready(p)
        c0, t0 = cpu_seconds(p.pid), time.monotonic()
        perf = dnsperf(port, qfile, rate, seconds)
        out, _ = perf.communicate(timeout=seconds + 60)
        time.sleep(1.0)  # let the sensor drain what is in flight
        c1, t1 = cpu_seconds(p.pid), time.monotonic()
        rss_peak, rss_now = rss_mib(p.pid, "VmHWM"), rss_mib(p.pid, "VmRSS")
        if metrics_port is not None:
            counts = scrape(metrics_port)
            perf = dnsperf(port, qfile, rate, 5)  # SIGINT under load
            time.sleep(2.0)
        ts = time.monotonic()
        p.send_signal(signal.SIGINT)
        try:
            _, err = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        stop = time.monotonic() - ts
    finally:
        if p.poll() is None:
            p.kill()
        if perf is not None and perf.poll() is None:
            perf.kill()
            perf.wait()
    return {**parse_dnsperf(out), "cpu": c1 - c0, "wall": t1 - t0, "rss_peak": rss_peak, "rss": rss_now,
            "stop": stop, "stderr": err, "counts": counts}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="20000,100000")
    ap.add_argument("--seconds", type=float, default=10)
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
    detector = detector_command()
    rows = []
    try:
        for rate in [int(r) for r in args.rates.split(",")]:
            summ = tmp / f"live-{rate}.json"
            alerts = tmp / f"alerts-{rate}.jsonl"

            def live_ready(p):
                t = time.monotonic()
                while time.monotonic() - t < 120:
                    line = p.stderr.readline()
                    if "capturing DNS" in line or not line:
                        return
                raise SystemExit("detector live did not start")

            mport = free_port()
            live = run_with(detector + ["live", "--ports", str(port), "-o", str(alerts), "--format", "jsonl",
                                        "--summary-json", str(summ), "--rules", str(REPO / "rules"),
                                        "--metrics-port", str(mport)],
                            live_ready, port, str(qfile), rate, args.seconds, metrics_port=mport)
            if not summ.exists():
                print(f"detector live wrote no summary:\n{live['stderr'][-3000:]}", file=sys.stderr)
                return 1
            s = json.loads(summ.read_text())
            overload = 0
            if alerts.exists():
                for line in alerts.read_text().splitlines():
                    if "sensor-overload" in line:
                        overload += 1
            pcap = tmp / f"tcpdump-{rate}.pcap"
            td = run_with(["tcpdump", "-i", "lo", "-w", str(pcap), "-U", "-n", "udp", "port", str(port)],
                          lambda p: time.sleep(1.0), port, str(qfile), rate, args.seconds)
            td_pkts = 0
            for line in td["stderr"].splitlines():
                if "packets captured" in line:
                    td_pkts = int(line.split()[0])
            rows.append((rate, live, s, overload, td, td_pkts))
            pcap.unlink(missing_ok=True)
    finally:
        srv.terminate()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nlocal dnsmasq, dnsperf: {args.seconds:.0f} s measured per run (+3 s of load while SIGINT "
          "stops it); every rule on; CPU = user+system seconds of the process / wall seconds, "
          "load window only")
    print(f"{'rate q/s':>9} {'run':<14}{'sent':>10}{'messages':>11}{'of':>11}{'lost':>8}{'shed':>9}"
          f"{'alerts':>7}{'CPU':>7}{'µs/msg':>8}{'vs tcpdump':>11}{'peak RSS':>10}{'RSS':>8}{'SIGINT':>8}")
    for rate, live, s, overload, td, td_pkts in rows:
        c = live["counts"]  # at the end of the measured window (metrics endpoint)
        msgs = int(c.get("dns_messages", 0))
        lost = int(c.get("lost_bpf_events", 0))
        shed = int(c.get("sampled_out", 0) + c.get("shed_backlog", 0))
        lk = live["cpu"] / max(msgs, 1) * 1e6
        tk = td["cpu"] / max(td_pkts, 1) * 1e6
        print(f"{rate:>9} {'detector live':<14}{live['sent']:>10,}{msgs:>11,}{2 * live['completed']:>11,}"
              f"{lost:>8,}{shed:>9,}{overload:>7}{live['cpu'] / live['wall']:>7.2f}"
              f"{lk:>8.2f}{lk / tk if tk else float('nan'):>10.1f}x{live['rss_peak']:>6.0f} MiB"
              f"{live['rss']:>4.0f} MiB{live['stop']:>7.2f}s")
        print(f"{rate:>9} {'tcpdump -w':<14}{td['sent']:>10,}{td_pkts:>11,}{2 * td['completed']:>11,}"
              f"{'-':>8}{'-':>9}{'-':>7}{td['cpu'] / td['wall']:>7.2f}{tk:>8.2f}{1.0:>10.1f}x"
              f"{td['rss_peak']:>6.0f} MiB{td['rss']:>4.0f} MiB{td['stop']:>7.2f}s")
        print(f"{'':>9} {'':<14}window: seen {msgs / max(2 * live['completed'], 1):.1%} of messages, "
              f"{int(c.get('sampled_out', 0)):,} sampled out in the kernel, "
              f"{int(c.get('shed_backlog', 0)):,} dropped from the backlog, "
              f"{int(c.get('short_payloads', 0)):,} short; whole run: {s.get('dns_messages', 0):,} messages, "
              f"{s.get('discarded_at_stop', 0):,} discarded at stop, alerts by rule "
              f"{s.get('alerts_by_rule', {})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
