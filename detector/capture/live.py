"""Live capture: load bpf/ with BCC, attach to the cgroup v2 root, read DNS events.

    with LiveCapture(ports={53}) as cap:
        cap.start()                    # the drain thread
        for ev in cap.poll():          # DnsEvent (with .process) or ConnEvent
            ...

bpf/dns_sock.c records the owner of every socket that talks to a DNS port
(cgroup sock_addr hooks) and bpf/dns_skb.c copies every DNS packet of the
host, with that owner, into a ring buffer (cgroup_skb hooks) as variable-length
records (bpf/dns_event.h).

The path is built for 40,000 messages/s and more on one core:

* a drain thread does nothing but copy bytes: it maps the ring buffer itself
  (no per-record callback), copies every committed record in one slice per
  drain and frees the ring at once, so the kernel side never waits on
  detection;
* :meth:`LiveCapture.poll` parses the copied records in the caller's thread:
  one ``struct`` unpack per record, addresses and process details cached by
  their raw bytes (exe and container id from /proc at most every few seconds
  per process), the payload decoded by the C decoder (detector.dns.wire), DNS
  over TCP reassembled (detector.capture.tcpstream);
* under overload it sheds load visibly. When the copied-but-unparsed backlog
  grows, the drain thread raises a shed level in the kernel (control map):
  dns_skb.c then drops UDP exchanges by a hash of DNS id, ports and addresses,
  so a query and its response are kept or dropped together, and counts them.
  The level falls back to 0 when the backlog is gone. A backlog that still
  overflows is dropped and counted too. Every shed message is counted
  (:attr:`stats`: ``sampled_out``, ``shed_backlog``; :attr:`lost`: ring buffer
  full) and reported as a ``sensor-overload`` finding (``on_overload``), never
  silently.

Programs are detached on close, on SIGTERM and at exit: cgroup attachments
outlive the process that made them.

Errors are :class:`~detector.errors.DetectorError` with their own exit codes:
not root (10), BCC missing (11), kernel headers missing (12), a program
refused by the kernel (13).
"""

from __future__ import annotations

import atexit
import ctypes as ct
import logging
import mmap
import os
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from detector import errors
from detector.capture.proc import ProcCache
from detector.capture.tcpstream import TcpDnsReassembler
from detector.dns.wire import DnsParseError, decode
from detector.errors import DetectorError
from detector.events import ConnEvent, DnsEvent, Finding, ProcessInfo
from detector.paths import REPO

log = logging.getLogger(__name__)

BPF_DIR = REPO / "bpf"
SOURCES = ("dns_sock.c", "dns_skb.c")
POLICY_SOURCE = "dns_enforce.c"  # --audit / --enforce only
BPF_F_ALLOW_MULTI = 2
PORT_DNS, PORT_CONN = 1, 2
CONN_PORTS = (853,)
DRAIN_INTERVAL = 0.01  # seconds between ring buffer drains
STUB_WINDOW = 2.0  # seconds between an application's query to a stub and the stub's upstream query
KIND_PACKET, KIND_CONNECT, KIND_FLAGGED = 0, 1, 2  # enum dns_kind
KIND_POLICY_AUDIT, KIND_POLICY_REFUSED = 3, 4  # bpf/dns_enforce.c: would refuse / refused
LOOKBACK = 10.0  # seconds: a connect this long before an address was flagged still counts
DIR_EGRESS, DIR_INGRESS = 0, 1
DUP_WINDOW = 0.25  # seconds: a message seen again this soon, same addresses and bytes, is a copy
PROC_TTL = 5.0  # seconds a process's details (exe, container id) are reused
MAX_BATCH = 8192  # records parsed per poll(): the caller gets control back often
# Shedding: records copied out of the ring but not parsed yet
BACKLOG_HIGH = 16_384  # above this and growing: shed more in the kernel
BACKLOG_LOW = 2_048  # below this: shed less
BACKLOG_MAX = 131_072  # above this: drop what is drained (counted as shed_backlog)
CONTROL_INTERVAL = 0.1  # seconds between shedding decisions
SHED_MAX = 1008  # shed level ceiling (of 1024): at least 1.5% of exchanges are kept
SHED_STEP_DOWN = 32  # shed level decrease per quiet interval (back to 0 in ~3 s)
OVERLOAD_EVERY = 10.0  # seconds between sensor-overload findings while shedding goes on
OVERLOAD_RULE = "sensor-overload"
C_LOST, C_SHORT, C_SAMPLED, C_SENT, C_CONTENT_SEEN, C_CONTENT_DNS, C_FLAGGED, C_MAX = range(8)  # enum dns_counter

# --- struct dns_event (bpf/dns_event.h), mirrored exactly: (field, struct code) -------
_FIELDS = (
    ("ts_ns", "Q"), ("cookie", "Q"),
    ("pid", "I"), ("tid", "I"), ("uid", "I"), ("gid", "I"), ("cgroup_id", "Q"), ("comm", "16s"),
    ("len", "I"), ("caplen", "H"), ("dir", "B"), ("kind", "B"), ("seq", "I"),
    ("tcp_flags", "B"), ("family", "B"), ("proto", "B"), ("lo", "B"),
    ("saddr", "16s"), ("daddr", "16s"), ("sport", "H"), ("dport", "H"),
)
DNS_MAX_PAYLOAD = 2048
_CT = {"Q": ct.c_uint64, "I": ct.c_uint32, "H": ct.c_uint16, "B": ct.c_uint8, "16s": ct.c_uint8 * 16}


class _Event(ct.Structure):
    """struct dns_event, field by field (built from _FIELDS)."""

    _fields_ = [(n, _CT[c]) for n, c in _FIELDS] + [("data", ct.c_uint8 * DNS_MAX_PAYLOAD)]


EVENT = struct.Struct("<" + "".join(c for _, c in _FIELDS))  # the fixed part, every field
HDR_SIZE = EVENT.size  # offsetof(struct dns_event, data)
assert HDR_SIZE == _Event.data.offset == 108, "struct dns_event has implicit padding"
_OFF = {n: getattr(_Event, n).offset for n, _ in _FIELDS}
OWNER_OFF, OWNER_END = _OFF["pid"], _OFF["comm"] + 16  # struct owner: the process cache key
KEY_OFF = _OFF["saddr"]  # saddr..dport then data: one message's identity
# The hot path: the ring record header (u32 len, u32 page offset), then the fields
# poll() needs; cookie and owner are skipped (the owner is sliced as a cache key).
_HOT = struct.Struct("<I4xQ8x40xIHBBIBBBB16s16sHH")
assert _HOT.size == 8 + HDR_SIZE

RB_BUSY, RB_DISCARD = 1 << 31, 1 << 30  # BPF_RINGBUF_{BUSY,DISCARD}_BIT
RB_HDR = 8  # BPF_RINGBUF_HDR_SZ
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def cgroup2_root() -> str | None:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup or .../unified)."""
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[2] == "cgroup2":
                return parts[1]
    except OSError:
        pass
    return None


def headers_present() -> bool:
    return Path(f"/lib/modules/{os.uname().release}/build/include").exists()


def live_capture_available() -> bool:
    """True when this host can run live capture: root (or the capabilities to load
    the programs, see capture/privileges.py), BCC, kernel headers, cgroup v2."""
    from detector.capture.privileges import can_load

    if not can_load() or not headers_present() or cgroup2_root() is None:
        return False
    try:
        import bcc  # noqa: F401
    except ImportError:
        return False
    return True


def check_requirements() -> None:
    """Raise the DetectorError that says why live capture cannot run here."""
    from detector.capture.privileges import can_load

    if not can_load():
        raise DetectorError("live capture needs root, or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (loading "
                            "eBPF programs and attaching them to the cgroup v2 root)", errors.NOT_ROOT,
                            "run as root, or give those capabilities (setpriv --ambient-caps, a systemd "
                            "AmbientCapabilities=, a pod's securityContext), or replay a capture: "
                            "detector replay pcap FILE")
    try:
        import bcc  # noqa: F401
    except ImportError:
        raise DetectorError("BCC's Python module is not importable", errors.NO_BCC,
                            "apt-get install python3-bpfcc, then ./setup.sh (links it into .venv)") from None
    if not headers_present():
        raise DetectorError(f"no kernel headers at /lib/modules/{os.uname().release}/build",
                            errors.NO_HEADERS,
                            "./setup.sh installs linux-headers-$(uname -r) or links generic ones")
    if cgroup2_root() is None:
        raise DetectorError("no cgroup v2 hierarchy is mounted", errors.NO_HEADERS,
                            "mount -t cgroup2 none /sys/fs/cgroup/unified")


class RingReader:
    """A BPF ring buffer map read through its own mmap: no callback per record.

    The kernel's layout (kernel/bpf/ringbuf.c): page 0 holds the consumer
    position (the only writable page), page 1 the producer position, then the
    data area. Each record starts with an 8-byte header (u32 length with the
    busy and discard bits, u32 page offset) and is padded to 8 bytes. The data
    area is mapped once (not twice, as libbpf does): a record that wraps around
    the end is copied in two slices.
    """

    def __init__(self, map_fd: int) -> None:
        self.size = _max_entries(map_fd)
        self.mask = self.size - 1
        page = mmap.PAGESIZE
        self.cons_map = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self.data_map = mmap.mmap(map_fd, page + self.size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self.base = page  # data area offset in data_map
        self.cons = _U64.unpack_from(self.cons_map, 0)[0]

    def pending(self) -> int:
        """Bytes written by the kernel and not consumed yet."""
        return _U64.unpack_from(self.data_map, 0)[0] - self.cons

    def drain(self) -> tuple[bytes, list[int]]:
        """Copy every committed record and free them in the ring: (bytes, offsets of
        each record's 8-byte header in those bytes)."""
        dm, base, mask = self.data_map, self.base, self.mask
        prod = _U64.unpack_from(dm, 0)[0]
        cons = start = self.cons
        offs: list[int] = []
        add = offs.append
        unpack = _U32.unpack_from
        while cons < prod:
            ln = unpack(dm, base + (cons & mask))[0]
            if ln & RB_BUSY:
                break  # reserved, not committed yet: the rest waits for the next drain
            if not ln & RB_DISCARD:
                add(cons - start)
            cons += (((ln & 0x3FFFFFFF) + RB_HDR + 7) & ~7)
        if cons == start:
            return b"", offs
        a = start & mask
        n = cons - start
        if a + n <= self.size:
            chunk = dm[base + a:base + a + n]
        else:  # wraps around the end of the data area
            chunk = dm[base + a:base + self.size] + dm[base:base + a + n - self.size]
        self.cons = cons
        _U64.pack_into(self.cons_map, 0, cons)  # x86/arm64 store of an aligned u64: release order
        return chunk, offs

    def close(self) -> None:
        for m in (self.cons_map, self.data_map):
            try:
                m.close()
            except (BufferError, ValueError):
                pass


def _max_entries(fd: int) -> int:
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("max_entries:"):
            return int(line.split()[1])
    raise DetectorError("cannot read the ring buffer's size from /proc/self/fdinfo", errors.BPF_REJECTED)


class LiveCapture:
    """The loaded and attached BPF programs, their ring buffer reader and decoder.

    ``on_overload(finding)``, when given, receives a ``sensor-overload``
    :class:`~detector.events.Finding` (pass ``Pipeline.report``) as soon as
    load is shed and then at most every OVERLOAD_EVERY seconds while it goes
    on; :meth:`overload_finding` is the same, pulled.
    """

    def __init__(self, ports: frozenset[int] | set[int] = frozenset({53}),
                 conn_ports: tuple[int, ...] = CONN_PORTS,
                 on_overload: Callable[[Finding], None] | None = None,
                 drop_privileges: bool = False, any_port: bool = True, policy=None, tls: bool = False) -> None:
        """``any_port``: also take UDP payloads on other ports that hold a DNS message
        (recognized by content in bpf/dns_skb.c); False watches ``ports`` only.
        ``tls``: DoH and DoT in clear text too, from uprobes on libssl (bpf/dns_tls.c,
        detector/capture/tls.py).
        ``policy``: a resolver_policy.KernelPolicy to audit or enforce in the kernel
        (bpf/dns_enforce.c, attached by BPF links: see :meth:`_attach_policy`)."""
        check_requirements()
        from bcc import BPF, BPFAttachType

        self.BPF = BPF
        self.attached: list = []
        self.cg_fd = None
        self.ring: RingReader | None = None
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None
        self.policy_links: list[int] = []  # BPF link fds of bpf/dns_enforce.c: closing one detaches
        self.policy_mode: str | None = None  # "audit" | "enforce" once attached
        text = "".join((BPF_DIR / s).read_text() for s in SOURCES + (POLICY_SOURCE,) * (policy is not None))
        try:
            self.b = BPF(text=text, cflags=[f"-I{BPF_DIR}", "-Wno-unused-value",
                                            f"-DDNS_ANY_PORT={1 if any_port else 0}",
                                            f"-DDNS_ENFORCE={int(getattr(policy, 'mode', '') == 'enforce')}"])
        except Exception as e:  # compile error: headers or BCC broken
            raise DetectorError(f"BPF programs in {BPF_DIR} did not compile: {_one_line(e)}",
                                errors.NO_HEADERS,
                                "check the kernel headers: /lib/modules/$(uname -r)/build") from None
        at = BPFAttachType
        self.progs = [
            ("dns_connect4", BPF.CGROUP_SOCK_ADDR, at.CGROUP_INET4_CONNECT),
            ("dns_connect6", BPF.CGROUP_SOCK_ADDR, at.CGROUP_INET6_CONNECT),
            ("dns_sendmsg4", BPF.CGROUP_SOCK_ADDR, at.CGROUP_UDP4_SENDMSG),
            ("dns_sendmsg6", BPF.CGROUP_SOCK_ADDR, at.CGROUP_UDP6_SENDMSG),
            ("dns_egress", BPF.CGROUP_SKB, at.CGROUP_INET_EGRESS),
            ("dns_ingress", BPF.CGROUP_SKB, at.CGROUP_INET_INGRESS),
        ]
        self.fns = []
        for name, ptype, atype in self.progs:
            try:
                fn = self.b.load_func(name, ptype, attach_type=atype if ptype == BPF.CGROUP_SOCK_ADDR else -1)
            except Exception as e:
                raise DetectorError(f"the kernel refused BPF program {name}: {_one_line(e)}",
                                    errors.BPF_REJECTED,
                                    "the verifier log is printed above; run with -vv and report it "
                                    "with `uname -r`") from None
            self.fns.append((fn, atype))
        tbl = self.b["ports"]
        for p in ports:
            tbl[ct.c_uint16(p)] = ct.c_uint8(PORT_DNS)
        for p in conn_ports:
            tbl[ct.c_uint16(p)] = ct.c_uint8(PORT_CONN | (PORT_DNS if p in ports else 0))
        self._counters = self.b["counters"]
        self._control = self.b["control"]
        try:
            self.ring = RingReader(self.b["events"].map_fd)
        except (OSError, ValueError) as e:
            raise DetectorError(f"mapping the BPF ring buffer failed: {e}", errors.BPF_REJECTED) from None
        self.cg_fd = os.open(cgroup2_root(), os.O_RDONLY)
        atexit.register(self.close)
        self.tls = None
        if tls:  # uprobes on libssl: attached while the privileges to do so are held
            from detector.capture.tls import TlsCapture

            try:
                self.tls = TlsCapture()
            except BaseException:
                self.close()
                raise
        try:
            for fn, atype in self.fns:
                BPF.attach_func(fn, self.cg_fd, atype, BPF_F_ALLOW_MULTI)
                self.attached.append((fn, atype))
        except Exception as e:
            self.close()
            raise DetectorError(f"attaching to the cgroup v2 root failed: {_one_line(e)}",
                                errors.BPF_REJECTED,
                                "is another tool holding an exclusive cgroup attachment?") from None
        if policy is not None:
            self._attach_policy(policy)
        # attached: from here on only what the running sensor needs (capture/privileges.py);
        # the sensor asks for it (LiveSource), a library caller may not want its process changed
        self.privileges: dict | None = None
        if drop_privileges:
            from detector.capture.privileges import PrivilegeError, drop_after_load

            try:
                self.privileges = drop_after_load()
            except (PrivilegeError, OSError) as e:
                log.warning("live capture could not drop all its privileges: %s", e)
        self.mono_to_wall = time.time() - time.monotonic()
        self.host = socket.gethostname()
        self.on_overload = on_overload
        self.proc = ProcCache(ttl=PROC_TTL)
        self.tcp = TcpDnsReassembler()
        self._tcp_next = 0.0  # when to expire TCP holes and idle streams next
        self.queue: deque[tuple[bytes, list[int]]] = deque()
        self._drained = 0  # records copied out of the ring (drain thread)
        self._parsed = 0  # records parsed or dropped (poll's thread)
        self._shed_backlog = 0  # records dropped from an overflowing backlog (drain thread)
        self._shed_level = 0  # 0..1023, what control[0] holds
        self._last_backlog = 0
        self._next_control = 0.0
        self._closed_counters: list[int] | None = None
        self._stats_t = 0.0
        self._stats = {"packets": 0, "dns_messages": 0, "parse_errors": 0, "truncated_copies": 0,
                      "connects": 0, "stub_linked": 0, "duplicate_copies": 0,
                      "short_payloads": 0, "sampled_out": 0, "ring_records": 0, "backlog": 0, "shed_backlog": 0, "shed_level": 0,
                      "discarded_at_stop": 0, "content_examined": 0, "content_dns": 0,
                      "flagged_connects": 0, "flagged_addresses": 0}
        # flagged addresses in the kernel's map, with how many watchers hold each;
        # connects found in recent_connects when an address was added, for the next poll
        self._flagged: dict[bytes, int] = {}
        self._late: list[ConnEvent] = []
        # the last DUP_WINDOW seconds of messages, in two generations: identity -> (ts, event)
        self._dup_cur: dict = {}
        self._dup_prev: dict = {}
        self._dup_t = 0.0
        # application queries to loopback stubs, two generations of STUB_WINDOW seconds:
        # (name, qtype) -> (ts, process)
        self._links_cur: dict = {}
        self._links_prev: dict = {}
        self._links_t = 0.0
        # raw owner bytes -> ProcessInfo (None for pid 0), cleared every PROC_TTL seconds
        self._pinfo: dict[bytes, ProcessInfo | None] = {}
        self._pinfo_t = time.monotonic()
        self._addr4: dict[bytes, str] = {}
        self._addr6: dict[bytes, str] = {}
        # overload reporting
        self._ov_next = 0.0
        self._ov_last = (0, 0, 0)  # (sampled_out, shed_backlog, lost) at the last finding
        self._ov_reported = 0  # total shed at the last revised finding
        self._ov_t = time.time()

    # --- counters ---------------------------------------------------------------
    def counters(self) -> list[int]:
        """The kernel's per-CPU counters, summed: [lost, short, sampled, sent, content
        examined, content DNS] (enum dns_counter)."""
        if self._closed_counters is not None:
            return self._closed_counters
        out = []
        for k in range(C_MAX):
            out.append(int(self._counters.sum(ct.c_int(k)).value))
        return out

    @property
    def stats(self) -> dict[str, int]:
        """Counters: this side's, and the kernel's (refreshed at most 4 times a second)."""
        now = time.monotonic()
        if now - self._stats_t > 0.25 and self._closed_counters is None:
            self._stats_t = now
            try:
                self._refresh_stats()
            except Exception:  # noqa: BLE001 - the maps are gone: keep the last values
                pass
        return self._stats

    @property
    def lost(self) -> int:
        """Records the kernel could not write: the ring buffer was full."""
        return self.counters()[C_LOST]

    def _refresh_stats(self) -> list[int]:
        c = self.counters()
        st = self._stats
        st["short_payloads"] = c[C_SHORT]
        st["sampled_out"] = c[C_SAMPLED]
        st["shed_backlog"] = self._shed_backlog
        st["shed_level"] = self._shed_level
        st["ring_records"] = c[C_SENT]
        st["content_examined"] = c[C_CONTENT_SEEN]  # UDP on other ports the kernel's content check looked at
        st["content_dns"] = c[C_CONTENT_DNS]  # ... and took for DNS
        st["flagged_addresses"] = len(self._flagged)
        st["backlog"] = self._drained - self._parsed
        st.update(self.tcp.counters())  # reassembly: gaps, out-of-window, evictions, held bytes
        if self.tls is not None:
            st.update(self.tls.stats())  # DoH/DoT from libssl: calls copied, messages, connections
        return c

    # --- reading ----------------------------------------------------------------
    def start(self) -> None:
        """Drain the ring buffer in a thread of its own that only copies bytes, so a
        slow detection step in the caller never lets the kernel side overflow;
        :meth:`poll` parses and hands over the events."""
        if self._reader is None:
            self._reader = threading.Thread(target=self._read_loop, name="bpf-drain", daemon=True)
            self._reader.start()

    def _read_loop(self) -> None:
        stop = self._stop
        while not stop.is_set():
            n = self._drain_once()
            if self.tls is not None:
                n += self.tls.drain()
            now = time.monotonic()
            if now >= self._next_control:
                self._next_control = now + CONTROL_INTERVAL
                self._control_step()
            if n < 256:  # the kernel side does not wake us (BPF_RB_NO_WAKEUP): poll
                stop.wait(DRAIN_INTERVAL)

    def _drain_once(self) -> int:
        ring = self.ring
        if ring is None:
            return 0
        chunk, offs = ring.drain()
        n = len(offs)
        if n:
            self._drained += n
            if self._drained - self._parsed > BACKLOG_MAX:
                self._shed_backlog += n  # detection is too far behind: drop, counted
                self._parsed += n
            else:
                self.queue.append((chunk, offs))
        return n

    def _control_step(self) -> None:
        """Shed in the kernel while the backlog grows, stop shedding when it is gone."""
        backlog = self._drained - self._parsed
        level = self._shed_level
        if backlog > BACKLOG_HIGH and backlog >= self._last_backlog:
            level = min(SHED_MAX, 1024 - (1024 - level) * 7 // 10)  # keep 30% less
        elif backlog < BACKLOG_LOW and level:
            level = max(0, level - SHED_STEP_DOWN)
        self._last_backlog = backlog
        if level != self._shed_level:
            self._set_shed(level)

    def _set_shed(self, level: int) -> None:
        self._shed_level = level
        try:
            self._control[ct.c_int(0)] = ct.c_uint32(level)
        except Exception as e:  # noqa: BLE001 - the map is gone at close
            log.debug("setting the shed level failed: %s", e)

    def backlog(self) -> int:
        """Records copied out of the ring buffer and not parsed yet."""
        return self._drained - self._parsed

    def poll(self, interval: float = DRAIN_INTERVAL) -> list:
        """The events decoded since the last call, at most about MAX_BATCH (waits
        ``interval`` when there are none)."""
        if self._reader is None:
            self._drain_once()
        q = self.queue
        if not q:
            time.sleep(interval)
            if self._reader is None:
                self._drain_once()
        out: list = []
        if self._late:  # connects that came before their address was flagged
            out, self._late = self._late, []
        n = 0
        while q and n < MAX_BATCH:
            chunk, offs = q.popleft()
            self._parse(chunk, offs, out)
            n += len(offs)
            self._parsed += len(offs)
        if self.tls is not None:  # DoH/DoT messages read from libssl (and held copies due)
            self.tls.parse_queued(out, self._owner, self.mono_to_wall)
        now = time.monotonic()
        if now >= self._tcp_next:  # holes on quiet streams given up, idle streams forgotten
            self._tcp_next = now + 1.0
            for key, ts, m in self.tcp.expire(time.time()):
                src, sport, dst, dport, fam = key
                ev = self._message(ts, "tcp", fam, src, sport, dst, dport, m, None, 0,
                                   ("tcp", src, sport, dst, dport, m))
                if ev is not None:
                    out.append(ev)
        if now - self._pinfo_t > PROC_TTL:
            self._pinfo_t = now
            self._pinfo.clear()
            if len(self._addr4) + len(self._addr6) > 65_536:
                self._addr4.clear()
                self._addr6.clear()
        if now >= self._ov_next:
            f = self.overload_finding()
            if f is not None and self.on_overload is not None:
                self.on_overload(f)
        return out

    def _parse(self, chunk: bytes, offs: list[int], out: list) -> None:
        """Records -> events: the per-message hot path."""
        hot = _HOT.unpack_from
        m2w = self.mono_to_wall
        pinfo = self._pinfo
        a4, a6 = self._addr4, self._addr6
        ntop = socket.inet_ntop
        st = self._stats
        packets = msgs = trunc = dups = perr = 0
        dup_cur, dup_prev = self._dup_cur, self._dup_prev
        append = out.append
        for off in offs:
            (rlen, ts_ns, ln, caplen, direction, kind, seq, tflags, fam, proto, lo,
             saddr, daddr, sport, dport) = hot(chunk, off)
            if (rlen & 0x3FFFFFFF) != HDR_SIZE + caplen:
                raise DetectorError("bpf/dns_event.h and detector/capture/live.py disagree on struct "
                                    f"dns_event (record of {rlen & 0x3FFFFFFF} bytes, caplen {caplen})",
                                    errors.BPF_REJECTED)
            rec = off + RB_HDR
            ts = ts_ns / 1e9 + m2w
            okey = chunk[rec + OWNER_OFF:rec + OWNER_END]
            proc = pinfo.get(okey, False)
            if proc is False:
                proc = self._process(okey)
            if fam == 4:
                dst = a4.get(daddr)
                if dst is None:
                    dst = a4[daddr] = ntop(socket.AF_INET, daddr[:4])
            else:
                dst = a6.get(daddr)
                if dst is None:
                    dst = a6[daddr] = ntop(socket.AF_INET6, daddr)
            if kind >= KIND_POLICY_AUDIT:  # bpf/dns_enforce.c: outside the resolver policy
                action = "refused" if kind == KIND_POLICY_REFUSED else "audit"
                st[f"policy_{action}"] = st.get(f"policy_{action}", 0) + 1
                append(ConnEvent(ts, "tcp" if proto == 6 else "udp", fam, "", 0, dst, dport, proc, action))
                continue
            if kind != KIND_PACKET:
                st["connects" if kind == KIND_CONNECT else "flagged_connects"] += 1
                append(ConnEvent(ts, "tcp" if proto == 6 else "udp", fam, "", 0, dst, dport, proc))
                continue
            packets += 1
            if fam == 4:
                src = a4.get(saddr)
                if src is None:
                    src = a4[saddr] = ntop(socket.AF_INET, saddr[:4])
            else:
                src = a6.get(saddr)
                if src is None:
                    src = a6[saddr] = ntop(socket.AF_INET6, saddr)
            if caplen < ln:
                trunc += 1
            data = rec + HDR_SIZE
            if proto != 17:
                payload = chunk[data:data + caplen]
                # a copy cut short (caplen < ln) gives its message as far as it goes
                for m in self.tcp.segment((src, sport, dst, dport, fam), seq, tflags, payload, ts,
                                          ln - caplen if ln > caplen else 0):
                    ev = self._message(ts, "tcp", fam, src, sport, dst, dport, m, proc, direction,
                                       ("tcp", src, sport, dst, dport, m))
                    if ev is not None:
                        append(ev)
                continue
            # UDP, inline. On loopback the kernel keeps one side of each packet; elsewhere
            # a message's identity (addresses, ports, bytes) finds its second copy.
            if lo:
                try:
                    ev = decode(chunk[data:data + caplen], ts, "udp", fam, src, sport, dst, dport)
                except DnsParseError:
                    perr += 1
                    continue
                msgs += 1
                ev.process = proc
                if not ev.flags & 0x8000 and ev.questions:
                    self._link(ev)
                append(ev)
                continue
            if ts - self._dup_t > DUP_WINDOW:
                self._dup_t = ts
                self._dup_prev = dup_prev = dup_cur
                self._dup_cur = dup_cur = {}
            key = chunk[rec + KEY_OFF:data + caplen]
            seen = dup_cur.get(key) or dup_prev.get(key)
            if seen is not None and ts - seen[0] <= DUP_WINDOW:
                dups += 1
                self._copy_seen(seen[1], proc, direction)
                continue
            try:
                ev = decode(chunk[data:data + caplen], ts, "udp", fam, src, sport, dst, dport)
            except DnsParseError:
                perr += 1
                continue
            dup_cur[key] = (ts, ev)
            msgs += 1
            ev.process = proc
            if not ev.flags & 0x8000 and ev.questions:
                self._link(ev)
            append(ev)
        st["packets"] += packets
        st["dns_messages"] += msgs
        st["truncated_copies"] += trunc
        st["duplicate_copies"] += dups
        st["parse_errors"] += perr

    def _message(self, ts, transport, ipv, src, sport, dst, dport, payload, proc, direction, key):
        """One reassembled (TCP) message: the same steps as the inline UDP path."""
        if ts - self._dup_t > DUP_WINDOW:
            self._dup_t = ts
            self._dup_prev, self._dup_cur = self._dup_cur, {}
        seen = self._dup_cur.get(key) or self._dup_prev.get(key)
        if seen is not None and ts - seen[0] <= DUP_WINDOW:
            self._stats["duplicate_copies"] += 1
            self._copy_seen(seen[1], proc, direction)
            return None
        try:
            ev: DnsEvent = decode(payload, ts, transport, ipv, src, sport, dst, dport)
        except DnsParseError:
            self._stats["parse_errors"] += 1
            return None
        self._dup_cur[key] = (ts, ev)
        self._stats["dns_messages"] += 1
        ev.process = proc
        if not ev.qr and ev.questions:
            self._link(ev)
        return ev

    @staticmethod
    def _copy_seen(first: DnsEvent, proc, direction) -> None:
        # A message between two network namespaces of this host (a pod and a node-local
        # resolver, a container and the host) passes two sockets: the sender's egress and
        # the receiver's ingress. Report it once, with the client's process: the sender
        # of a query, the receiver of a response.
        client_side = (direction == DIR_INGRESS) if first.qr else (direction == DIR_EGRESS)
        if proc is not None and (first.process is None or client_side):
            first.process = proc

    def _link(self, ev: DnsEvent) -> None:
        """Stub link: an application asks a local stub (127.0.0.53, dnsmasq, unbound on
        loopback), the stub asks upstream. Remember application queries to loopback
        servers for STUB_WINDOW seconds; an upstream query for the same name and type
        from another process gets ``cause`` = the application, so an alert on the
        upstream query names the application behind it."""
        q = ev.questions[0]
        key = (q.name.lower(), q.qtype)
        p = ev.process
        ts = ev.ts
        if ts - self._links_t > STUB_WINDOW or len(self._links_cur) > 65_536:
            self._links_t = ts
            self._links_prev, self._links_cur = self._links_cur, {}
        dst = ev.dst_ip
        if dst.startswith("127.") or dst == "::1":
            if p is not None:
                self._links_cur[key] = (ts, p)
            return
        hit = self._links_cur.get(key) or self._links_prev.get(key)
        if hit is not None and ts - hit[0] <= STUB_WINDOW and (p is None or p.pid != hit[1].pid):
            a = hit[1]
            ev.cause = {"pid": a.pid, "comm": a.comm, "exe": a.exe, "uid": a.uid,
                        "container_id": a.container_id}
            self._stats["stub_linked"] += 1

    def _owner(self, okey: bytes) -> ProcessInfo | None:
        """struct owner bytes -> ProcessInfo, from the cache when there."""
        p = self._pinfo.get(okey, False)
        return self._process(okey) if p is False else p

    def _process(self, okey: bytes) -> ProcessInfo | None:
        """struct owner bytes -> ProcessInfo, cached (process name, exe, container and pod
        from /proc and the kubelet's logs: detector/capture/proc.py)."""
        pid, tid, uid, gid, cg, comm = struct.unpack("<IIIIQ16s", okey)
        if not pid:
            p = None
        else:
            d = self.proc.lookup(pid)
            p = ProcessInfo(pid, tid, comm.split(b"\0", 1)[0].decode("utf-8", "replace"), d.exe, uid, gid,
                            cg, d.container_id, name=d.name, container_name=d.container_name,
                            pod_name=d.pod_name, pod_namespace=d.pod_namespace, pod_uid=d.pod_uid)
        self._pinfo[okey] = p
        return p

    # --- flagged addresses ------------------------------------------------------
    def watch_address(self, ip: str, since: float | None = None) -> None:
        """Report connects to ``ip`` (a flagged name resolved to it): bpf/dns_sock.c
        then emits a ConnEvent for each socket that connects or sends to it.

        The answer crossed the kernel some milliseconds before this call, and a
        client connects at once: so the kernel's last connect() to ``ip``
        (recent_connects) is read after the address is in the map, and when it
        came at or after ``since`` (the answer's time; default LOOKBACK seconds
        ago) it is handed over by the next :meth:`poll` as a ConnEvent."""
        key = _addr_key(ip)
        if key is None:
            return
        n = self._flagged.get(key, 0)
        self._flagged[key] = n + 1
        if n:
            return
        try:
            tbl = self.b["flagged"]
            tbl[_ct_key(tbl, key)] = ct.c_uint8(1)
            rc = self.b["recent_connects"]
            r = rc.get(_ct_key(rc, key))
        except Exception as e:  # noqa: BLE001 - a full map, or the maps gone at close
            log.debug("flagging %s failed: %s", ip, e)
            return
        if r is None:
            return
        raw = ct.string_at(ct.addressof(r), ct.sizeof(r))
        ts_ns, port, proto, fam = struct.unpack_from("<QHBB", raw, 40)
        ts = ts_ns / 1e9 + self.mono_to_wall
        if ts < (time.time() - LOOKBACK if since is None else since - 0.001):
            return  # a connect from before the name was resolved: not this answer's
        proc = self._process(raw[:40])
        self._stats["flagged_connects"] += 1
        self._late.append(ConnEvent(ts, "tcp" if proto == 6 else "udp", fam, "", 0, ip, port, proc))

    def unwatch_address(self, ip: str) -> None:
        """The watcher that flagged ``ip`` forgot it (its table was full)."""
        key = _addr_key(ip)
        n = self._flagged.get(key, 0) if key is not None else 0
        if n > 1:
            self._flagged[key] = n - 1
            return
        if not n:
            return
        del self._flagged[key]
        try:
            tbl = self.b["flagged"]
            del tbl[_ct_key(tbl, key)]
        except Exception as e:  # noqa: BLE001
            log.debug("unflagging %s failed: %s", ip, e)

    # --- resolver policy (bpf/dns_enforce.c) --------------------------------------
    def _attach_policy(self, policy) -> None:
        """Fill bpf/dns_enforce.c's maps from ``policy`` (a KernelPolicy), then attach
        its four programs to the cgroup v2 root through BPF links (capture/bpflink.py):
        unlike BCC's attachments they go when this process ends, even on SIGKILL, so a
        dead sensor never keeps refusing DNS. Maps first: nothing is judged on an
        empty policy."""
        from bcc import BPFAttachType as at

        from detector.capture.bpflink import BpfLinkError, link_cgroup

        b = self.b
        try:
            ports = b["enf_ports"]
            for p, bits in policy.ports.items():
                ports[ct.c_uint16(p)] = ct.c_uint8(bits)
            doh = b["enf_doh"]
            for ip in policy.doh:
                key = _addr_key(ip)
                if key is not None:
                    doh[_ct_key(doh, key)] = ct.c_uint8(1)
            tri = b["enf_approved"]
            for scope, net in policy.approved:
                k = tri.Key()
                addr = (net.network_address.packed + b"\0" * 12)[:16]
                raw = struct.pack("=IQ4s16s", 96 + net.prefixlen, scope, bytes([net.version, 0, 0, 0]), addr)
                ct.memmove(ct.addressof(k), raw, len(raw))
                tri[k] = ct.c_uint8(1)
            cgs = b["enf_cgroups"]
            for cg, mode in policy.cgroups.items():
                cgs[ct.c_uint64(cg)] = ct.c_uint8(1 if mode == "exempt" else 2)
        except Exception as e:  # noqa: BLE001 - a map too small for the policy
            self.close()
            raise DetectorError(f"loading the resolver policy into the kernel failed: {_one_line(e)}",
                                errors.BPF_REJECTED) from None
        progs = (("enf_connect4", at.CGROUP_INET4_CONNECT), ("enf_connect6", at.CGROUP_INET6_CONNECT),
                 ("enf_sendmsg4", at.CGROUP_UDP4_SENDMSG), ("enf_sendmsg6", at.CGROUP_UDP6_SENDMSG))
        try:
            for name, atype in progs:
                fn = b.load_func(name, self.BPF.CGROUP_SOCK_ADDR, attach_type=atype)
                self.policy_links.append(link_cgroup(fn.fd, self.cg_fd, atype))
        except (BpfLinkError, Exception) as e:  # noqa: BLE001 - verifier or link refused
            self.close()
            raise DetectorError(f"attaching the resolver policy failed: {_one_line(e)}", errors.BPF_REJECTED,
                                "BPF links on cgroups need Linux 5.7 or later") from None
        self.policy_mode = policy.mode
        log.info("resolver policy (%s): %d approved networks, %d DoH addresses, %d cgroups",
                 policy.mode, len(policy.approved), len(policy.doh), len(policy.cgroups))

    def policy_counters(self) -> dict[str, int]:
        """bpf/dns_enforce.c's counters, summed: destinations judged against the
        approved resolvers, and those outside them (each refusal or would-be refusal,
        also the ones not reported again for the same socket); {} without a policy."""
        if self.policy_mode is None:
            return {}
        try:
            c = self.b["enf_counters"]
            return {"policy_checked": int(c.sum(ct.c_int(0)).value),
                    "policy_outside": int(c.sum(ct.c_int(1)).value),
                    "policy_lost": int(c.sum(ct.c_int(2)).value)}
        except Exception:  # noqa: BLE001 - not loaded, or gone at close
            return {}

    # --- overload ---------------------------------------------------------------
    def overload_finding(self, now: float | None = None) -> Finding | None:
        """A ``sensor-overload`` finding when messages were shed (sampled out in the
        kernel, dropped from the backlog, lost in a full ring buffer) since the last
        one; None otherwise. At most one per OVERLOAD_EVERY seconds."""
        mono = time.monotonic()
        if mono < self._ov_next:
            return None
        c = self._refresh_stats()
        cur = (c[C_SAMPLED], self._shed_backlog, c[C_LOST])
        d_sampled, d_backlog, d_lost = (x - y for x, y in zip(cur, self._ov_last))
        now = time.time() if now is None else now
        if not (d_sampled or d_backlog or d_lost):
            self._ov_t = now
            self._ov_next = mono + 1.0
            return None
        window = max(now - self._ov_t, 0.001)
        self._ov_last = cur
        self._ov_t = now
        self._ov_next = mono + OVERLOAD_EVERY
        total = sum(cur)
        shed = d_sampled + d_backlog + d_lost
        sent = self._stats["packets"]
        revise = total >= 2 * self._ov_reported
        if revise:
            self._ov_reported = total
        keep = (1024 - self._shed_level) / 1024
        parts = [f"{d_sampled:,} sampled out in the kernel"] if d_sampled else []
        if d_backlog:
            parts.append(f"{d_backlog:,} dropped from a full backlog")
        if d_lost:
            parts.append(f"{d_lost:,} lost in a full ring buffer")
        reason = (f"sensor overloaded: {shed:,} DNS packets not analysed in the last {window:.1f} s "
                  f"({', '.join(parts)}); keeping {keep:.0%} of UDP exchanges now; "
                  f"{total:,} shed since start; detection works on a sample")
        return Finding(
            rule_id=OVERLOAD_RULE, title="DNS sensor overloaded: traffic shed",
            score=0.5, severity="high" if d_lost or d_backlog else "medium",
            technique_id="T1562.006", technique_name="Impair Defenses: Indicator Blocking",
            entity=self.host, domain="", key=OVERLOAD_RULE, category="health", ts=now, revise=revise,
            features={"window_s": round(window, 3), "sampled_out": d_sampled, "shed_backlog": d_backlog,
                      "lost_bpf_events": d_lost, "shed_total": total, "keep_fraction": round(keep, 4),
                      "packets_analysed": sent},
            reason=reason)

    # --- teardown ---------------------------------------------------------------
    def close(self) -> None:
        while getattr(self, "policy_links", None):  # detaches the resolver policy first
            try:
                os.close(self.policy_links.pop())
            except OSError:
                pass
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
            if self._reader is not None and self._reader is not threading.current_thread():
                self._reader.join(timeout=1.5)
        if getattr(self, "tls", None) is not None:
            self.tls.close()  # detaches the uprobes
        while self.attached:
            fn, atype = self.attached.pop()
            try:
                self.BPF.detach_func(fn, self.cg_fd, atype)
            except Exception as e:  # noqa: BLE001 - detach the rest anyway
                log.warning("detaching %s failed: %s", fn.name, e)
        if self.cg_fd is not None:
            try:
                os.close(self.cg_fd)
            except OSError:
                pass
            self.cg_fd = None
        if getattr(self, "_closed_counters", 1) is None:
            self._ov_next = 0.0
            try:
                f = self.overload_finding()  # what was shed since the last report
                if f is not None and self.on_overload is not None:
                    self.on_overload(f)
            except Exception as e:  # noqa: BLE001 - closing must go on
                log.warning("sensor-overload report failed: %s", e)
            try:
                self._refresh_stats()
                self._closed_counters = self.counters()
            except Exception:  # noqa: BLE001
                self._closed_counters = [0] * C_MAX
            left = sum(len(o) for _, o in self.queue)
            self.queue.clear()
            self._stats["discarded_at_stop"] += left
        if self.ring is not None and (self._reader is None or not self._reader.is_alive()):
            self.ring.close()
            self.ring = None

    def __enter__(self) -> "LiveCapture":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _addr_key(ip: str) -> bytes | None:
    """struct addr_key (bpf/dns_event.h): IPv4 (or IPv4-mapped IPv6) in the first
    4 bytes, the rest 0; None for what is no address."""
    try:
        if ":" in ip:
            b = socket.inet_pton(socket.AF_INET6, ip)
            if b[:12] == b"\0" * 10 + b"\xff\xff":
                return b[12:] + b"\0" * 12
            return b
        return socket.inet_pton(socket.AF_INET, ip) + b"\0" * 12
    except (OSError, ValueError):
        return None


def _ct_key(tbl, key: bytes):
    k = tbl.Key()
    ct.memmove(ct.addressof(k), key, 16)
    return k


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:500]
