"""The resolver policy in the kernel (`detector live --audit` / `--enforce`,
bpf/dns_enforce.c, detector/detect/resolver_policy.py), on the real kernel.

Two dnsmasq resolvers in a server network namespace: 10.94.0.2 (approved,
answers 1.2.3.4) and 10.94.0.3 (not approved, answers 5.6.7.8). Clients run
in a client namespace and a cgroup v2 group of their own: dig, glibc's
getaddrinfo (the namespace's resolv.conf names 10.94.0.3) and a Python socket.

The enforcing runs give the host policy every address (--resolvers
0.0.0.0/0,::/0) and the test's cgroup resolvers of its own (10.94.0.2 only):
an enforcing sensor judges every process on the host, and the other
processes of this machine must not be refused anything while it runs. The
audit run uses a host policy of 10.94.0.2 (audit refuses nothing) with an
exempt cgroup. Root only (CI runs them as root).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from detector.capture.live import cgroup2_root
from detector.detect.registry import load_rules
from detector.detect.resolver_policy import EXEMPT, OWN, PolicyError, ResolverPolicy, build_policy, \
    parse_cgroup_spec
from detector.events import ConnEvent, ProcessInfo
from detector.paths import REPO
from tests.test_live import start_live

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="live eBPF capture needs root")
RULE = "resolver-policy-refused"
GOOD, BAD = "10.94.0.2", "10.94.0.3"

CLIENT = r"""
import json, os, socket, struct, sys, time
def q(name):
    h = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
    return h + b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0\0\1\0\1"
out = {"pid": os.getpid()}
for step in sys.argv[1:]:
    kind, rest = step.split(":", 1)
    ip, port = rest.rsplit(":", 1)
    t = time.monotonic()
    try:
        if kind in ("udp", "udp6"):
            s = socket.socket(socket.AF_INET6 if kind == "udp6" else socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(2)
            s.sendto(q("udp.example.com"), (ip, int(port)))
            r = s.recvfrom(2048)[0]; res = "answer " + socket.inet_ntoa(r[-4:])
        elif kind == "tcp6":
            s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM); s.settimeout(2)
            s.connect((ip, int(port))); res = "connected"
        elif kind == "tcp":
            s = socket.create_connection((ip, int(port)), timeout=2); res = "connected"
        else:  # gai:NAME:0
            res = "answer " + socket.getaddrinfo(ip, 80, socket.AF_INET)[0][4][0]
    except socket.gaierror as e:
        res = f"gaierror {e.errno}"
    except OSError as e:
        res = f"errno {e.errno}"
    out[step] = [res, round(time.monotonic() - t, 3)]
print(json.dumps(out), flush=True)
"""


def _net():
    from tests.netns import NetnsPair

    return NetnsPair(prefix="enf", subnet="10.94.0")


def _resolvers(net):
    """dnsmasq on GOOD (1.2.3.4) and BAD (5.6.7.8) in the server namespace; the client
    namespace's resolv.conf names BAD (for getaddrinfo)."""
    dnsmasq = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    assert os.path.exists(dnsmasq), "dnsmasq is missing: ./setup.sh installs dnsmasq-base"
    subprocess.run(["ip", "-n", net.ns["server"], "addr", "add", f"{BAD}/24", "dev", net.dev["server"]],
                   check=True)
    for ip, ans in ((GOOD, "1.2.3.4"), (BAD, "5.6.7.8")):
        net.popen("server", [dnsmasq, "-k", "--no-resolv", "--no-hosts", f"--address=/#/{ans}",
                             f"--listen-address={ip}", "--bind-interfaces", "-z", "--user=root",
                             "--pid-file="])
    etc = Path("/etc/netns") / net.ns["client"]
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "resolv.conf").write_text(f"nameserver {BAD}\noptions attempts:1 timeout:2\n")
    time.sleep(0.5)
    return etc


def _cgroup(tag: str) -> Path:
    cg = Path(cgroup2_root()) / f"dnsdet-{tag}-{os.getpid()}"
    cg.mkdir(exist_ok=True)
    return cg


def _in(cg: Path):
    def pre():  # join the cgroup before exec (ip netns exec, then the client)
        (cg / "cgroup.procs").write_text(str(os.getpid()))
    return pre


def client(net, cg: Path, *steps: str) -> dict:
    r = subprocess.run(net.cmd("client", [sys.executable, "-c", CLIENT, *steps]), capture_output=True,
                       text=True, timeout=30, preexec_fn=_in(cg))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def dig(net, cg: Path, server: str) -> tuple[int, str, float]:
    t = time.monotonic()
    p = subprocess.Popen(net.cmd("client", ["dig", "+time=2", "+tries=1", f"@{server}", "dig.example.com",
                                            "+short"]), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, preexec_fn=_in(cg))
    out = p.communicate(timeout=30)[0]  # `ip netns exec` execs dig: the pid is dig's
    return p.pid, out, time.monotonic() - t


def _alerts(out: str) -> list[dict]:
    return [d for d in (json.loads(x) for x in out.splitlines() if x.startswith("{")) if d.get("rule_id") == RULE]


def _rmdir(*cgs: Path) -> None:
    for cg in cgs:
        for _ in range(20):
            try:
                cg.rmdir()
                break
            except OSError:
                time.sleep(0.1)


# --- cgroup attachments, read with libbpf (no bpftool here) ---------------------------

_ATTACH = {"connect4": 10, "connect6": 11, "sendmsg4": 14, "sendmsg6": 15}


def _attached() -> list[tuple[int, int, str]]:
    """(attach type, prog id, name) of every program attached to the cgroup v2 root's
    sock_addr hooks."""
    lib = ctypes.CDLL(ctypes.util.find_library("bpf") or "libbpf.so.1", use_errno=True)
    fd = os.open(cgroup2_root(), os.O_RDONLY)
    out = []
    try:
        for atype in _ATTACH.values():
            ids = (ctypes.c_uint32 * 64)()
            cnt = ctypes.c_uint32(64)
            flags = ctypes.c_uint32(0)
            if lib.bpf_prog_query(fd, atype, 0, ctypes.byref(flags), ids, ctypes.byref(cnt)) != 0:
                continue
            for pid in ids[:cnt.value]:
                pfd = lib.bpf_prog_get_fd_by_id(pid)
                if pfd < 0:
                    continue
                info = (ctypes.c_uint8 * 88)()
                ln = ctypes.c_uint32(88)
                lib.bpf_obj_get_info_by_fd(pfd, info, ctypes.byref(ln))
                os.close(pfd)
                out.append((atype, pid, bytes(info[64:80]).split(b"\0", 1)[0].decode()))
    finally:
        os.close(fd)
    return out


def _held_prog_ids() -> set[int]:
    """Programs some process holds a file descriptor of (fdinfo's prog_id)."""
    held = set()
    for fdinfo in Path("/proc").glob("[0-9]*/fdinfo/*"):
        try:
            for line in fdinfo.read_text().splitlines():
                if line.startswith("prog_id:"):
                    held.add(int(line.split()[1]))
        except OSError:
            continue
    return held


def _detach_orphans(before: set[int]) -> None:
    """BCC's observing programs of a SIGKILLed sensor stay attached (they allow
    everything): detach those of ours no process holds."""
    lib = ctypes.CDLL(ctypes.util.find_library("bpf") or "libbpf.so.1", use_errno=True)
    held = _held_prog_ids()
    fd = os.open(cgroup2_root(), os.O_RDONLY)
    try:
        for atype, pid, name in _attached():
            if pid in before or pid in held or not name.startswith(("dns_", "enf_")):
                continue
            pfd = lib.bpf_prog_get_fd_by_id(pid)
            if pfd >= 0:
                lib.bpf_prog_detach2(pfd, fd, atype)
                os.close(pfd)
    finally:
        os.close(fd)
    # the skb programs too
    for atype in (0, 1):
        ids = (ctypes.c_uint32 * 64)()
        cnt = ctypes.c_uint32(64)
        flags = ctypes.c_uint32(0)
        fd = os.open(cgroup2_root(), os.O_RDONLY)
        try:
            if lib.bpf_prog_query(fd, atype, 0, ctypes.byref(flags), ids, ctypes.byref(cnt)) != 0:
                continue
            for pid in ids[:cnt.value]:
                if pid in before or pid in held:
                    continue
                pfd = lib.bpf_prog_get_fd_by_id(pid)
                if pfd < 0:
                    continue
                info = (ctypes.c_uint8 * 88)()
                ln = ctypes.c_uint32(88)
                lib.bpf_obj_get_info_by_fd(pfd, info, ctypes.byref(ln))
                if bytes(info[64:80]).startswith((b"dns_", b"enf_")):
                    lib.bpf_prog_detach2(pfd, fd, atype)
                os.close(pfd)
        finally:
            os.close(fd)


def _all_ids() -> set[int]:
    return {pid for _, pid, _ in _attached()}


ENFORCE = ("--enforce", "--resolvers", "0.0.0.0/0,::/0")


@needs_root
def test_enforce_refuses_unapproved_dns_fast_and_alerts_with_the_pid(tmp_path):
    cg = _cgroup("enf")
    with _net() as net:
        etc = _resolvers(net)
        try:
            live = start_live(53, 10, *ENFORCE, "--policy-cgroup", f"{cg.name}={GOOD},fd00:94::/64",
                              "--rules", str(REPO / "rules"))
            assert any(name.startswith("enf_connect4") for _, _, name in _attached())
            dig_bad = dig(net, cg, BAD)
            dig_good = dig(net, cg, GOOD)
            gai = client(net, cg, "gai:gai.example.com:0")
            sock = client(net, cg, f"udp:{BAD}:53", f"udp:{GOOD}:53", f"tcp:{BAD}:53", f"tcp:{BAD}:853",
                          "tcp:1.1.1.1:443", "tcp:192.0.2.7:443")
            # IPv6 (connect6, sendmsg6): no route from the namespace, so anything
            # but EPERM means the policy let it through
            six = client(net, cg, "udp6:fd00:53::3:53", "udp6:fd00:94::3:53", "tcp6:2606:4700:4700::1111:443",
                         "udp6:::ffff:10.94.0.3:53")
            out, err = live.communicate(timeout=60)
            assert live.returncode == 0, err
        finally:
            shutil.rmtree(etc, ignore_errors=True)
    _rmdir(cg)
    # refused at once (EPERM in the caller), not timed out
    assert "5.6.7.8" not in dig_bad[1] and dig_bad[2] < 1.9, dig_bad
    assert dig_good[1].strip() == "1.2.3.4", dig_good
    res, took = gai["gai:gai.example.com:0"]
    assert res.startswith("gaierror") and took < 1.0, gai
    assert sock[f"udp:{BAD}:53"][0] == f"errno {errno.EPERM}", sock
    assert sock[f"udp:{GOOD}:53"][0] == "answer 1.2.3.4", sock
    assert sock[f"tcp:{BAD}:53"][0] == f"errno {errno.EPERM}", sock
    assert sock[f"tcp:{BAD}:853"][0] == f"errno {errno.EPERM}", sock  # DoT: no SYN, no ECONNREFUSED
    assert sock["tcp:1.1.1.1:443"][0] == f"errno {errno.EPERM}", sock  # a known DoH address
    assert sock["tcp:192.0.2.7:443"][0] != f"errno {errno.EPERM}", sock  # any other HTTPS
    assert six["udp6:fd00:53::3:53"][0] == f"errno {errno.EPERM}", six
    assert six["udp6:fd00:94::3:53"][0] != f"errno {errno.EPERM}", six  # the cgroup's own network
    assert six["tcp6:2606:4700:4700::1111:443"][0] == f"errno {errno.EPERM}", six  # a DoH address
    assert six["udp6:::ffff:10.94.0.3:53"][0] == f"errno {errno.EPERM}", six  # IPv4-mapped: as IPv4
    alerts = _alerts(out)
    by_pid = {}
    for a in alerts:
        by_pid.setdefault(a["pid"], []).append(a)
        assert a["features"]["action"] == "refused" and a["technique"] == "T1071.004", a
    assert dig_bad[0] in by_pid and dig_good[0] not in by_pid, (alerts, err[-1500:])
    assert gai["pid"] in by_pid, alerts
    mine = {(a["features"]["server"], a["features"]["port"], a["features"]["method"]) for a in by_pid[sock["pid"]]}
    assert mine == {(BAD, 53, "dns"), (BAD, 853, "dot"), ("1.1.1.1", 443, "doh")}, mine
    assert all(a["dst"] == BAD for a in by_pid[dig_bad[0]])
    six_seen = {(a["features"]["server"], a["features"]["port"]) for a in by_pid[six["pid"]]}
    assert six_seen == {("fd00:53::3", 53), ("2606:4700:4700::1111", 443), (BAD, 53)}, six_seen
    assert "refused" in by_pid[dig_bad[0]][0]["reason"]


@needs_root
def test_audit_refuses_nothing_and_alerts_exempt_cgroup_silent_and_default_changes_nothing(tmp_path):
    cg, free = _cgroup("aud"), _cgroup("exm")
    with _net() as net:
        etc = _resolvers(net)
        try:
            live = start_live(53, 9, "--audit", "--resolvers", GOOD, "--policy-cgroup", f"{free.name}=exempt",
                              "--rules", str(REPO / "rules"))
            d = dig(net, cg, BAD)
            audited = client(net, cg, f"udp:{BAD}:53", f"tcp:{BAD}:53")
            exempt = client(net, free, f"udp:{BAD}:53")
            out, err = live.communicate(timeout=60)
            assert live.returncode == 0, err
            # no flag: nothing loaded, nothing refused, no alert
            plain = start_live(53, 5, "--rules", str(REPO / "rules"))
            assert not any(name.startswith("enf_") for _, _, name in _attached())
            d2 = dig(net, cg, BAD)
            out2, err2 = plain.communicate(timeout=60)
        finally:
            shutil.rmtree(etc, ignore_errors=True)
    _rmdir(cg, free)
    # audit: answered on the wire
    assert d[1].strip() == "5.6.7.8" and audited[f"udp:{BAD}:53"][0] == "answer 5.6.7.8", (d, audited)
    assert audited[f"tcp:{BAD}:53"][0] == "connected" and exempt[f"udp:{BAD}:53"][0] == "answer 5.6.7.8"
    alerts = _alerts(out)
    pids = {a["pid"] for a in alerts}
    assert {d[0], audited["pid"]} <= pids and exempt["pid"] not in pids, (alerts, err[-1500:])
    assert all(a["features"]["action"] == "audit" for a in alerts)
    assert any("would have been refused" in a["reason"] for a in alerts)
    assert d2[1].strip() == "5.6.7.8" and _alerts(out2) == [], out2[-1500:]


@needs_root
def test_a_sigkilled_enforcing_sensor_stops_refusing(tmp_path):
    cg = _cgroup("kil")
    before = _all_ids()
    with _net() as net:
        etc = _resolvers(net)
        live = None
        try:
            live = start_live(53, 60, *ENFORCE, "--policy-cgroup", f"{cg.name}={GOOD}")
            refused = client(net, cg, f"udp:{BAD}:53")
            live.send_signal(signal.SIGKILL)
            live.wait(10)
            time.sleep(0.5)  # the link is released with the process's files
            again = client(net, cg, f"udp:{BAD}:53")
            d = dig(net, cg, BAD)
            left = [name for _, pid, name in _attached() if name.startswith("enf_")]
        finally:
            if live is not None and live.poll() is None:
                live.kill()
            shutil.rmtree(etc, ignore_errors=True)
            _detach_orphans(before)
    _rmdir(cg)
    assert refused[f"udp:{BAD}:53"][0] == f"errno {errno.EPERM}", refused
    assert again[f"udp:{BAD}:53"][0] == "answer 5.6.7.8", again
    assert d[1].strip() == "5.6.7.8", d
    assert left == []


# --- the policy and the detector alone ----------------------------------------------

def _rules(*extra: str):
    from detector.detect.resolvers import set_policy

    rs = load_rules([REPO / "rules" / "resolvers.yaml", REPO / "rules" / "resolver-bypass.yaml",
                     REPO / "rules" / "resolver-policy.yaml"])
    set_policy(rs, host_config=False, resolvers=tuple(extra))
    return rs


def test_policy_is_the_resolver_rules_policy_and_refuses_to_be_empty(tmp_path):
    import ipaddress

    with pytest.raises(PolicyError, match="no resolver policy"):
        build_policy(_rules(), "enforce", host_resolvers=False)
    nets = (ipaddress.ip_network("10.0.0.53/32"), ipaddress.ip_network("192.168.1.0/24"))
    p = build_policy(_rules(*nets), "enforce", host_resolvers=False)
    assert p.host_networks() == ["10.0.0.53/32", "192.168.1.0/24"]
    assert "1.1.1.1" in p.doh and "2606:4700:4700::1111" in p.doh  # the bypass rule's DoH list
    assert p.ports[53] and p.ports[853] and p.ports[784] and p.ports[443]
    cg = tmp_path / "cg"
    cg.mkdir()
    (cg / "cgroup.procs").write_text("")
    own = tmp_path / "own"
    own.mkdir()
    (own / "cgroup.procs").write_text("")
    p = build_policy(_rules(*nets), "audit", host_resolvers=False,
                     cgroups=[f"{cg}=exempt", f"{own}=10.1.0.0/16"])
    assert parse_cgroup_spec("a/b=exempt") == ("a/b", EXEMPT)
    assert p.cgroups == {cg.stat().st_ino: EXEMPT, own.stat().st_ino: OWN}
    assert (own.stat().st_ino, ipaddress.ip_network("10.1.0.0/16")) in p.approved
    assert p.host_networks() == ["10.0.0.53/32", "192.168.1.0/24"]  # not the cgroup's
    with pytest.raises(PolicyError):
        parse_cgroup_spec("a/b=not-an-address")
    with pytest.raises(PolicyError, match="cgroup"):
        build_policy(_rules(*nets), "audit", host_resolvers=False, cgroups=["/nonexistent/cg=exempt"])


def test_detector_alerts_on_policy_reports_only():
    rs = _rules()
    d = ResolverPolicy([r for r in rs.rules if r.detector == "resolver_policy"][0], rs)
    proc = ProcessInfo(42, 42, "curl", "/usr/bin/curl", cgroup_id=7)
    assert d.process_conn(ConnEvent(1.0, "tcp", 4, "", 0, "10.9.9.9", 853, proc)) == []  # no policy field
    f = d.process_conn(ConnEvent(1.0, "udp", 4, "", 0, "10.9.9.9", 853, proc, "refused"))[0]
    assert f.rule_id == RULE and f.features["action"] == "refused" and f.features["method"] == "doq"
    assert f.event.process.pid == 42 and f.features["cgroup_id"] == 7 and f.domain == "10.9.9.9"
    f = d.process_conn(ConnEvent(1.0, "udp", 4, "", 0, "10.9.9.9", 53, proc, "audit"))[0]
    assert f.features["action"] == "audit" and "would have been refused" in f.reason
