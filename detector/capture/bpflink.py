"""Attach a loaded BPF program to a cgroup through a BPF link (the bpf() syscall).

BCC attaches cgroup programs with BPF_PROG_ATTACH: the attachment belongs to
the cgroup and stays after the loader dies, until someone detaches it. That
is harmless for programs that only observe (they return 1), not for one that
refuses connects: a sensor killed with SIGKILL would leave the host's DNS
blocked. A link made with BPF_LINK_CREATE lives as long as its file
descriptor: when the process ends, however it ends, the kernel closes the
descriptor and detaches the program. :func:`link_cgroup` makes such a link
(the descriptor is close-on-exec, so no child inherits it); closing it
(:func:`os.close`) detaches.

Links coexist with BPF_F_ALLOW_MULTI attachments on the same cgroup (both are
multi-program attachments); the kernel runs every program and a syscall is
allowed only when all of them allow it.
"""

from __future__ import annotations

import ctypes
import os
import platform

BPF_LINK_CREATE = 28  # enum bpf_cmd
#: the bpf() system call number per architecture
SYS_BPF = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "ppc64le": 361, "s390x": 351, "riscv64": 280}


class BpfLinkError(OSError):
    """The kernel refused to create the link (errno and its message)."""


class _LinkCreate(ctypes.Structure):
    """union bpf_attr, the BPF_LINK_CREATE member: the fields used here, then zeros
    (the kernel requires every byte it knows beyond them to be 0)."""

    _fields_ = [("prog_fd", ctypes.c_uint32), ("target_fd", ctypes.c_uint32),
                ("attach_type", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("rest", ctypes.c_uint8 * 48)]


_libc = ctypes.CDLL(None, use_errno=True)


def link_cgroup(prog_fd: int, cgroup_fd: int, attach_type: int) -> int:
    """Attach ``prog_fd`` to the cgroup open at ``cgroup_fd`` (``attach_type``: enum
    bpf_attach_type, e.g. BPF_CGROUP_INET4_CONNECT = 10) through a new link;
    returns the link's file descriptor. Raises BpfLinkError."""
    nr = SYS_BPF.get(platform.machine())
    if nr is None:
        raise BpfLinkError(0, f"the bpf() system call number on {platform.machine()} is not known")
    attr = _LinkCreate(prog_fd=prog_fd, target_fd=cgroup_fd, attach_type=attach_type, flags=0)
    fd = _libc.syscall(ctypes.c_long(nr), ctypes.c_int(BPF_LINK_CREATE), ctypes.byref(attr),
                       ctypes.c_uint(ctypes.sizeof(attr)))
    if fd < 0:
        err = ctypes.get_errno()
        raise BpfLinkError(err, f"BPF_LINK_CREATE (attach type {attach_type}): {os.strerror(err)}")
    return fd
