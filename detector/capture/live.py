"""Live capture: load bpf/ with BCC, attach to the cgroup v2 root, read DNS events.

    with LiveCapture(ports={53}) as cap:
        for ev in cap.poll():          # DnsEvent (with .process) or ConnEvent
            ...

bpf/dns_sock.c records the owner of every socket that talks to a DNS port
(cgroup sock_addr hooks) and bpf/dns_skb.c copies every DNS packet of the
host, with that owner, into a ring buffer (cgroup_skb hooks). This module
decodes the payloads with the same decoder as replay (detector.dns.wire),
reassembles DNS over TCP (detector.capture.tcpstream), adds exe and container
id from /proc, and yields typed events. Programs are detached on close, on
SIGTERM and at exit: cgroup attachments outlive the process that made them.

Errors are :class:`~detector.errors.DetectorError` with their own exit codes:
not root (10), BCC missing (11), kernel headers missing (12), a program
refused by the kernel (13).
"""

from __future__ import annotations

import atexit
import ctypes as ct
import logging
import os
import socket
import time
import threading
from collections import OrderedDict, deque
from collections.abc import Iterator
from pathlib import Path

from detector import errors
from detector.capture.proc import ProcCache
from detector.capture.tcpstream import TcpDnsReassembler
from detector.dns.wire import DnsParseError, decode
from detector.errors import DetectorError
from detector.events import ConnEvent, DnsEvent, ProcessInfo
from detector.paths import REPO

log = logging.getLogger(__name__)

BPF_DIR = REPO / "bpf"
SOURCES = ("dns_sock.c", "dns_skb.c")
BPF_F_ALLOW_MULTI = 2
PORT_DNS, PORT_CONN = 1, 2
CONN_PORTS = (853,)
DRAIN_INTERVAL = 0.02  # seconds between ring buffer drains
STUB_WINDOW = 2.0  # seconds between an application's query to a stub and the stub's upstream query
KIND_PACKET, KIND_CONNECT = 0, 1
DIR_EGRESS, DIR_INGRESS = 0, 1
DUP_WINDOW = 0.25  # seconds: a message seen again this soon, same addresses and bytes, is a copy


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
    """True when this host can run live capture: root, BCC, kernel headers, cgroup v2."""
    if os.geteuid() != 0 or not headers_present() or cgroup2_root() is None:
        return False
    try:
        import bcc  # noqa: F401
    except ImportError:
        return False
    return True


def check_requirements() -> None:
    """Raise the DetectorError that says why live capture cannot run here."""
    if os.geteuid() != 0:
        raise DetectorError("live capture needs root (loading eBPF programs and attaching them "
                            "to the cgroup v2 root)", errors.NOT_ROOT,
                            "run as root, or replay a capture: detector replay pcap FILE")
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


class LiveCapture:
    """The loaded and attached BPF programs and their ring buffer reader."""

    def __init__(self, ports: frozenset[int] | set[int] = frozenset({53}),
                 conn_ports: tuple[int, ...] = CONN_PORTS) -> None:
        check_requirements()
        from bcc import BPF, BPFAttachType

        self.BPF = BPF
        text = "".join((BPF_DIR / s).read_text() for s in SOURCES)
        try:
            self.b = BPF(text=text, cflags=[f"-I{BPF_DIR}", "-Wno-unused-value"])
        except Exception as e:  # compile error: headers or BCC broken
            raise DetectorError(f"BPF programs in {BPF_DIR} did not compile: {e}", errors.NO_HEADERS,
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
                raise DetectorError(f"the kernel refused BPF program {name}: {e}", errors.BPF_REJECTED,
                                    "the verifier log is printed above; run with -vv and report it "
                                    "with `uname -r`") from None
            self.fns.append((fn, atype))
        tbl = self.b["ports"]
        for p in ports:
            tbl[ct.c_uint16(p)] = ct.c_uint8(PORT_DNS)
        for p in conn_ports:
            tbl[ct.c_uint16(p)] = ct.c_uint8(PORT_CONN | (PORT_DNS if p in ports else 0))
        self.cg_fd = os.open(cgroup2_root(), os.O_RDONLY)
        self.attached: list = []
        atexit.register(self.close)
        try:
            for fn, atype in self.fns:
                BPF.attach_func(fn, self.cg_fd, atype, BPF_F_ALLOW_MULTI)
                self.attached.append((fn, atype))
        except Exception as e:
            self.close()
            raise DetectorError(f"attaching to the cgroup v2 root failed: {e}", errors.BPF_REJECTED,
                                "is another tool holding an exclusive cgroup attachment?") from None
        self.mono_to_wall = time.time() - time.monotonic()
        self.proc = ProcCache()
        self.tcp = TcpDnsReassembler()
        self.queue: deque = deque()
        self._reader: threading.Thread | None = None
        self._stop = threading.Event()
        self.stats = {"packets": 0, "dns_messages": 0, "parse_errors": 0, "truncated_copies": 0,
                      "connects": 0, "stub_linked": 0, "duplicate_copies": 0}
        # the last DUP_WINDOW seconds of messages: (transport, addresses, bytes) -> (ts, event)
        self.recent: OrderedDict[tuple, tuple[float, DnsEvent]] = OrderedDict()
        self.links: OrderedDict[tuple[str, int], tuple[float, ProcessInfo]] = OrderedDict()
        self.b["events"].open_ring_buffer(self._on_event)

    # --- reading ----------------------------------------------------------------
    @property
    def lost(self) -> int:
        return int(self.b["lost"][0].value)

    def start(self) -> None:
        """Read the ring buffer in a thread of its own, so a slow detection step in the
        caller never lets the kernel side overflow; :meth:`poll` hands over the events."""
        if self._reader is None:
            self._reader = threading.Thread(target=self._read_loop, name="bpf-reader", daemon=True)
            self._reader.start()

    def _read_loop(self) -> None:
        consume = self.b.ring_buffer_consume
        while not self._stop.is_set():
            consume()  # the kernel side does not wake us (BPF_RB_NO_WAKEUP): drain every 20 ms
            self._stop.wait(DRAIN_INTERVAL)

    def poll(self, interval: float = DRAIN_INTERVAL) -> list:
        """The events decoded since the last call (waits ``interval`` when there are none)."""
        if self._reader is None:
            self.b.ring_buffer_consume()
        q = self.queue
        if not q:
            time.sleep(interval)
            if self._reader is None:
                self.b.ring_buffer_consume()
        out = []
        pop = q.popleft
        for _ in range(len(q)):
            out.append(pop())
        return out

    def events(self, duration: float | None = None) -> Iterator:
        end = None if duration is None else time.monotonic() + duration
        while end is None or time.monotonic() < end:
            yield from self.poll()

    def _on_event(self, ctx, data, size) -> None:
        e = ct.cast(data, ct.POINTER(_Event)).contents
        ts = e.ts_ns / 1e9 + self.mono_to_wall
        fam = socket.AF_INET if e.family == 4 else socket.AF_INET6
        alen = 4 if e.family == 4 else 16
        dst = socket.inet_ntop(fam, bytes(e.daddr[:alen]))
        proc = self._process(e)
        if e.kind == KIND_CONNECT:
            self.stats["connects"] += 1
            self.queue.append(ConnEvent(ts, "tcp" if e.proto == 6 else "udp", e.family, "", 0,
                                          dst, e.dport, proc))
            return
        self.stats["packets"] += 1
        src = socket.inet_ntop(fam, bytes(e.saddr[:alen]))
        n = e.caplen
        if n < e.len:
            self.stats["truncated_copies"] += 1
        payload = ct.string_at(ct.addressof(e.data), n)
        if e.proto == 17:
            self._dns(ts, "udp", e.family, src, e.sport, dst, e.dport, payload, proc, e.dir)
        else:
            for m in self.tcp.segment((src, e.sport, dst, e.dport, e.family), e.seq, e.tcp_flags,
                                      payload, ts):
                self._dns(ts, "tcp", e.family, src, e.sport, dst, e.dport, m, proc, e.dir)

    def _dns(self, ts, transport, ipv, src, sport, dst, dport, payload, proc, direction=DIR_EGRESS) -> None:
        # A message between two network namespaces of this host (a pod and a node-local
        # resolver, a container and the host) passes two sockets: the sender's egress and
        # the receiver's ingress. Report it once, with the client's process: the sender
        # of a query, the receiver of a response.
        key = (transport, src, sport, dst, dport, payload)
        recent = self.recent
        while recent:
            k0, (t0, _) = next(iter(recent.items()))
            if ts - t0 <= DUP_WINDOW and len(recent) < 65536:
                break
            del recent[k0]
        seen = recent.get(key)
        if seen is not None:
            self.stats["duplicate_copies"] += 1
            first = seen[1]
            client_side = (direction == DIR_INGRESS) if first.qr else (direction == DIR_EGRESS)
            if proc is not None and (first.process is None or client_side):
                first.process = proc
            return
        try:
            ev: DnsEvent = decode(payload, ts, transport, ipv, src, sport, dst, dport)
        except DnsParseError:
            self.stats["parse_errors"] += 1
            return
        recent[key] = (ts, ev)
        self.stats["dns_messages"] += 1
        ev.process = proc
        if not ev.qr and ev.questions:
            self._link(ev)
        self.queue.append(ev)

    def _link(self, ev: DnsEvent) -> None:
        """Stub link: an application asks a local stub (127.0.0.53, dnsmasq, unbound on
        loopback), the stub asks upstream. Remember application queries to loopback
        servers for STUB_WINDOW seconds; an upstream query for the same name and type
        from another process gets ``cause`` = the application, so an alert on the
        upstream query names the application behind it."""
        q = ev.questions[0]
        key = (q.name.lower(), q.qtype)
        p = ev.process
        if _is_loopback(ev.dst_ip):
            if p is not None:
                links = self.links
                links[key] = (ev.ts, p)
                links.move_to_end(key)
                if len(links) > 4096:
                    links.popitem(last=False)
            return
        hit = self.links.get(key)
        if hit is not None and ev.ts - hit[0] <= STUB_WINDOW and (p is None or p.pid != hit[1].pid):
            a = hit[1]
            ev.cause = {"pid": a.pid, "comm": a.comm, "exe": a.exe, "uid": a.uid,
                        "container_id": a.container_id}
            self.stats["stub_linked"] += 1

    def _process(self, e) -> ProcessInfo | None:
        if not e.pid:
            return None
        exe, container = self.proc.lookup(e.pid)
        return ProcessInfo(e.pid, e.tid, e.comm.decode("utf-8", "replace"), exe, e.uid, e.gid,
                           e.cgroup_id, container)

    # --- teardown ---------------------------------------------------------------
    def close(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
            if self._reader is not None and self._reader is not threading.current_thread():
                self._reader.join(timeout=2)
        while self.attached:
            fn, atype = self.attached.pop()
            try:
                self.BPF.detach_func(fn, self.cg_fd, atype)
            except Exception as e:  # noqa: BLE001 - detach the rest anyway
                log.warning("detaching %s failed: %s", fn.name, e)
        if getattr(self, "cg_fd", None) is not None:
            try:
                os.close(self.cg_fd)
            except OSError:
                pass
            self.cg_fd = None

    def __enter__(self) -> "LiveCapture":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip == "::1"


class _Event(ct.Structure):
    """Mirror of struct dns_event in bpf/dns_event.h (field by field)."""

    _fields_ = [
        ("ts_ns", ct.c_uint64), ("cookie", ct.c_uint64), ("cgroup_id", ct.c_uint64),
        ("pid", ct.c_uint32), ("tid", ct.c_uint32), ("uid", ct.c_uint32), ("gid", ct.c_uint32),
        ("comm", ct.c_char * 16), ("saddr", ct.c_uint8 * 16), ("daddr", ct.c_uint8 * 16),
        ("sport", ct.c_uint16), ("dport", ct.c_uint16), ("family", ct.c_uint8), ("proto", ct.c_uint8),
        ("dir", ct.c_uint8), ("kind", ct.c_uint8), ("seq", ct.c_uint32), ("tcp_flags", ct.c_uint8),
        ("pad", ct.c_uint8 * 3), ("len", ct.c_uint32), ("caplen", ct.c_uint32),
        ("data", ct.c_uint8 * 2048),
    ]
