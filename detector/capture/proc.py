"""Process details from /proc for live events: the process name, the executable,
the container and, on a Kubernetes node, the pod.

BPF gives pid, tid, uid, gid, comm and the cgroup id. ``comm`` is the sending
thread's name (dig's ``isc-net-0000``); the process's own name is the thread
group leader's, /proc/<pid>/comm. The executable is /proc/<pid>/exe. The
container id and the pod uid come from the cgroup path (/proc/<pid>/cgroup),
for both kubelet cgroup drivers:

    systemd   /kubepods.slice/kubepods-burstable.slice/
              kubepods-burstable-pod<uid, "_" for "-">.slice/cri-containerd-<cid>.scope
    cgroupfs  /kubepods/besteffort/pod<uid>/<cid>

The pod's name and namespace and the container's name come from the kubelet's
log layout, which every CRI runtime writes on the node:

    /var/log/containers/<pod>_<namespace>_<container>-<cid>.log   (symlinks)
    /var/log/pods/<namespace>_<pod>_<uid>/<container>/            (directories)

(Pod, namespace and container names are DNS labels: they hold no "_".) Asking
the CRI socket (gRPC) would add nothing these do not say, and would need a gRPC
stack in the sensor: it is left out.

Everything is read under ``root`` (default "/"), so tests lay out a synthetic
/proc and /var/log. Cached per pid for a few seconds (bounded); the log
directories are listed again at most once a ``rescan`` interval, when a
container or pod is not found in them. A process that has already exited keeps
what was read before, or empty fields: a lookup never raises.
"""

from __future__ import annotations

import os
import re
import time
from collections import OrderedDict
from typing import NamedTuple

# 64-hex container ids as runtimes write them into cgroup paths:
#   /docker/<id>, /system.slice/docker-<id>.scope, /kubepods/.../cri-containerd-<id>.scope,
#   /kubepods/burstable/pod<uid>/<id>, crio-<id>.scope, libpod-<id>.scope
_CONTAINER = re.compile(r"(?:docker|cri-containerd|crio|libpod|containerd)[-/]([0-9a-f]{64})"
                        r"|/([0-9a-f]{64})(?:\.scope)?$")
# the pod uid in a kubepods cgroup path: a UUID (with "_" for "-" under the systemd
# driver) or, for a static pod, the 32-hex hash of its manifest
_UID = r"[0-9a-f]{8}[-_]?[0-9a-f]{4}[-_]?[0-9a-f]{4}[-_]?[0-9a-f]{4}[-_]?[0-9a-f]{12}"
_POD = re.compile(rf"kubepods\b.*?[/-]pod({_UID})(?:\.slice)?(?:/|$)")
# /var/log/containers/<pod>_<namespace>_<container>-<cid>.log
_CONTAINER_LOG = re.compile(r"([^_/]+)_([^_/]+)_(.+)-([0-9a-f]{64})\.log")
# /var/log/pods/<namespace>_<pod>_<uid>
_POD_DIR = re.compile(rf"([^_/]+)_([^_/]+)_({_UID})")

MAX_INDEX = 65_536  # entries kept from one listing of a log directory


def container_id(cgroup_path: str) -> str:
    """The container id in a cgroup path (or a whole /proc/<pid>/cgroup), or ""."""
    for line in cgroup_path.splitlines():
        path = line.rsplit(":", 1)[-1].strip()
        m = _CONTAINER.search(path)
        if m:
            return m.group(1) or m.group(2)
    return ""


def pod_uid(cgroup_path: str) -> str:
    """The Kubernetes pod uid in a kubepods cgroup path, with its dashes, or ""."""
    for line in cgroup_path.splitlines():
        path = line.rsplit(":", 1)[-1].strip()
        m = _POD.search(path)
        if m:
            return m.group(1).replace("_", "-")
    return ""


class Details(NamedTuple):
    """What /proc and the kubelet's logs say about one process ("" when unknown)."""

    exe: str = ""
    container_id: str = ""
    name: str = ""
    pod_uid: str = ""
    pod_name: str = ""
    pod_namespace: str = ""
    container_name: str = ""


class PodIndex:
    """The kubelet's log directories as two maps, listed again on a miss at most
    once per ``rescan`` seconds:

    - container id -> (pod, namespace, container) from /var/log/containers
    - pod uid -> (namespace, pod, container names) from /var/log/pods
    """

    def __init__(self, root: str = "/", rescan: float = 2.0) -> None:
        self.containers_dir = os.path.join(root, "var/log/containers")
        self.pods_dir = os.path.join(root, "var/log/pods")
        self.rescan = rescan
        self.by_cid: dict[str, tuple[str, str, str]] = {}
        self.by_uid: dict[str, tuple[str, str, tuple[str, ...]]] = {}
        self._cid_at = self._uid_at = float("-inf")
        self.scans = 0

    def _list(self, path: str) -> list[str]:
        try:
            names = os.listdir(path)
        except OSError:  # not a Kubernetes node, or not mounted: nothing to name
            return []
        self.scans += 1
        return names[:MAX_INDEX]

    def _scan_containers(self) -> None:
        index = {}
        for name in self._list(self.containers_dir):
            m = _CONTAINER_LOG.fullmatch(name)
            if m:
                index[m.group(4)] = (m.group(1), m.group(2), m.group(3))
        self.by_cid = index

    def _scan_pods(self) -> None:
        index = {}
        for name in self._list(self.pods_dir):
            m = _POD_DIR.fullmatch(name)
            if not m:
                continue
            try:
                with os.scandir(os.path.join(self.pods_dir, name)) as it:
                    names = tuple(sorted(e.name for e in it if e.is_dir(follow_symlinks=False)))
            except NotADirectoryError:  # not a pod's directory
                continue
            except OSError:  # the pod went away between the two listings
                names = ()
            index[m.group(3).replace("_", "-")] = (m.group(1), m.group(2), names)
        self.by_uid = index

    def container(self, cid: str) -> tuple[str, str, str] | None:
        hit = self.by_cid.get(cid)
        now = time.monotonic()
        if hit is None and now - self._cid_at >= self.rescan:
            self._cid_at = now
            self._scan_containers()
            hit = self.by_cid.get(cid)
        return hit

    def pod(self, uid: str) -> tuple[str, str, tuple[str, ...]] | None:
        hit = self.by_uid.get(uid)
        now = time.monotonic()
        if hit is None and now - self._uid_at >= self.rescan:
            self._uid_at = now
            self._scan_pods()
            hit = self.by_uid.get(uid)
        return hit

    def lookup(self, cid: str, uid: str) -> tuple[str, str, str]:
        """(pod name, namespace, container name) of a container, or ("", "", "")."""
        pod = ns = cname = ""
        if cid:
            hit = self.container(cid)
            if hit is not None:
                pod, ns, cname = hit
        if uid and not (pod and ns):
            hit = self.pod(uid)
            if hit is not None:
                ns, pod, names = hit
                if not cname and len(names) == 1:  # the pod's only container
                    cname = names[0]
        return pod, ns, cname


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read(65_536).decode("utf-8", "replace")
    except OSError:  # the process exited, or this is no Linux /proc
        return None


class ProcCache:
    def __init__(self, ttl: float = 5.0, max_pids: int = 8192, root: str = "/", rescan: float = 2.0) -> None:
        self.ttl = ttl
        self.max = max_pids
        self.proc = os.path.join(root, "proc")
        self.pods = PodIndex(root, rescan)
        self.cache: OrderedDict[int, tuple[float, Details]] = OrderedDict()

    def lookup(self, pid: int) -> Details:
        """The Details of a pid; what was known before (or empty fields) when it is gone."""
        now = time.monotonic()
        hit = self.cache.get(pid)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        old = hit[1] if hit is not None else Details()
        base = f"{self.proc}/{pid}"
        try:
            exe = os.readlink(f"{base}/exe")
        except OSError:  # exited, or not ours to read (no CAP_SYS_PTRACE)
            exe = old.exe
        comm = _read(f"{base}/comm")
        name = comm.rstrip("\n") if comm is not None else old.name
        cgroup = _read(f"{base}/cgroup")
        if cgroup is None:
            cid, uid = old.container_id, old.pod_uid
        else:
            cid, uid = container_id(cgroup), pod_uid(cgroup)
        pod = ns = cname = ""
        if cid or uid:
            pod, ns, cname = self.pods.lookup(cid, uid)
            if (cid, uid) == (old.container_id, old.pod_uid):  # the same container: keep what was known
                pod, ns, cname = pod or old.pod_name, ns or old.pod_namespace, cname or old.container_name
        d = Details(exe, cid, name, uid, pod, ns, cname)
        self.cache[pid] = (now, d)
        self.cache.move_to_end(pid)
        if len(self.cache) > self.max:
            self.cache.popitem(last=False)
        return d
