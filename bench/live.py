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

--overhead measures the kernel side instead: the cost per run of the cgroup_skb
programs (dns_skb.c, on every packet of the host) and of the sock_addr programs
(dns_sock.c, on every connect and unconnected sendmsg), with DNS on any port
(the content check) and with --no-any-port. It turns kernel.bpf_stats_enabled
on for the run (restored after) and reads run_time_ns and run_cnt from the
sensor's program file descriptors (/proc/PID/fdinfo). Load, from this process:
random 200-byte UDP datagrams to a local port (no DNS: what every QUIC, VPN or
game packet costs now) for half of --seconds, then TCP connects to a local
listener for the other half.

    .venv/bin/python bench/live.py --overhead --seconds 4

Run it alone: flock /tmp/bench.lock .venv/bin/python bench/live.py
"""

from __future__ import annotations

import argparse
import contextlib
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


PROG_TYPES = {"8": "cgroup_skb", "18": "cgroup_sock_addr"}  # enum bpf_prog_type
BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")


def prog_stats(pid: int) -> dict[str, list[int]]:
    """Summed [run_time_ns, run_cnt] of the BPF programs process ``pid`` holds, by type."""
    out: dict[str, list[int]] = {}
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd) != "anon_inode:bpf-prog":
                continue
            info = dict(line.split(":", 1) for line in (Path(f"/proc/{pid}/fdinfo") / fd.name)
                        .read_text().splitlines() if ":" in line)
        except OSError:
            continue
        kind = PROG_TYPES.get(info.get("prog_type", "").strip())
        if kind is None:
            continue
        acc = out.setdefault(kind, [0, 0])
        acc[0] += int(info.get("run_time_ns", "0"))
        acc[1] += int(info.get("run_cnt", "0"))
    return out


def udp_load(seconds: float) -> int:
    """Random 200-byte datagrams to a local sink as fast as one thread sends them."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dst = sink.getsockname()
    payloads = [os.urandom(200) for _ in range(64)]
    n = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for pl in payloads:
            tx.sendto(pl, dst)
        n += len(payloads)
        try:
            while True:
                sink.recv(2048)
        except BlockingIOError:
            pass
    tx.close()
    sink.close()
    return n


def connect_load(seconds: float) -> int:
    """TCP connects (and closes) to a local listener."""
    srv = socket.create_server(("127.0.0.1", 0), backlog=1024)
    srv.setblocking(False)
    addr = srv.getsockname()
    n = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        c = socket.create_connection(addr)
        c.close()
        n += 1
        try:
            while True:
                srv.accept()[0].close()
        except BlockingIOError:
            pass
    srv.close()
    return n


@contextlib.contextmanager
def running_sensor(detector: list[str], flags: list[str]):
    """`detector live --ports 53 FLAGS`, once it says it is capturing; stopped with SIGINT."""
    p = subprocess.Popen(detector + ["live", "--ports", "53", "--format", "jsonl", *flags],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        t = time.monotonic()
        while time.monotonic() - t < 120:
            line = p.stderr.readline()
            if "capturing DNS" in line or not line:
                break
        yield p
    finally:
        p.send_signal(signal.SIGINT)
        try:
            p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()


def overhead(detector: list[str], seconds: float) -> int:
    """The kernel programs' cost per run, with and without the content check."""
    old = BPF_STATS.read_text().strip()
    BPF_STATS.write_text("1")
    rows = []
    try:
        for mode, flags in (("any port", []), ("--no-any-port", ["--no-any-port"]),
                            ("--audit", ["--audit", "--resolvers", "127.0.0.0/8"]),
                            ("--enforce", ["--enforce", "--resolvers", "127.0.0.0/8"])):
            with running_sensor(detector, flags) as p:
                s0 = prog_stats(p.pid)
                udp = udp_load(seconds / 2)
                s1 = prog_stats(p.pid)
                conns = connect_load(seconds / 2)
                s2 = prog_stats(p.pid)

            def per_run(a, b, kind):
                ns = b.get(kind, [0, 0])[0] - a.get(kind, [0, 0])[0]
                runs = b.get(kind, [0, 0])[1] - a.get(kind, [0, 0])[1]
                return runs, ns / runs if runs else float("nan")

            sock_ns = s2.get("cgroup_sock_addr", [0, 0])[0] - s1.get("cgroup_sock_addr", [0, 0])[0]
            rows.append((mode, udp, per_run(s0, s1, "cgroup_skb"), per_run(s0, s1, "cgroup_sock_addr"),
                         conns, per_run(s1, s2, "cgroup_sock_addr"), sock_ns / conns if conns else 0.0))
    finally:
        BPF_STATS.write_text(old)
    print(f"\nkernel programs, ns per run (kernel.bpf_stats_enabled; {seconds / 2:.0f} s of each load)")
    print(f"{'mode':<15}{'UDP sent':>10}{'skb runs':>10}{'ns/skb':>8}{'sendmsg runs':>13}{'ns/sendmsg':>11}"
          f"{'connects':>10}{'sock runs':>10}{'ns/run':>8}{'ns/connect()':>13}")
    for mode, udp, (sr, sns), (mr, mns), conns, (cr, cns), per_conn in rows:
        print(f"{mode:<15}{udp:>10,}{sr:>10,}{sns:>8.0f}{mr:>13,}{mns:>11.0f}{conns:>10,}{cr:>10,}{cns:>8.0f}"
              f"{per_conn:>13.0f}")
    print("(--audit/--enforce add dns_enforce.c's programs to each connect: ns/connect() is all the\n"
          " sock_addr programs a connect() runs, summed; the policy approves 127.0.0.0/8, so nothing is refused)")
    tls_overhead(detector, seconds)
    return 0


TLS_PAIRS = r"""
import ssl, sys, time
cert, key, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
sc = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); sc.load_cert_chain(cert, key)
cc = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); cc.check_hostname = False; cc.verify_mode = ssl.CERT_NONE
a, b, c, d = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
srv = sc.wrap_bio(a, b, server_side=True); cli = cc.wrap_bio(c, d)
def pump():
    if d.pending: a.write(d.read())
    if b.pending: c.write(b.read())
for _ in range(20):
    for s in (cli, srv):
        try: s.do_handshake()
        except ssl.SSLWantReadError: pass
    pump()
msg = b"x" * 100
t = time.perf_counter()
for _ in range(n):
    cli.write(msg); pump(); srv.read(4096)
print((time.perf_counter() - t) / n * 1e6)
"""


def tls_overhead(detector: list[str], seconds: float, pairs: int = 20_000) -> None:
    """µs per SSL_write + SSL_read pair (OpenSSL over memory BIOs, one process) without
    the sensor, with `detector live`, and with `detector live --tls` (its uprobes)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        cert, key = f"{tmp}/cert.pem", f"{tmp}/key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-subj", "/CN=bench", "-days", "1", "-keyout", key, "-out", cert],
                       capture_output=True, check=True)

        def pair_us() -> float:
            r = subprocess.run([sys.executable, "-c", TLS_PAIRS, cert, key, str(pairs)],
                               capture_output=True, text=True, check=True)
            return float(r.stdout.strip())

        res = [("no sensor", pair_us())]
        for mode, flags in (("live", []), ("live --tls", ["--tls"])):
            with running_sensor(detector, flags):
                res.append((mode, pair_us()))
    base = res[0][1]
    print(f"\nOpenSSL write+read pair (100 bytes, memory BIOs), {pairs:,} pairs")
    for mode, us in res:
        print(f"{mode:<15}{us:>8.1f} us per pair{us - base:>+9.1f} us")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="20000,100000")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--overhead", action="store_true",
                    help="measure the kernel programs' cost per packet and per connect instead")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/live.py needs root", file=sys.stderr)
        return 10
    if args.overhead:
        return overhead(detector_command(), args.seconds)
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
