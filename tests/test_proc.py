"""Process, container and pod details (detector/capture/proc.py) from synthetic
/proc and /var/log trees laid out under a tmp root, for both kubelet cgroup
drivers, and one live check: a real process on this machine, in a real cgroup
named as the systemd driver names a pod's container, through the eBPF sensor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from detector.capture.proc import Details, ProcCache, container_id, pod_uid

CID = "4f1c2d3e" * 8
CID2 = "a" * 64
UID = "1b2c3d4e-5f60-4718-9a2b-3c4d5e6f7a8b"
SYSTEMD = ("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/"
           "cri-containerd-{c}.scope")
CGROUPFS = "0::/kubepods/besteffort/pod{u}/{c}"


def fake_proc(root: Path, pid: int, comm: str, cgroup: str, exe: str = "/usr/bin/dig") -> Path:
    d = root / "proc" / str(pid)
    d.mkdir(parents=True)
    (d / "comm").write_text(comm + "\n")
    (d / "cgroup").write_text(cgroup + "\n")
    (d / "exe").symlink_to(exe)  # a dangling link reads as well as a real one
    return d


def fake_pod(root: Path, ns: str, pod: str, uid: str, containers: dict[str, str]) -> None:
    """The kubelet's log layout for one pod: {container name: container id}."""
    pods = root / "var/log/pods" / f"{ns}_{pod}_{uid}"
    logs = root / "var/log/containers"
    logs.mkdir(parents=True, exist_ok=True)
    for name, cid in containers.items():
        (pods / name).mkdir(parents=True)
        (pods / name / "0.log").write_text("")
        if cid:
            (logs / f"{pod}_{ns}_{name}-{cid}.log").symlink_to(pods / name / "0.log")


def test_name_is_the_process_not_the_thread_and_exe_is_read(tmp_path):
    fake_proc(tmp_path, 100, "dig", "0::/user.slice/user-0.slice/session-1.scope")
    d = ProcCache(root=str(tmp_path)).lookup(100)
    assert d == Details(exe="/usr/bin/dig", name="dig")


def test_systemd_driver_pod_with_names_from_the_log_symlinks(tmp_path):
    fake_proc(tmp_path, 200, "nginx", SYSTEMD.format(u=UID.replace("-", "_"), c=CID))
    fake_pod(tmp_path, "shop", "web-7d9f8c-x2x4q", UID, {"nginx": CID, "sidecar": CID2})
    d = ProcCache(root=str(tmp_path)).lookup(200)
    assert d.container_id == CID
    assert d.pod_uid == UID  # the systemd driver's "_" turned back into "-"
    assert (d.pod_name, d.pod_namespace, d.container_name) == ("web-7d9f8c-x2x4q", "shop", "nginx")


def test_cgroupfs_driver_pod_without_a_symlink_names_its_only_container(tmp_path):
    fake_proc(tmp_path, 300, "python3", CGROUPFS.format(u=UID, c=CID))
    fake_pod(tmp_path, "batch", "job-abc12", UID, {"worker": ""})  # no /var/log/containers link
    d = ProcCache(root=str(tmp_path)).lookup(300)
    assert (d.container_id, d.pod_uid) == (CID, UID)
    assert (d.pod_name, d.pod_namespace, d.container_name) == ("job-abc12", "batch", "worker")


def test_pod_with_two_containers_and_no_symlink_leaves_the_container_name_empty(tmp_path):
    fake_proc(tmp_path, 301, "python3", CGROUPFS.format(u=UID, c=CID))
    fake_pod(tmp_path, "batch", "job-abc12", UID, {"worker": "", "proxy": ""})
    d = ProcCache(root=str(tmp_path)).lookup(301)
    assert (d.pod_name, d.pod_namespace, d.container_name) == ("job-abc12", "batch", "")


@pytest.mark.parametrize("path,cid,uid", [
    # guaranteed QoS: no QoS level in the path
    (f"0::/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/cri-containerd-{CID}.scope", CID, UID),
    (f"0::/kubepods/pod{UID}/{CID}", CID, UID),
    # cri-o, and a cgroup v1 host (one line per hierarchy)
    (f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID.replace('-', '_')}.slice/"
     f"crio-{CID}.scope", CID, UID),
    (f"12:memory:/kubepods/burstable/pod{UID}/{CID}\n11:cpu,cpuacct:/kubepods/burstable/pod{UID}/{CID}",
     CID, UID),
    # a static pod: its uid is the 32-hex hash of the manifest
    (f"0::/kubepods/burstable/pod{'0123456789abcdef' * 2}/{CID}", CID, "0123456789abcdef" * 2),
    # seen from inside a cgroup namespace
    (f"0::/../../kubepods/besteffort/pod{UID}/{CID}", CID, UID),
    # docker without Kubernetes, and no container at all
    (f"0::/system.slice/docker-{CID}.scope", CID, ""),
    ("0::/user.slice/user-1000.slice/session-2.scope", "", ""),
    # "pod" inside another word is no pod
    (f"0::/system.slice/podman-{CID}.scope", "", ""),
])
def test_container_and_pod_from_cgroup_paths(path, cid, uid):
    assert container_id(path) == cid
    assert pod_uid(path) == uid


def test_a_vanished_process_never_raises_and_keeps_what_was_known(tmp_path):
    cache = ProcCache(ttl=0.0, root=str(tmp_path))
    assert cache.lookup(424242) == Details()  # never there
    d = fake_proc(tmp_path, 400, "nginx", SYSTEMD.format(u=UID.replace("-", "_"), c=CID))
    fake_pod(tmp_path, "shop", "web-1", UID, {"nginx": CID})
    first = cache.lookup(400)
    assert first.name == "nginx" and first.pod_name == "web-1"
    for f in d.iterdir():
        f.unlink()
    d.rmdir()
    assert cache.lookup(400) == first  # exited between the packet and the lookup


def test_missing_or_odd_log_directories_are_no_error(tmp_path):
    fake_proc(tmp_path, 500, "app", CGROUPFS.format(u=UID, c=CID))
    # no /var/log at all: the ids only
    d = ProcCache(root=str(tmp_path)).lookup(500)
    assert (d.container_id, d.pod_uid, d.pod_name) == (CID, UID, "")
    logs = tmp_path / "var/log/containers"
    logs.mkdir(parents=True)
    (logs / "not-a-container-log.txt").write_text("")
    (logs / f"no_underscores-{CID}.log").write_text("")
    (tmp_path / "var/log/pods").mkdir()
    (tmp_path / "var/log/pods/garbage").mkdir()
    (tmp_path / "var/log/pods" / f"a_file_{UID}").write_text("")  # a file, not a directory
    d = ProcCache(root=str(tmp_path)).lookup(500)
    assert (d.pod_name, d.pod_namespace, d.container_name) == ("", "", "")
    assert d.pod_uid == UID


def test_new_pods_are_found_after_the_rescan_interval_and_not_listed_on_every_miss(tmp_path):
    fake_proc(tmp_path, 600, "app", CGROUPFS.format(u=UID, c=CID))
    fake_proc(tmp_path, 601, "app", CGROUPFS.format(u=UID, c=CID))
    cache = ProcCache(ttl=0.0, root=str(tmp_path), rescan=0.3)
    assert cache.lookup(600).pod_name == ""  # its logs are not there yet
    scans = cache.pods.scans
    fake_pod(tmp_path, "shop", "web-2", UID, {"app": CID})
    for _ in range(50):  # misses within the interval list nothing again
        assert cache.lookup(601).pod_name == ""
    assert cache.pods.scans == scans
    time.sleep(0.35)
    assert cache.lookup(601).pod_name == "web-2"


def test_the_pid_cache_is_bounded(tmp_path):
    for pid in range(700, 720):
        fake_proc(tmp_path, pid, f"p{pid}", "0::/")
    cache = ProcCache(max_pids=8, root=str(tmp_path))
    for pid in range(700, 720):
        assert cache.lookup(pid).name == f"p{pid}"
    assert len(cache.cache) == 8 and 719 in cache.cache and 700 not in cache.cache


def test_this_process_on_the_real_proc():
    d = ProcCache().lookup(os.getpid())
    assert d.name == Path("/proc/self/comm").read_text().strip()
    assert d.exe == os.path.realpath(sys.executable)


# --- live: the sensor fills the fields from the real kernel ----------------------------

CLIENT = r"""
import ctypes, os, socket, struct, sys, threading, time
def ask():
    ctypes.CDLL(None).prctl(15, b"dns-worker", 0, 0, 0)  # PR_SET_NAME: this thread's comm
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    q = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x04proc\x07example\x03com\x00\x00\x01\x00\x01"
    s.sendto(q, ("127.0.0.1", int(sys.argv[1])))
    s.recvfrom(2048)
t = threading.Thread(target=ask)
t.start()
t.join()
print(os.getpid(), open("/proc/self/comm").read().strip(), flush=True)
time.sleep(2)  # stay until the sensor has read /proc
"""


@pytest.mark.live
def test_live_events_carry_the_process_name_and_the_pod_from_a_real_cgroup(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("live eBPF capture needs root")
    from detector.capture.live import cgroup2_root, live_capture_available
    from tests.test_live import free_port, start_live

    assert live_capture_available()
    dnsmasq = "/usr/sbin/dnsmasq"
    port = free_port()
    dm = subprocess.Popen([dnsmasq, "-k", "--no-resolv", "--no-hosts", "--address=/#/1.2.3.4",
                           "--listen-address=127.0.0.1", f"--port={port}", "--bind-interfaces", "-z",
                           "--user=root", "--pid-file="], stderr=subprocess.PIPE)
    # a real cgroup named as the kubelet's systemd driver names a pod's container
    top = Path(cgroup2_root()) / f"dnsdet-proc-{os.getpid()}"
    leaf = top / f"kubepods-besteffort-pod{UID.replace('-', '_')}.slice" / f"cri-containerd-{CID}.scope"
    leaf.mkdir(parents=True)
    try:
        live = start_live(port, 10)

        def join():
            (leaf / "cgroup.procs").write_text(str(os.getpid()))

        out = subprocess.run([sys.executable, "-c", CLIENT, str(port)], capture_output=True, text=True,
                             timeout=20, preexec_fn=join)
        assert out.returncode == 0, out.stderr
        pid, name = out.stdout.split()
        stdout, err = live.communicate(timeout=60)
        assert live.returncode == 0, err
    finally:
        dm.terminate()
        dm.wait(5)
        leaf.rmdir()
        leaf.parent.rmdir()
        top.rmdir()
    evs = [json.loads(x) for x in stdout.splitlines() if x.startswith("{")]
    ours = [e for e in evs if e["qname"] == "proc.example.com"]
    assert ours, evs[-3:]
    for e in ours:
        p = e["process"]
        assert p["pid"] == int(pid)
        assert p["comm"] == "dns-worker"  # the thread (ECS process.thread.name)
        assert p["name"] == name != "dns-worker"  # the process (ECS process.name)
        assert p["container_id"] == CID and p["pod_uid"] == UID
