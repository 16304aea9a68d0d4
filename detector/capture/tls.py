"""DoH and DoT in clear text: uprobes on OpenSSL (bpf/dns_tls.c), parsed here.

    tls = TlsCapture()                  # compiles and attaches the uprobes (root)
    tls.drain()                         # the drain thread: copy records out of the ring
    tls.parse_queued(out, process)      # poll's thread: DnsEvents appended to out

bpf/dns_tls.c copies what an application writes to and reads from an OpenSSL
connection (SSL_write, SSL_read and their _ex forms, in the system
libssl.so.3) with the calling thread's identity. :class:`TlsStreams` follows
each connection (pid, SSL pointer) as two byte streams and takes out the DNS
messages they carry:

* HTTP/1.1 DoH (RFC 8484): a POST whose content-type is
  application/dns-message (the body), a GET with ``?dns=`` (base64url), and a
  response whose content-type is application/dns-message (Content-Length or
  chunked body);
* HTTP/2 DoH: after the connection preface, the frames of both directions;
  the DATA payload of each stream, when the stream ends, is taken when it looks
  like a DNS message (a sane 12-byte header: opcode QUERY, NOTIFY or UPDATE,
  1..4 questions). HEADERS are not decoded (HPACK): the DATA says enough;
* DoT (RFC 7858): a 2-byte length prefix and a DNS message, when the
  connection's first call is one (or the prefix alone): whatever the port,
  since the socket's port is not known at the first call.

Each connection gets a verdict in the kernel as soon as user space knows: DNS
(copy every call) or not DNS (copy nothing); until then the kernel copies the
first 16 calls. The socket's addresses come from /proc/<pid>/fd and
/proc/<pid>/net/tcp{,6} when the application called SSL_set_fd (Python's ssl
module, most C clients); curl and others that plug their own BIO into OpenSSL
do not, and their events carry no addresses ("" and port 0).

Events have transport "tcp" (network.transport stays a transport) and
``protocol`` "doh" or "dot", and keep the process as live capture attaches it.

Not reached: TLS linked statically (browsers' BoringSSL, Go's crypto/tls,
rustls), other libraries (GnuTLS, NSS), a libssl at another path (a
container's own), applications that read and write through OpenSSL's SSL BIO
(BIO_f_ssl: `openssl s_server`, some C servers; it calls OpenSSL's internal
functions, not SSL_read/SSL_write), connections opened before the sensor
started (their first call seen is mid-stream), and HTTP/3 (DoH over QUIC).
"""

from __future__ import annotations

import base64
import binascii
import ctypes as ct
import logging
import os
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from detector import errors
from detector.dns.wire import DnsParseError, decode
from detector.errors import DetectorError
from detector.events import DnsEvent, ProcessInfo

log = logging.getLogger(__name__)

TLS_WRITE, TLS_READ, TLS_FREE = 0, 1, 2  # enum tls_dir
V_NONE, V_DNS, V_OTHER = 0, 1, 2  # enum tls_verdict
T_CALLS, T_SENT, T_LOST, T_SKIPPED, T_TRUNCATED, T_REJECTED, T_MAX = range(7)  # enum tls_counter
TLS_MAX_DATA = 16384
MAX_BUFFER = 65_536  # bytes held per connection direction before it is given up
MAX_CONNS = 16_384  # connections followed; then the oldest are forgotten
LIBSSL_PATHS = ("/usr/lib/x86_64-linux-gnu/libssl.so.3", "/lib/x86_64-linux-gnu/libssl.so.3",
                "/usr/lib/aarch64-linux-gnu/libssl.so.3", "/usr/lib64/libssl.so.3", "/usr/lib/libssl.so.3")
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_METHODS = (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"OPTIONS ", b"DELETE ", b"PATCH ", b"CONNECT ")
DNS_CT = b"application/dns-message"

# struct tls_event (bpf/dns_tls.c), the fixed part; the ring record header (u32 len,
# u32 page offset) first
TLS_EVENT = struct.Struct("<QQ40sIHBBiIQ")
assert TLS_EVENT.size == 80
_REC = struct.Struct("<I4x" + TLS_EVENT.format[1:])
RB_HDR = 8
_HDR = struct.Struct("!HHHHHH")

PROBES = (  # (symbol, entry program, return program)
    ("SSL_write", "tls_write_entry", "tls_write_return"),
    ("SSL_write_ex", "tls_write_ex_entry", "tls_write_ex_return"),
    ("SSL_read", "tls_read_entry", "tls_read_return"),
    ("SSL_read_ex", "tls_read_ex_entry", "tls_read_ex_return"),
    ("SSL_set_fd", "tls_set_fd", None),
    ("SSL_free", "tls_free", None),
)


def find_libssl() -> str | None:
    """The system's libssl.so.3: ldconfig's cache first, then the usual paths."""
    try:
        import subprocess

        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=5).stdout
        for line in out.splitlines():
            name, _, path = line.strip().partition(" => ")
            if name.startswith("libssl.so.3 (") and os.path.exists(path.strip()):
                return os.path.realpath(path.strip())
    except (OSError, ValueError):
        pass
    for p in LIBSSL_PATHS:
        if os.path.exists(p):
            return os.path.realpath(p)
    return None


def dns_like(msg: bytes | bytearray) -> bool:
    """A sane 12-byte DNS header: opcode QUERY, NOTIFY or UPDATE, Z clear, 1..4
    questions, record counts that a message of this size can hold."""
    if len(msg) < 17:  # header and the shortest question (root, type, class)
        return False
    _, flags, qd, an, ns, ar = _HDR.unpack_from(msg)
    if (flags >> 11) & 0xF not in (0, 4, 5) or flags & 0x40 or (flags & 0xF) > 10:
        return False
    if not 1 <= qd <= 4 or an > 512 or ns > 512 or ar > 512:
        return False
    return 12 + 5 * qd + 11 * (an + ns + ar) <= len(msg)


class _Dir:
    """One direction of a connection: bytes not parsed yet and what is being skipped."""

    __slots__ = ("buf", "skip", "broken", "preface")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.skip = 0  # bytes still to skip (an HTTP body or HTTP/2 frame not of interest)
        self.broken = False  # lost sync (bytes missing inside framing): ignored from here on
        self.preface = False  # the HTTP/2 preface has been seen in this direction


class _Conn:
    __slots__ = ("kind", "dirs", "addr", "dns", "streams", "verdict")

    def __init__(self) -> None:
        self.kind = ""  # "h1" | "h2" | "dot" | "other"
        self.dirs = (_Dir(), _Dir())
        self.addr: tuple | None = None  # (family, local ip, local port, remote ip, remote port)
        self.dns = False  # a DNS message was found
        self.streams: dict[tuple[int, int], bytearray] = {}  # (dir, stream id) -> DATA so far
        self.verdict = V_NONE


class TlsStreams:
    """The byte streams of TLS connections -> DNS messages (no kernel needed).

    :meth:`feed` takes one call's bytes (``missing``: bytes the kernel did not
    copy) and returns ``[(direction, message bytes, protocol)]``, protocol
    "doh" or "dot". ``on_verdict(key, verdict)`` is told when a connection
    turns out to carry DNS (V_DNS) or not (V_OTHER).
    """

    def __init__(self, on_verdict: Callable[[tuple, int], None] | None = None) -> None:
        self.conns: dict[tuple, _Conn] = {}
        self.on_verdict = on_verdict
        self.counters = {"tls_records": 0, "tls_messages": 0, "tls_connections_dns": 0,
                         "tls_connections_other": 0, "tls_lost_sync": 0, "tls_dropped_bytes": 0}

    def conn(self, key: tuple) -> _Conn:
        c = self.conns.get(key)
        if c is None:
            if len(self.conns) >= MAX_CONNS:
                for k in list(self.conns)[:MAX_CONNS // 8]:  # oldest first (insertion order)
                    del self.conns[k]
            c = self.conns[key] = _Conn()
        return c

    def close(self, key: tuple) -> None:
        self.conns.pop(key, None)

    def feed(self, key: tuple, direction: int, data: bytes, missing: int = 0) -> list[tuple[int, bytes, str]]:
        self.counters["tls_records"] += 1
        c = self.conn(key)
        if not c.kind:
            c.kind = self._classify(data)
            if c.kind == "other":
                self._verdict(key, c, V_OTHER)
        if c.kind == "other":
            return []
        d = c.dirs[direction]
        if d.broken:
            return []
        out: list[tuple[int, bytes, str]] = []
        d.buf += data
        if c.kind == "h1":
            self._h1(key, c, direction, d, out)
        elif c.kind == "h2":
            self._h2(c, direction, d, out)
        else:
            self._dot(d, direction, out)
        if missing:  # the kernel copied the call in part: these bytes follow the data
            if d.skip >= missing and not d.buf:
                d.skip -= missing  # inside a body or frame skipped anyway
            elif c.kind == "h1":  # an HTTP/1.1 message starts afresh at a later call
                self.counters["tls_dropped_bytes"] += missing + len(d.buf)
                d.buf.clear()
                d.skip = 0
            else:
                self._lost(d)
        if len(d.buf) > MAX_BUFFER:
            self._lost(d)
        if out:
            self.counters["tls_messages"] += len(out)
            if not c.dns:
                c.dns = True
                self._verdict(key, c, V_DNS)
        return out

    # --- classification -----------------------------------------------------
    @staticmethod
    def _classify(data: bytes) -> str:
        if data.startswith(b"PRI ") and H2_PREFACE.startswith(bytes(data[:24])):
            return "h2"
        if data.startswith(_METHODS) or data.startswith(b"HTTP/1."):
            return "h1"
        n = int.from_bytes(data[:2], "big")
        if len(data) == 2 and n >= 12:  # a length prefix written on its own
            return "dot"
        if len(data) >= 19 and n <= len(data) - 2 and dns_like(data[2:2 + n]):
            return "dot"
        return "other"

    def _verdict(self, key: tuple, c: _Conn, v: int) -> None:
        if c.verdict == v:
            return
        c.verdict = v
        self.counters["tls_connections_dns" if v == V_DNS else "tls_connections_other"] += 1
        if self.on_verdict is not None:
            self.on_verdict(key, v)

    def _lost(self, d: _Dir) -> None:
        self.counters["tls_lost_sync"] += 1
        self.counters["tls_dropped_bytes"] += len(d.buf)
        d.buf = bytearray()
        d.broken = True

    # --- DoT ----------------------------------------------------------------
    @staticmethod
    def _dot(d: _Dir, direction: int, out: list) -> None:
        buf = d.buf
        off = 0
        while len(buf) - off >= 2:
            n = int.from_bytes(buf[off:off + 2], "big")
            if len(buf) - off - 2 < n:
                break
            msg = bytes(buf[off + 2:off + 2 + n])
            off += 2 + n
            if len(msg) >= 12:
                out.append((direction, msg, "dot"))
        del buf[:off]

    # --- HTTP/1.1 -----------------------------------------------------------
    def _h1(self, key: tuple, c: _Conn, direction: int, d: _Dir, out: list) -> None:
        buf = d.buf
        while buf:
            if d.skip:
                n = min(d.skip, len(buf))
                del buf[:n]
                d.skip -= n
                continue
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end])
            lines = head.split(b"\r\n")
            first = lines[0]
            hdrs: dict[bytes, bytes] = {}
            for ln in lines[1:]:
                k, _, v = ln.partition(b":")
                hdrs[k.strip().lower()] = v.strip()
            body_at = end + 4
            ctype = hdrs.get(b"content-type", b"").split(b";")[0].strip().lower()
            chunked = b"chunked" in hdrs.get(b"transfer-encoding", b"").lower()
            try:
                clen = int(hdrs.get(b"content-length", b"0") or 0)
            except ValueError:
                clen = 0
            is_request = not first.startswith(b"HTTP/")
            if is_request and first.startswith(b"GET "):
                msg = _get_param(first)
                if msg is not None:
                    out.append((direction, msg, "doh"))
            if chunked:
                body = _dechunk(buf, body_at)
                if body is None:
                    if len(buf) > MAX_BUFFER:
                        self._lost(d)
                    return  # wait for the rest
                msg, used = body
                del buf[:used]
                if ctype == DNS_CT and len(msg) >= 12:
                    out.append((direction, msg, "doh"))
                continue
            if ctype == DNS_CT and 12 <= clen <= MAX_BUFFER:
                if len(buf) < body_at + clen:
                    return  # the body comes in a later call
                out.append((direction, bytes(buf[body_at:body_at + clen]), "doh"))
                del buf[:body_at + clen]
                continue
            del buf[:body_at]
            d.skip = max(clen, 0)
            if is_request and not c.dns and not out:
                # an HTTP request that is not DoH: this connection is ordinary HTTPS
                c.kind = "other"
                self._verdict(key, c, V_OTHER)
                return

    # --- HTTP/2 -------------------------------------------------------------
    def _h2(self, c: _Conn, direction: int, d: _Dir, out: list) -> None:
        buf = d.buf
        if not d.preface and buf.startswith(H2_PREFACE[:len(buf)]) and buf[:1] == b"P":
            if len(buf) < len(H2_PREFACE):
                return
            del buf[:len(H2_PREFACE)]
            d.preface = True
        off = 0
        while True:
            if d.skip:
                n = min(d.skip, len(buf) - off)
                off += n
                d.skip -= n
                if d.skip:
                    break
            if len(buf) - off < 9:
                break
            length = int.from_bytes(buf[off:off + 3], "big")
            ftype, flags = buf[off + 3], buf[off + 4]
            sid = int.from_bytes(buf[off + 5:off + 9], "big") & 0x7FFFFFFF
            if ftype == 0 and length <= MAX_BUFFER:  # DATA
                if len(buf) - off - 9 < length:
                    break  # the rest of the frame comes in a later call
                p = bytes(buf[off + 9:off + 9 + length])
                off += 9 + length
                if flags & 0x8 and p:  # PADDED
                    pad = p[0]
                    p = p[1:len(p) - pad] if pad < len(p) else b""
                sk = (direction, sid)
                acc = c.streams.get(sk)
                if acc is None:
                    if len(c.streams) > 256:
                        c.streams.clear()
                    acc = c.streams[sk] = bytearray()
                if len(acc) + len(p) <= MAX_BUFFER:
                    acc += p
                if flags & 0x1:  # END_STREAM
                    msg = bytes(c.streams.pop(sk))
                    if dns_like(msg):
                        out.append((direction, msg, "doh"))
                continue
            if ftype == 3:  # RST_STREAM
                c.streams.pop((0, sid), None)
                c.streams.pop((1, sid), None)
            off += 9
            d.skip = length  # every other frame (and a DATA too large for DNS) is skipped
        del buf[:off]


def _get_param(request_line: bytes) -> bytes | None:
    """``GET /dns-query?dns=<base64url> HTTP/1.1`` -> the DNS message."""
    parts = request_line.split(b" ")
    if len(parts) < 2 or b"?" not in parts[1]:
        return None
    for kv in parts[1].split(b"?", 1)[1].split(b"&"):
        if kv.startswith(b"dns="):
            v = kv[4:]
            try:
                msg = base64.urlsafe_b64decode(v + b"=" * (-len(v) % 4))
            except (binascii.Error, ValueError):
                return None
            return msg if len(msg) >= 12 else None
    return None


def _dechunk(buf: bytearray, at: int) -> tuple[bytes, int] | None:
    """A chunked body from ``at``: (body, end offset), None while incomplete."""
    body = bytearray()
    off = at
    while True:
        eol = buf.find(b"\r\n", off)
        if eol < 0:
            return None
        try:
            n = int(bytes(buf[off:eol]).split(b";")[0], 16)
        except ValueError:
            return (bytes(body), len(buf))  # not chunked after all: give up on this body
        if n == 0:
            end = buf.find(b"\r\n\r\n", eol)
            if end < 0:
                return None
            return (bytes(body), end + 4)
        if len(buf) < eol + 2 + n + 2:
            return None
        body += buf[eol + 2:eol + 2 + n]
        off = eol + 2 + n + 2


class BothEnds:
    """A DoH or DoT server on this host that links libssl too: each message is then
    read at both ends, by the client and by the server. Report it once, with the
    client (who wrote the query, who read the response): a client's copy goes
    out at once and is remembered for DUP_WINDOW seconds; a server's copy waits
    that long and is dropped when the client's copy of the same bytes came (a
    client outside OpenSSL's reach leaves the server's copy, then reported)."""

    DUP_WINDOW = 0.25

    def __init__(self) -> None:
        self.recent: dict[bytes, float] = {}  # client copies: bytes -> monotonic time
        self.held: deque[tuple[float, bytes, DnsEvent]] = deque()  # server copies waiting
        self.dropped = 0

    def add(self, ev: DnsEvent, msg: bytes, client: bool, out: list) -> None:
        now = time.monotonic()
        if client:
            if len(self.recent) > 65_536:
                self.recent = {k: t for k, t in self.recent.items() if now - t <= self.DUP_WINDOW}
            self.recent[msg] = now
            held = self.held
            for i, (_, m, _) in enumerate(held):
                if m == msg:
                    del held[i]
                    self.dropped += 1
                    break
            out.append(ev)
            return
        t = self.recent.get(msg)
        if t is not None and now - t <= self.DUP_WINDOW:
            self.dropped += 1
            return
        self.held.append((now + self.DUP_WINDOW, msg, ev))

    def release(self, out: list) -> None:
        """Server copies whose window passed without the client's copy."""
        held = self.held
        now = time.monotonic()
        while held and held[0][0] <= now:
            out.append(held.popleft()[2])


# --- socket addresses ---------------------------------------------------------

def socket_addresses(pid: int, fd: int, root: str = "/") -> tuple | None:
    """(family, local ip, local port, remote ip, remote port) of ``pid``'s socket
    ``fd`` (TCP), from /proc; None when the process or socket is gone."""
    try:
        link = os.readlink(f"{root}proc/{pid}/fd/{fd}")
    except OSError:
        return None
    if not link.startswith("socket:["):
        return None
    inode = link[8:-1]
    for fam, name in ((4, "tcp"), (6, "tcp6")):
        try:
            text = Path(f"{root}proc/{pid}/net/{name}").read_text()
        except OSError:
            continue
        for line in text.splitlines()[1:]:
            f = line.split()
            if len(f) > 9 and f[9] == inode:
                la, lp = _hexaddr(f[1])
                ra, rp = _hexaddr(f[2])
                if fam == 6 and la.startswith("::ffff:") and "." in la:
                    return (4, la[7:], lp, ra[7:], rp)
                return (fam, la, lp, ra, rp)
    return None


def _hexaddr(s: str) -> tuple[str, int]:
    """/proc/net/tcp's ``0100007F:1F90`` -> ("127.0.0.1", 8080) (IPv6: 4 host-order words)."""
    a, _, p = s.partition(":")
    raw = bytes.fromhex(a)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1]), int(p, 16)
    b = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, b), int(p, 16)


# --- the kernel side ----------------------------------------------------------

class TlsCapture:
    """bpf/dns_tls.c loaded and attached to libssl, its ring buffer, the streams.

    Attach before privileges are dropped (perf_event_open needs CAP_PERFMON);
    reading the ring and writing verdicts work after."""

    def __init__(self, lib: str | None = None) -> None:
        from bcc import BPF

        from detector.capture.live import BPF_DIR, RingReader, _one_line

        self.lib = lib or find_libssl()
        if self.lib is None:
            raise DetectorError("--tls: no libssl.so.3 on this host (ldconfig -p, /usr/lib)", errors.BPF_REJECTED,
                                "install libssl3, or run without --tls")
        try:
            self.b = BPF(text=(BPF_DIR / "dns_tls.c").read_text(), cflags=["-Wno-unused-value"])
        except Exception as e:
            raise DetectorError(f"bpf/dns_tls.c did not compile: {_one_line(e)}", errors.NO_HEADERS,
                                "check the kernel headers: /lib/modules/$(uname -r)/build") from None
        try:
            for sym, entry, ret in PROBES:
                self.b.attach_uprobe(name=self.lib, sym=sym, fn_name=entry)
                if ret:
                    self.b.attach_uretprobe(name=self.lib, sym=sym, fn_name=ret)
        except Exception as e:
            self.close()
            raise DetectorError(f"attaching uprobes to {self.lib} failed: {_one_line(e)}",
                                errors.BPF_REJECTED, "run without --tls") from None
        self.ring = RingReader(self.b["tls_events"].map_fd)
        self._verdicts = self.b["tls_verdict"]
        self._counters = self.b["tls_counters"]
        self.queue: deque[tuple[bytes, list[int]]] = deque()
        self.streams = TlsStreams(self._set_verdict)
        self.mono_to_wall = 0.0
        self._addr: dict[tuple, tuple | None] = {}
        self.parse_errors = 0
        self.dedup = BothEnds()
        self._closed_counters: list[int] | None = None

    def drain(self) -> int:
        """Copy the committed records out of the ring (the drain thread)."""
        ring = self.ring
        if ring is None:
            return 0
        chunk, offs = ring.drain()
        if offs:
            self.queue.append((chunk, offs))
        return len(offs)

    def parse_queued(self, out: list, process: Callable[[bytes], ProcessInfo | None], m2w: float) -> None:
        """Records copied so far -> DnsEvents appended to ``out``; ``process(owner
        bytes)`` gives the ProcessInfo (live capture's cache)."""
        q = self.queue
        while q:
            chunk, offs = q.popleft()
            self._parse(chunk, offs, out, process, m2w)
        self.dedup.release(out)

    def _parse(self, chunk, offs, out, process, m2w) -> None:
        rec = _REC.unpack_from
        feed = self.streams.feed
        hdr = TLS_EVENT.size
        for off in offs:
            rlen, ts_ns, ssl, okey, ln, caplen, direction, _verdict, fd, _, conn = rec(chunk, off)
            if (rlen & 0x3FFFFFFF) != hdr + caplen:
                raise DetectorError("bpf/dns_tls.c and detector/capture/tls.py disagree on struct "
                                    f"tls_event (record of {rlen & 0x3FFFFFFF} bytes, caplen {caplen})",
                                    errors.BPF_REJECTED)
            pid = struct.unpack_from("<I", okey)[0]
            key = (pid, ssl, conn)
            if direction == TLS_FREE:
                self.streams.close(key)
                self._addr.pop(key, None)
                continue
            data = chunk[off + RB_HDR + hdr:off + RB_HDR + hdr + caplen]
            msgs = feed(key, direction, data, ln - caplen if ln > caplen else 0)
            if not msgs:
                continue
            addr = self._addr.get(key, False)
            if addr is False:  # looked up once per connection that carries DNS
                addr = socket_addresses(pid, fd) if fd >= 0 else None
                if len(self._addr) > MAX_CONNS:
                    self._addr.clear()
                self._addr[key] = addr
            ts = ts_ns / 1e9 + m2w
            proc = process(okey)
            if addr:
                fam, lip, lport, rip, rport = addr
            else:
                fam, lip, lport, rip, rport = 4, "", 0, "", 0
            for d, msg, proto in msgs:
                if d == TLS_WRITE:
                    src, sport, dst, dport = lip, lport, rip, rport
                else:
                    src, sport, dst, dport = rip, rport, lip, lport
                try:
                    ev: DnsEvent = decode(msg, ts, "tcp", fam, src, sport, dst, dport)
                except DnsParseError:
                    self.parse_errors += 1
                    continue
                ev.process = proc
                ev.protocol = proto
                # the client's side: it writes the query and reads the response
                self.dedup.add(ev, msg, client=(d == TLS_WRITE) != bool(ev.flags & 0x8000), out=out)

    def _set_verdict(self, key: tuple, v: int) -> None:
        pid, ssl, conn = key
        try:
            tbl = self._verdicts
            k, val = tbl.Key(), tbl.Leaf()
            k.ssl, k.pid = ssl, pid
            val.conn, val.v = conn, v
            tbl[k] = val
        except Exception as e:  # noqa: BLE001 - a full map, or the maps gone at close
            log.debug("tls verdict for %s failed: %s", key, e)

    def counters(self) -> list[int]:
        if self._closed_counters is not None:
            return self._closed_counters
        return [int(self._counters.sum(ct.c_int(k)).value) for k in range(T_MAX)]

    def stats(self) -> dict[str, int]:
        try:
            c = self.counters()
        except Exception:  # noqa: BLE001 - the maps are gone
            c = [0] * T_MAX
        return {**self.streams.counters, "tls_duplicate_copies": self.dedup.dropped, "tls_calls": c[T_CALLS], "tls_copied": c[T_SENT],
                "tls_lost": c[T_LOST], "tls_skipped": c[T_SKIPPED], "tls_truncated": c[T_TRUNCATED],
                "tls_rejected_in_kernel": c[T_REJECTED],
                "tls_parse_errors": self.parse_errors}

    def close(self) -> None:
        b = getattr(self, "b", None)
        if b is None:
            return
        try:
            self._closed_counters = self.counters()
        except Exception:  # noqa: BLE001
            self._closed_counters = [0] * T_MAX
        ring = getattr(self, "ring", None)
        if ring is not None:
            ring.close()
            self.ring = None
        # Closing a uprobe's perf event fd detaches it. BCC's own cleanup would then
        # also remove a tracefs uprobe_events entry, which a perf-PMU uprobe never had
        # (and tracefs may not be mounted): it raises and leaves the rest attached.
        from bcc import lib

        for name, fd in list(b.uprobe_fds.items()):
            if lib.bpf_close_perf_event_fd(fd) < 0:
                log.warning("detaching the TLS uprobe %s failed", name)
            del b.uprobe_fds[name]
        try:
            b.cleanup()
        except Exception as e:  # noqa: BLE001
            log.warning("closing the TLS programs failed: %s", e)
        self.b = None
