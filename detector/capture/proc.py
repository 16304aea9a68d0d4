"""Process details from /proc for live events: executable and container id.

BPF gives pid, tid, uid, gid, comm and the cgroup id; the executable path and
the container id (from the cgroup path: docker, containerd/cri-o, podman,
kubepods) come from /proc/<pid> when the event arrives. Cached per pid for a
few seconds (bounded); a process that has already exited keeps an empty exe
and callers fall back to comm.
"""

from __future__ import annotations

import os
import re
import time
from collections import OrderedDict

# 64-hex container ids as runtimes write them into cgroup paths:
#   /docker/<id>, /system.slice/docker-<id>.scope, /kubepods/.../cri-containerd-<id>.scope,
#   /kubepods/burstable/pod<uid>/<id>, crio-<id>.scope, libpod-<id>.scope
_CONTAINER = re.compile(r"(?:docker|cri-containerd|crio|libpod|containerd)[-/]([0-9a-f]{64})"
                        r"|/([0-9a-f]{64})(?:\.scope)?$")


def container_id(cgroup_path: str) -> str:
    """The container id in a cgroup path, or ""."""
    for line in cgroup_path.splitlines():
        path = line.rsplit(":", 1)[-1].strip()
        m = _CONTAINER.search(path)
        if m:
            return m.group(1) or m.group(2)
    return ""


class ProcCache:
    def __init__(self, ttl: float = 5.0, max_pids: int = 8192) -> None:
        self.ttl = ttl
        self.max = max_pids
        self.cache: OrderedDict[int, tuple[float, str, str]] = OrderedDict()

    def lookup(self, pid: int) -> tuple[str, str]:
        """(exe, container id) of a pid; ("", "") when it is gone."""
        now = time.monotonic()
        hit = self.cache.get(pid)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1], hit[2]
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            exe = hit[1] if hit else ""
        try:
            with open(f"/proc/{pid}/cgroup") as f:
                cid = container_id(f.read())
        except OSError:
            cid = hit[2] if hit else ""
        self.cache[pid] = (now, exe, cid)
        self.cache.move_to_end(pid)
        if len(self.cache) > self.max:
            self.cache.popitem(last=False)
        return exe, cid
