"""Least privilege for live capture: what loading needs, and what is kept after.

Loading and attaching the cgroup programs needs CAP_BPF, CAP_PERFMON and
CAP_NET_ADMIN (or root, or CAP_SYS_ADMIN). Once they are attached, the sensor
parses packets any local user or remote peer can shape, so :func:`drop_after_load`
then keeps only what the running sensor uses:

* CAP_BPF and CAP_NET_ADMIN, to detach the programs at exit (cgroup
  attachments outlive the process);
* CAP_SYS_PTRACE, to read ``/proc/<pid>/exe`` of other users' processes
  (the executable in every event).

Every other capability leaves the effective, permitted, inheritable, ambient
and bounding sets; ``no_new_privs`` is set, so no exec can regain any; and a
seccomp filter (all threads) refuses, with EPERM, system calls a DNS sensor
never makes: exec, ptrace, mount and the new mount API, namespaces (unshare,
setns, and clone with a namespace flag), modules,
kexec, reboot, keyrings, uid and capability changes, clock setting. A
refused call is an error in the caller, not a kill, so a bug shows up as a
clear failure instead of a dead sensor. The filter is for x86_64; on other
architectures only the capabilities and ``no_new_privs`` apply (said once).

The ring buffer and the maps are read through file descriptors opened
while loading, which need no capability.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
import struct

log = logging.getLogger(__name__)

CAP_DAC_READ_SEARCH = 2
CAP_SETPCAP = 8
CAP_NET_ADMIN = 12
CAP_SYS_PTRACE = 19
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39

#: what live capture needs to load and attach (any one of these sets)
LOAD_NEEDS = ({CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN}, {CAP_SYS_ADMIN, CAP_NET_ADMIN})
#: what the running sensor keeps
KEEP = frozenset({CAP_BPF, CAP_NET_ADMIN, CAP_SYS_PTRACE})

PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

# seccomp (linux/seccomp.h, linux/filter.h, linux/audit.h)
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
AUDIT_ARCH_X86_64 = 0xC000003E
EPERM = 1
_SYS_SECCOMP_X86_64 = 317

#: x86_64 numbers of the system calls the sensor never makes
DENIED_X86_64 = {
    "execve": 59, "execveat": 322, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311,
    "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "open_tree": 428, "move_mount": 429,
    "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442,
    "setns": 308, "unshare": 272, "init_module": 175, "finit_module": 313, "delete_module": 176,
    "kexec_load": 246, "kexec_file_load": 320, "reboot": 169, "swapon": 167, "swapoff": 168,
    "add_key": 248, "request_key": 249, "keyctl": 250, "setuid": 105, "setgid": 106,
    "setreuid": 113, "setregid": 114, "setgroups": 116, "setresuid": 117, "setresgid": 119,
    "setfsuid": 122, "setfsgid": 123, "capset": 126, "settimeofday": 164, "clock_settime": 227,
    "clock_adjtime": 305, "adjtimex": 159, "sethostname": 170, "setdomainname": 171, "iopl": 172,
    "ioperm": 173, "acct": 163, "quotactl": 179, "open_by_handle_at": 304, "userfaultfd": 323,
    "personality": 135, "uselib": 134, "vhangup": 153, "lookup_dcookie": 212,
}


class PrivilegeError(OSError):
    """A step of dropping privileges failed (the message says which)."""


def effective_caps(pid: int | str = "self") -> int:
    """The effective capability mask of a process (from /proc/<pid>/status)."""
    return _status_field(pid, "CapEff")


def _status_field(pid: int | str, name: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                v = line.split(":", 1)[1].strip()
                return int(v, 16) if name.startswith("Cap") else int(v)
    raise KeyError(name)


def can_load(caps: int | None = None) -> bool:
    """True when this process may load and attach the programs: root with its
    capabilities, or a user given CAP_BPF + CAP_PERFMON + CAP_NET_ADMIN."""
    caps = effective_caps() if caps is None else caps
    return any(all(caps >> c & 1 for c in need) for need in LOAD_NEEDS)


def mask(caps) -> int:
    m = 0
    for c in caps:
        m |= 1 << c
    return m


def _libc():
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return libc


def _check(ret: int, what: str) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise PrivilegeError(e, f"{what}: {os.strerror(e)}")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def drop_capabilities(keep=KEEP) -> int:
    """Keep only ``keep`` (those of them this process has): bounding set first
    (needs CAP_SETPCAP), then ambient, then effective/permitted/inheritable.
    Returns the new effective mask. Capabilities are per thread: call this
    before other threads start (the live command does)."""
    libc = _libc()
    have = effective_caps()
    want = mask(keep) & have
    last = _last_cap()
    if have >> CAP_SETPCAP & 1:
        for c in range(last + 1):
            if not want >> c & 1:
                _check(libc.prctl(PR_CAPBSET_DROP, c, 0, 0, 0), f"dropping capability {c} from the bounding set")
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)  # EINVAL on kernels without ambient caps
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        word = (want >> (32 * i)) & 0xFFFFFFFF
        data[i].effective = data[i].permitted = word
        data[i].inheritable = 0
    _check(libc.capset(ctypes.byref(hdr), data), "capset")
    return effective_caps()


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 40


def no_new_privs() -> None:
    _check(_libc().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


#: clone() flags that make a new namespace (CLONE_NEWNS ... CLONE_NEWNET, CLONE_NEWCGROUP,
#: CLONE_NEWTIME): refused, as unshare() is; clone3() says ENOSYS so libc falls back to clone()
CLONE_NEW_FLAGS = 0x7E020080
_SYS_CLONE, _SYS_CLONE3 = 56, 435
ENOSYS = 38


def seccomp_program(denied: dict[str, int] = DENIED_X86_64) -> bytes:
    """The classic-BPF seccomp filter: another architecture or an x32 call → EPERM;
    clone() with a namespace flag → EPERM; clone3() → ENOSYS; a denied number →
    EPERM; the rest allowed. struct sock_filter is ``u16 code, u8 jt, u8 jf, u32 k``;
    jumps are written to labels and resolved here (offsets count from the next
    instruction)."""
    ld_w_abs, jeq_k, jge_k, jset_k, ret_k = 0x20, 0x15, 0x35, 0x45, 0x06
    deny, nosys = SECCOMP_RET_ERRNO | EPERM, SECCOMP_RET_ERRNO | ENOSYS
    prog: list[tuple] = [  # (code, jt label or 0, jf label or 0, k); a str is a label here
        (ld_w_abs, 0, 0, 4),  # seccomp_data.arch
        (jeq_k, "nr", "deny", AUDIT_ARCH_X86_64),
        "nr",
        (ld_w_abs, 0, 0, 0),  # seccomp_data.nr
        (jge_k, "deny", 0, 0x40000000),  # x32 ABI numbers
        (jeq_k, "clone", 0, _SYS_CLONE),
        (jeq_k, "nosys", 0, _SYS_CLONE3),
    ]
    for nr in sorted(set(denied.values())):
        prog.append((jeq_k, "deny", 0, nr))
    prog += [
        "allow", (ret_k, 0, 0, SECCOMP_RET_ALLOW),
        "clone", (ld_w_abs, 0, 0, 16),  # args[0], its low 32 bits (little-endian): the flags
        (jset_k, "deny", 0, CLONE_NEW_FLAGS),
        (ret_k, 0, 0, SECCOMP_RET_ALLOW),  # (BPF jumps only forward: a second allow)
        "nosys", (ret_k, 0, 0, nosys),
        "deny", (ret_k, 0, 0, deny),
    ]
    at, n = {}, 0
    for x in prog:
        if isinstance(x, str):
            at[x] = n
        else:
            n += 1
    out, pc = [], 0
    for x in prog:
        if isinstance(x, str):
            continue
        code, jt, jf, k = x
        jt = at[jt] - pc - 1 if isinstance(jt, str) else jt
        jf = at[jf] - pc - 1 if isinstance(jf, str) else jf
        if not (0 <= jt < 256 and 0 <= jf < 256):
            raise ValueError("seccomp program: a jump is out of range")
        out.append(struct.pack("=HBBI", code, jt, jf, k))
        pc += 1
    return b"".join(out)


def install_seccomp() -> bool:
    """Load the filter into every thread of the process (TSYNC); False when this
    architecture has no table here."""
    if platform.machine() != "x86_64":
        log.warning("seccomp filter not applied: no system call table for %s", platform.machine())
        return False
    prog = seccomp_program()
    buf = ctypes.create_string_buffer(prog, len(prog))

    class _Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = _Fprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    ret = libc.syscall(ctypes.c_long(_SYS_SECCOMP_X86_64), ctypes.c_ulong(SECCOMP_SET_MODE_FILTER),
                       ctypes.c_ulong(SECCOMP_FILTER_FLAG_TSYNC), ctypes.byref(fprog))
    if ret != 0:
        e = ctypes.get_errno()
        if ret > 0:  # TSYNC: the id of a thread that could not be synchronised
            raise PrivilegeError(EPERM, f"seccomp: thread {ret} could not take the filter")
        raise PrivilegeError(e, f"seccomp: {os.strerror(e)}")
    return True


def drop_after_load(keep=KEEP) -> dict:
    """Everything above, in order; returns what was done (for the log and tests)."""
    caps = drop_capabilities(keep)
    no_new_privs()
    filtered = install_seccomp()
    log.info("privileges dropped: capabilities %#x, no_new_privs, seccomp %s", caps, filtered)
    return {"capabilities": caps, "no_new_privs": True, "seccomp": filtered}
