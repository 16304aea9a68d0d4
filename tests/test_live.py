"""Live eBPF capture on the real kernel (root): every DNS message once, with its process.

A real resolver (Debian's dnsmasq) answers on 127.0.0.1 and ::1; `detector live`
runs as a subprocess; clients with known pids ask it over UDP, TCP, IPv4 and
IPv6, one of them from a fresh cgroup v2 group. In CI (root) nothing here is
skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import pytest

from detector.capture.live import cgroup2_root, live_capture_available
from detector.capture.proc import container_id
from detector.paths import REPO
from tests.conftest import DETECTOR
from tests.procs import Drained

ROOT = os.geteuid() == 0
pytestmark = pytest.mark.skipif(not ROOT, reason="live eBPF capture needs root")

CLIENT = r"""
import os, socket, struct, sys
def q(name, qid):
    h = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    return h + b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0\0\1\0\1"
fam, addr, port, name = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if fam == "tcp":
    s = socket.create_connection((addr, port), timeout=3)
    m1, m2 = q(name, 1), q("two." + name, 2)   # two pipelined queries in one write
    s.sendall(struct.pack("!H", len(m1)) + m1 + struct.pack("!H", len(m2)) + m2)
    got, n = b"", 0
    while n < 2:
        d = s.recv(4096)
        if not d: break
        got += d
        while len(got) >= 2 and len(got) >= 2 + struct.unpack("!H", got[:2])[0]:
            got, n = got[2 + struct.unpack("!H", got[:2])[0]:], n + 1
else:
    s = socket.socket(socket.AF_INET6 if fam == "udp6" else socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.sendto(q(name, 7), (addr, port))      # raw sendto on an unconnected socket
    s.recvfrom(2048)
print(os.getpid(), flush=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def resolver():
    dnsmasq = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    if not os.path.exists(dnsmasq):
        pytest.fail("dnsmasq is missing: ./setup.sh installs dnsmasq-base")
    port = free_port()
    p = subprocess.Popen([dnsmasq, "-k", "--no-resolv", "--no-hosts", "--address=/#/1.2.3.4",
                          "--listen-address=127.0.0.1,::1", f"--port={port}", "--bind-interfaces",
                          "-z", "--user=root", "--pid-file="], stderr=subprocess.PIPE)
    time.sleep(0.5)
    assert p.poll() is None, p.stderr.read().decode()
    yield port
    p.terminate()
    p.wait(5)


def start_live(port: int | str, duration: float, *extra: str) -> Drained:
    """`detector live` started and capturing; its stdout and stderr read on threads
    from then on (tests/procs.py), `communicate()` gives both, stderr from its start."""
    p = Drained(DETECTOR + ["live", "--duration", str(duration), "--ports", str(port),
                            "--events", "--format", "jsonl", *extra],
                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    head = p.read_until("capturing DNS", 60)  # compiling the programs takes a few seconds
    assert "capturing DNS" in head, head + p.stderr.read()
    return p.drain(head)


def run_client(*args: str, cgroup: Path | None = None) -> int:
    pre = None
    if cgroup is not None:
        def pre():  # noqa: E306 - join the cgroup before exec
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))
    out = subprocess.run([sys.executable, "-c", CLIENT, *args], capture_output=True, text=True,
                         timeout=20, preexec_fn=pre)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip())


def test_live_capture_names_the_process_for_every_client_kind(resolver, tmp_path):
    assert live_capture_available()
    port = resolver
    cg = Path(cgroup2_root()) / f"dnsdet-test-{os.getpid()}"
    cg.mkdir(exist_ok=True)
    try:
        live = start_live(port, 12)
        pids = {
            "udp4": run_client("udp4", "127.0.0.1", str(port), "udp4.example.com"),
            "udp6": run_client("udp6", "::1", str(port), "udp6.example.com"),
            "tcp": run_client("tcp", "127.0.0.1", str(port), "tcp.example.com"),
            "cgroup": run_client("udp4", "127.0.0.1", str(port), "cg.example.com", cgroup=cg),
        }
        dig = subprocess.run(["dig", "+time=2", "+tries=1", "@127.0.0.1", "-p", str(port),
                              "dig.example.com", "+short"], capture_output=True, text=True)
        digtcp = subprocess.run(["dig", "+tcp", "+time=2", "+tries=1", "@127.0.0.1", "-p", str(port),
                                 "digtcp.example.com", "+short"], capture_output=True, text=True)
        assert dig.stdout.strip() == digtcp.stdout.strip() == "1.2.3.4"
        out, err = live.communicate(timeout=60)
        assert live.returncode == 0, err
    finally:
        cg.rmdir()
    evs = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    by = {}
    for e in evs:
        by.setdefault((e["qname"], e["kind"]), []).append(e)
    for kind, name, transport in [("udp4", "udp4.example.com", "udp"), ("udp6", "udp6.example.com", "udp"),
                                  ("tcp", "tcp.example.com", "tcp"), ("tcp", "two.tcp.example.com", "tcp"),
                                  ("cgroup", "cg.example.com", "udp")]:
        q, r = by.get((name, "query"), []), by.get((name, "response"), [])
        assert len(q) == 1 and len(r) == 1, (name, q, r)  # each message exactly once
        for e in q + r:
            assert e["transport"] == transport
            assert e["process"]["pid"] == pids[kind], (name, e["process"], pids[kind])
            assert e["process"]["comm"] == "python" or e["process"]["comm"].startswith("python")
        assert r[0]["latency_ms"] is not None and r[0]["answers"][0][3] == "1.2.3.4"
    assert by[("udp6.example.com", "query")][0]["dst"] == "::1"
    root_cg = by[("udp4.example.com", "query")][0]["process"]["cgroup_id"]
    child_cg = by[("cg.example.com", "query")][0]["process"]["cgroup_id"]
    assert child_cg != root_cg and child_cg > 0
    for name in ("dig.example.com", "digtcp.example.com"):
        assert len(by.get((name, "query"), [])) == 1 and len(by.get((name, "response"), [])) == 1
        assert by[(name, "query")][0]["process"]["comm"].startswith("isc-net") or \
            by[(name, "query")][0]["process"]["comm"] == "dig"
    assert "lost BPF events          0" in err


def test_live_capture_programs_are_detached_afterwards(resolver):
    """cgroup attachments outlive processes: after `detector live` ends none of ours remain."""
    live = start_live(resolver, 1)
    live.communicate(timeout=60)
    out = subprocess.run(["bpftool", "cgroup", "show", cgroup2_root()], capture_output=True, text=True) \
        if shutil.which("bpftool") else None
    if out is not None:
        assert "dns_egress" not in out.stdout and "dns_connect4" not in out.stdout
    # and DNS still works for everyone (a sock_addr program returning 0 would break it)
    assert run_client("udp4", "127.0.0.1", str(resolver), "after.example.com") > 0


def test_not_root_is_exit_10_with_a_clear_message():
    setpriv = shutil.which("setpriv")
    assert setpriv, "util-linux setpriv is missing"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([setpriv, "--reuid", "65534", "--regid", "65534", "--clear-groups",
                          *DETECTOR, "live", "--duration", "1"], capture_output=True, text=True,
                         cwd="/", env=env, timeout=60)
    assert res.returncode == 10, res.stderr
    assert "needs root" in res.stderr and "Traceback" not in res.stderr


def test_container_id_from_cgroup_paths():
    cid = "a" * 64
    assert container_id(f"0::/system.slice/docker-{cid}.scope") == cid
    assert container_id(f"0::/kubepods/burstable/pod1234/cri-containerd-{cid}.scope") == cid
    assert container_id(f"0::/kubepods/besteffort/pod-x/{cid}") == cid
    assert container_id("0::/user.slice/user-1000.slice/session-2.scope") == ""


def test_upstream_query_of_a_local_stub_names_the_application():
    """App -> stub on loopback (dnsmasq) -> upstream resolver: the stub's upstream query
    carries `cause` = the application's process."""
    dnsmasq = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    up_ip = "10.253.0.1"  # an upstream that is not a loopback address, on lo
    subprocess.run(["ip", "addr", "add", f"{up_ip}/32", "dev", "lo"], check=True)
    procs = []
    try:
        stub_port, up_port = free_port(), free_port()
        common = ["-k", "--no-hosts", "-z", "--bind-interfaces", "--user=root", "--pid-file=",
                  "--cache-size=0"]
        procs.append(subprocess.Popen([dnsmasq, *common, "--address=/#/5.6.7.8",
                                       f"--listen-address={up_ip}", f"--port={up_port}"]))
        procs.append(subprocess.Popen([dnsmasq, *common, "--no-resolv", f"--server={up_ip}#{up_port}",
                                       "--listen-address=127.0.0.1", f"--port={stub_port}"]))
        time.sleep(0.5)
        live = start_live(f"{stub_port},{up_port}", 6)
        pid = run_client("udp4", "127.0.0.1", str(stub_port), "linked.example.com")
        out, err = live.communicate(timeout=60)
        assert live.returncode == 0, err
    finally:
        for p in procs:
            p.terminate()
        subprocess.run(["ip", "addr", "del", f"{up_ip}/32", "dev", "lo"])
    evs = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    alerts = [e for e in evs if "rule_id" in e]
    evs = [e for e in evs if "kind" in e]
    app = [e for e in evs if e["kind"] == "query" and e["dst"] == "127.0.0.1"]
    upstream = [e for e in evs if e["kind"] == "query" and e["dst"] == up_ip]
    assert len(app) == 1 and app[0]["process"]["pid"] == pid
    assert len(upstream) == 1 and upstream[0]["process"]["comm"] == "dnsmasq"
    assert upstream[0]["cause"]["pid"] == pid and upstream[0]["cause"]["comm"].startswith("python")
    # 10.253.0.1 is no allowed resolver: the alert on dnsmasq's query names the application
    rogue = [a for a in alerts if a["rule_id"] == "dns-unauthorized-resolver"]
    assert rogue and any(a.get("cause", {}).get("pid") == pid for a in rogue), rogue


TC_SERVER = r"""
import socket, struct, sys, threading
from dnslib import DNSRecord, RR, A
port = int(sys.argv[1])
def answer(data, truncate):
    q = DNSRecord.parse(data)
    r = q.reply()
    if truncate:
        r.header.tc = 1
    else:
        for i in range(20):
            r.add_answer(RR(q.q.qname, rdata=A(f"10.1.0.{i}")))
    return r.pack()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", port))
t = socket.create_server(("127.0.0.1", port))
def udp():
    while True:
        d, a = u.recvfrom(4096); u.sendto(answer(d, True), a)
def tcp():
    while True:
        c, _ = t.accept()
        n = struct.unpack("!H", c.recv(2))[0]; d = c.recv(n)
        m = answer(d, False); c.sendall(struct.pack("!H", len(m)) + m); c.close()
threading.Thread(target=udp, daemon=True).start()
print("ready", flush=True)
tcp()
"""


def test_truncated_udp_answer_then_tcp_retry_are_all_captured():
    port = free_port()
    srv = subprocess.Popen([sys.executable, "-c", TC_SERVER, str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout.readline().strip() == "ready"
        live = start_live(port, 5)
        dig = subprocess.run(["dig", "+time=2", "+tries=1", "@127.0.0.1", "-p", str(port), "big.example.com"],
                             capture_output=True, text=True)
        assert "Truncated, retrying in TCP mode" in dig.stdout and "10.1.0.19" in dig.stdout
        out, err = live.communicate(timeout=60)
    finally:
        srv.kill()
    evs = [json.loads(x) for x in out.splitlines() if x.startswith("{") and "kind" in x]
    seen = [(e["transport"], e["kind"], "TC" in e["flags"], e["ancount"]) for e in evs
            if e.get("qname") == "big.example.com"]
    assert seen == [("udp", "query", False, 0), ("udp", "response", True, 0),
                    ("tcp", "query", False, 0), ("tcp", "response", False, 20)], seen


def test_glibc_getaddrinfo_in_another_network_namespace_is_attributed(tmp_path):
    """getaddrinfo (glibc's stub: a connected UDP socket, A and AAAA with sendmmsg) in its own
    network namespace, against dnsmasq on that namespace's 127.0.0.1:53."""
    ns = f"ga{os.getpid() % 100000}"
    etc = Path("/etc/netns") / ns
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions attempts:1 timeout:2\n")
    subprocess.run(["ip", "netns", "add", ns], check=True)
    dm = None
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        dnsmasq = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
        dm = subprocess.Popen(["ip", "netns", "exec", ns, dnsmasq, "-k", "--no-resolv", "--no-hosts",
                               "--address=/#/1.2.3.4", "--address=/#/::", "--listen-address=127.0.0.1",
                               "--bind-interfaces", "-z", "--user=root", "--pid-file="])
        time.sleep(0.5)
        live = start_live(53, 5)
        code = ("import os, socket; socket.getaddrinfo('gai.example.com', 80); print(os.getpid())")
        r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], capture_output=True,
                           text=True, timeout=20)
        assert r.returncode == 0, r.stderr
        pid = int(r.stdout.strip())
        out, err = live.communicate(timeout=60)
    finally:
        if dm is not None:
            dm.terminate()
        subprocess.run(["ip", "netns", "del", ns])
        shutil.rmtree(etc, ignore_errors=True)
    evs = [json.loads(x) for x in out.splitlines() if x.startswith("{") and "kind" in x]
    mine = [e for e in evs if e.get("qname") == "gai.example.com"]
    qtypes = sorted(e["qtype"] for e in mine if e["kind"] == "query")
    assert qtypes == ["A", "AAAA"], mine
    assert all(e["process"]["pid"] == pid for e in mine)
    assert sum(1 for e in mine if e["kind"] == "response") == 2


def test_live_demo_catches_its_bot_and_the_alerts_reach_the_topic():
    """The README's first command on a live host: the embedded broker, live
    capture, and the loopback demo-bot; the tunnel and DGA alerts must name
    the bot's process and be read back from the topic."""
    r = subprocess.run(DETECTOR + ["demo", "--source", "live", "--duration", "12", "--format", "ecs"],
                       capture_output=True, text=True, timeout=180, cwd=REPO)
    assert r.returncode in (0, 1), r.stderr[-3000:]
    alerts = [json.loads(x) for x in r.stdout.splitlines()
              if x.startswith("{") and '"kind":"alert"' in x.replace(" ", "")]
    rules = {a["rule"]["id"] for a in alerts}
    assert {"dns-tunnel", "dns-dga"} <= rules, (rules, r.stderr[-2000:])
    bot = [a for a in alerts if a["rule"]["id"] in ("dns-tunnel", "dns-dga")]
    assert all(a["process"]["name"] == "demo-bot" and a["process"]["pid"] > 0 for a in bot)
    read_back = [ln for ln in r.stderr.splitlines() if "read back from topic" in ln]
    assert read_back and int(read_back[0].split()[1]) == len(alerts), r.stderr[-2000:]


def test_real_iodine_through_live_capture_alerts_with_iodines_pid(tmp_path):
    """Debian's iodine client tunnels to iodined in another network namespace
    while `detector live` runs: the tunnel alert must name iodine's pid."""
    from tests.netns import NetnsPair
    from tests.test_tunnel import iodine_session

    for tool in ("iodine", "iodined"):
        assert shutil.which(tool), f"{tool} missing: ./setup.sh installs it"
    out = tmp_path / "alerts.jsonl"
    det = Drained(DETECTOR + ["live", "--duration", "90", "--format", "ecs", "-o", str(out),
                              "--rules", str(REPO / "rules")],
                  stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        head = det.read_until("capturing DNS", 120)
        assert "capturing DNS" in head, "detector live did not start"
        # read its stderr from now on: a pipe nobody reads fills, and a detector
        # blocked writing to it could not act on SIGINT
        det.drain(head)
        with NetnsPair(prefix="li", subnet="10.96.0") as net:
            iodine_pid = iodine_session(net, "192.168.98.1")
            time.sleep(1)
    finally:
        det.send_signal(2)  # SIGINT: detach and flush
        try:
            det.wait(60)
        except subprocess.TimeoutExpired:
            # Seen once in a full CI-like run (cause not found yet): the first SIGINT
            # was not acted on. Ask again so the alerts are judged, and say so.
            det.send_signal(2)
            try:
                det.wait(30)
            except subprocess.TimeoutExpired:
                det.kill()
                det.wait()
                raise AssertionError("detector live ignored two SIGINTs for 90 s; stderr ends: "
                                     + det.tail(20)) from None
            warnings.warn("detector live needed a second SIGINT to stop; stderr ends: "
                          + det.tail(5))
    alerts = [json.loads(x) for x in out.read_text().splitlines() if x.strip()]
    tun = [a for a in alerts if a["rule"]["id"] == "dns-tunnel"]
    assert tun, f"no tunnel alert from the live capture ({len(alerts)} alerts)"
    assert any(a["process"]["pid"] == iodine_pid and a["process"]["name"] == "iodine" for a in tun), \
        [(a["process"].get("pid"), a["process"].get("name")) for a in tun]


def test_dns_between_two_namespaces_of_this_host_is_reported_once_with_the_client(tmp_path):
    """A client and a resolver in two network namespaces of one host (a pod and a
    node-local resolver): each message passes the sender's egress and the
    receiver's ingress, yet is reported once, with the client's process on both
    the query and the response, and no phantom unanswered query."""
    from tests.netns import NetnsPair

    dnsmasq = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    with NetnsPair(prefix="dup", subnet="10.95.0") as net:
        net.popen("server", [dnsmasq, "-k", "--no-resolv", "--no-hosts", "--address=/#/1.2.3.4",
                             f"--listen-address={net.ip['server']}", "--bind-interfaces", "-z",
                             "--user=root", "--pid-file="])
        time.sleep(0.5)
        live = start_live(53, 8, "--query-timeout", "2")
        pids = []
        for i in range(3):
            r = net.run("client", [sys.executable, "-c", CLIENT, "udp", net.ip["server"], "53",
                                   f"ns{i}.dup.example.com"])
            assert r.returncode == 0, r.stderr
            pids.append(int(r.stdout.strip()))
        out, err = live.communicate(timeout=60)
    evs = [json.loads(x) for x in out.splitlines() if x.startswith("{") and "kind" in x]
    mine = [e for e in evs if e.get("qname", "").endswith("dup.example.com")]
    kinds = Counter(e["kind"] for e in mine)
    assert kinds == {"query": 3, "response": 3}, (kinds, err[-1500:])  # no copy, no unanswered
    for e in mine:
        assert e["process"]["pid"] == pids[int(e["qname"][2])], e
