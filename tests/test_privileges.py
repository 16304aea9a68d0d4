"""Least privilege of the live sensor, on the real kernel (root in CI).

After loading and attaching its programs, `detector live` keeps only CAP_BPF,
CAP_NET_ADMIN and CAP_SYS_PTRACE (in every capability set, the bounding set
included), runs with no_new_privs and a seccomp filter, and still captures,
names processes of other users, and detaches its programs at exit. It starts
as a non-root user given the three loading capabilities.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from detector.capture import privileges as P
from detector.capture.live import cgroup2_root
from detector.paths import REPO
from tests.conftest import DETECTOR
from tests.procs import Drained
from tests.test_live import free_port, resolver, run_client, start_live  # noqa: F401  (resolver: a fixture)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="live eBPF capture needs root")

KEPT = P.mask(P.KEEP)


def status(pid: int | str) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def attached_ids(cg: str) -> set[int]:
    """Ids of the programs attached to the cgroup, for the attach types we use (BPF_PROG_QUERY)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(cg, os.O_RDONLY)
    out: set[int] = set()
    try:
        # BPF_CGROUP_INET_INGRESS 0, EGRESS 1, INET4_CONNECT 10, INET6_CONNECT 11, UDP4/6_SENDMSG 14/15
        for atype in (0, 1, 10, 11, 14, 15):
            ids = (ctypes.c_uint32 * 256)()
            attr = (ctypes.c_uint8 * 128)()
            # union bpf_attr.query: target_fd u32, attach_type u32, query_flags u32, attach_flags u32,
            # prog_ids u64, prog_cnt u32
            ctypes.memmove(ctypes.addressof(attr), ctypes.byref(ctypes.c_uint32(fd)), 4)
            ctypes.memmove(ctypes.addressof(attr) + 4, ctypes.byref(ctypes.c_uint32(atype)), 4)
            ctypes.memmove(ctypes.addressof(attr) + 16, ctypes.byref(ctypes.c_uint64(ctypes.addressof(ids))), 8)
            ctypes.memmove(ctypes.addressof(attr) + 24, ctypes.byref(ctypes.c_uint32(256)), 4)
            r = libc.syscall(321, 16, ctypes.byref(attr), 128)  # bpf(BPF_PROG_QUERY)
            assert r == 0, os.strerror(ctypes.get_errno())
            out.update(ids[i] for i in range(ctypes.c_uint32.from_buffer(attr, 24).value))
    finally:
        os.close(fd)
    return out


def test_the_running_sensor_keeps_only_what_it_needs(resolver, tmp_path):  # noqa: F811
    before = attached_ids(cgroup2_root())
    # a metrics server and a Kafka client: threads of their own, started after the drop
    live = start_live(resolver, 6, "--metrics-port", str(free_port()), "--metrics-addr", "127.0.0.1",
                      "--kafka", f"127.0.0.1:{free_port()}", "--spool-dir", str(tmp_path / "spool"))
    try:
        time.sleep(0.5)
        tasks = os.listdir(f"/proc/{live.pid}/task")
        assert len(tasks) >= 3
        for t in tasks:  # capabilities are per thread: every one of them
            assert int(status(f"{live.pid}/task/{t}")["CapEff"], 16) == KEPT, t
        st = status(live.pid)
        assert int(st["CapEff"], 16) == KEPT, st["CapEff"]
        assert int(st["CapPrm"], 16) == KEPT and int(st["CapBnd"], 16) == KEPT
        assert int(st["CapInh"], 16) == 0 and int(st["CapAmb"], 16) == 0
        assert st["NoNewPrivs"] == "1" and st["Seccomp"] == "2"
        ours = attached_ids(cgroup2_root()) - before
        assert len(ours) >= 6  # our six programs, still attached (another sensor may run beside)
        # another user's process, alive while its events are read: its exe needs CAP_SYS_PTRACE
        other = subprocess.Popen(
            ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", sys.executable, "-c",
             "import os, socket, time\n"
             "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)\n"
             "s.sendto(bytes.fromhex('0007010000010000000000000470726976076578616d706c6503636f6d0000010001'),"
             f" ('127.0.0.1', {resolver})); s.recvfrom(2048)\n"
             "print(os.getpid(), flush=True); time.sleep(4)\n"],
            stdout=subprocess.PIPE, text=True, cwd="/")
        pid = int(other.stdout.readline())
        out, err = live.communicate(timeout=60)
        other.wait(timeout=30)
    finally:
        if live.poll() is None:
            live.kill()
    assert live.returncode == 0, err
    assert "could not drop all its privileges" not in err
    evs = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    mine = [e for e in evs if e["qname"] == "priv.example.com"]
    assert {e["kind"] for e in mine} == {"query", "response"} and all(e["process"]["pid"] == pid for e in mine)
    assert all(e["process"]["exe"] == os.path.realpath(sys.executable) for e in mine), mine
    assert not ours & attached_ids(cgroup2_root()), err  # detached at exit, with the capabilities it kept


def test_the_filter_refuses_exec_and_uid_changes_and_allows_the_rest():
    code = (
        "import ctypes, os, socket, threading\n"
        "from detector.capture import privileges as P\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "def unshare():\n"
        "    if libc.unshare(0) != 0:\n"
        "        raise OSError(ctypes.get_errno(), 'unshare')\n"
        "unshare()\n"  # allowed before the filter
        "P.drop_after_load()\n"
        "def clone_newuser():\n"
        "    if libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0) < 0:\n"  # clone(CLONE_NEWUSER | SIGCHLD)
        "        raise OSError(ctypes.get_errno(), 'clone')\n"
        "    os._exit(0)\n"  # (the child, had it been made)
        "for f in (lambda: os.execv('/bin/true', ['true']), lambda: os.setuid(0), unshare, clone_newuser):\n"
        "    try:\n"
        "        f(); print('allowed')\n"
        "    except OSError as e:\n"
        "        print('refused', e.errno)\n"
        "socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', 9))\n"
        "t = threading.Thread(target=print, args=('thread',)); t.start(); t.join()\n"
        "print(open('/proc/self/status').read().count('Seccomp:\\t2'))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["refused", "1", "refused", "1", "refused", "1", "refused", "1", "thread", "1"], \
        r.stdout


def test_a_user_with_the_three_capabilities_runs_live_capture(resolver):  # noqa: F811
    """Not root: uid 65534 given CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN (and SYS_PTRACE
    for other users' executables) as ambient capabilities."""
    setpriv = shutil.which("setpriv")
    caps = "+bpf,+perfmon,+net_admin,+sys_ptrace"
    p = Drained([setpriv, "--reuid", "65534", "--regid", "65534", "--clear-groups",
                 f"--inh-caps={caps}", f"--ambient-caps={caps}", *DETECTOR, "live", "--duration", "5",
                 "--ports", str(resolver), "--events", "--format", "jsonl"],
                cwd="/", env={**os.environ, "PYTHONPATH": str(REPO)},
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    head = p.read_until("capturing DNS", 60)
    assert "capturing DNS" in head, head + p.stderr.read()
    p.drain(head)  # its pipes read from now on: a full one would block it
    pid = run_client("udp4", "127.0.0.1", str(resolver), "nonroot.example.com")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    evs = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    assert any(e["qname"] == "nonroot.example.com" and e["process"]["pid"] == pid for e in evs), out[-2000:]


def test_replay_score_and_rules_work_for_any_user(tmp_path):
    """The installed command needs no privilege but for live capture."""
    from detector.paths import bundled

    os.chmod(tmp_path, 0o777)
    nobody = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
    env = {**os.environ, "HOME": str(tmp_path)}
    runs = {
        "replay": ([*DETECTOR, "replay", "pcap", str(bundled("demo.pcap")), "-q"], None),
        "score": ([*DETECTOR, "score"], "bpujwsmplvftnqcx.ru\n"),
        "rules": ([*DETECTOR, "rules", "check", str(REPO / "rules")], None),
    }
    for what, (cmd, stdin) in runs.items():
        r = subprocess.run(nobody + cmd, input=stdin, capture_output=True, text=True, cwd=tmp_path, env=env,
                           timeout=120)
        assert r.returncode == 0, (what, r.stderr[-1500:])
        assert "Traceback" not in r.stderr
    assert '"dga_score"' in subprocess.run(nobody + runs["score"][0], input="wikipedia.org\n", capture_output=True,
                                           text=True, cwd=tmp_path, env=env, timeout=120).stdout
