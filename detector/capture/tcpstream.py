"""Reassemble DNS-over-TCP streams (RFC 7766): 2-byte length prefix, messages
split across segments or packed several to a segment, retransmissions,
out-of-order segments, and captures that start mid-stream or lose segments.

One :class:`TcpDnsReassembler` serves all flows; each direction of a connection
is its own stream. State is bounded: at most ``max_streams`` streams (oldest
evicted) and ``max_pending`` bytes held per stream.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

FIN, SYN, RST = 0x01, 0x02, 0x04


def plausible_prefix(buf: bytes | bytearray, i: int) -> bool:
    """Does a DNS message with a length prefix plausibly start at ``buf[i]``?"""
    if i + 14 > len(buf):
        return False
    ln = (buf[i] << 8) | buf[i + 1]
    if ln < 12:
        return False
    qd = (buf[i + 6] << 8) | buf[i + 7]
    opcode = (buf[i + 4] >> 3) & 0xF
    return qd <= 4 and opcode in (0, 1, 2, 4, 5, 6) and ((buf[i + 8] << 8) | buf[i + 9]) < 512


class _Stream:
    __slots__ = ("next_seq", "buf", "ooo", "ooo_bytes", "synced", "last_ts")

    def __init__(self, next_seq: int, synced: bool) -> None:
        self.next_seq = next_seq
        self.buf = bytearray()
        self.ooo: dict[int, bytes] = {}
        self.ooo_bytes = 0
        self.synced = synced  # False: we may be mid-message; find a prefix first
        self.last_ts = 0.0


class TcpDnsReassembler:
    def __init__(self, max_streams: int = 20000, max_pending: int = 1 << 18,
                 max_ooo_segments: int = 64) -> None:
        self.streams: OrderedDict[Hashable, _Stream] = OrderedDict()
        self.max_streams = max_streams
        self.max_pending = max_pending
        self.max_ooo_segments = max_ooo_segments
        # counters, read by the pipeline summary
        self.retransmitted = 0
        self.gaps = 0
        self.resyncs = 0
        self.evicted = 0

    def segment(self, key: Hashable, seq: int, flags: int, payload: bytes,
                ts: float = 0.0) -> list[bytes]:
        """Feed one segment of one direction; return the DNS messages it completes."""
        st = self.streams.get(key)
        if flags & SYN:
            st = _Stream((seq + 1) & 0xFFFFFFFF, True)
            self._put(key, st)
            if not payload:
                return []
            # data on a SYN (TFO) counts from seq+1
        if flags & RST:
            self.streams.pop(key, None)
            return []
        out: list[bytes] = []
        if payload:
            if st is None:
                st = _Stream(seq, False)  # no SYN seen: joined mid-stream
                self._put(key, st)
            else:
                self.streams.move_to_end(key)
            st.last_ts = ts
            self._add(st, seq, payload, out)
        if flags & FIN:
            self.streams.pop(key, None)
        return out

    def _put(self, key: Hashable, st: _Stream) -> None:
        self.streams[key] = st
        if len(self.streams) > self.max_streams:
            self.streams.popitem(last=False)
            self.evicted += 1

    def _add(self, st: _Stream, seq: int, payload: bytes, out: list[bytes]) -> None:
        rel = (seq - st.next_seq) & 0xFFFFFFFF
        if rel >= 0x80000000:  # before next_seq: retransmission or overlap
            back = 0x100000000 - rel
            if back >= len(payload):
                self.retransmitted += 1
                return
            payload = payload[back:]
            rel = 0
        if rel > 0:  # a hole before this segment
            if seq in st.ooo:
                return
            msgs = _whole_messages(payload)
            if msgs is not None:
                # The segment holds whole messages: emit them now (the hole may be a
                # lost packet that never comes) and remember to skip these bytes
                # if the missing data arrives after all.
                out.extend(msgs)
                st.ooo[seq] = len(payload)
            else:
                st.ooo[seq] = payload
                st.ooo_bytes += len(payload)
            if len(st.ooo) > self.max_ooo_segments or st.ooo_bytes > self.max_pending:
                self._skip_gap(st, out)
            return
        st.buf += payload
        st.next_seq = (st.next_seq + len(payload)) & 0xFFFFFFFF
        if st.ooo:
            self._drain_ooo(st)
        self._extract(st, out)

    def _drain_ooo(self, st: _Stream) -> None:
        while st.ooo:
            progressed = False
            for s in list(st.ooo):
                rel = (s - st.next_seq) & 0xFFFFFFFF
                if rel == 0 or rel >= 0x80000000:
                    p = st.ooo.pop(s)
                    back = 0 if rel == 0 else 0x100000000 - rel
                    if type(p) is int:  # already emitted: skip its bytes
                        if back < p:
                            if st.buf:  # a message cut by the hole can't complete
                                st.buf.clear()
                                st.synced = False
                            st.next_seq = (st.next_seq + p - back) & 0xFFFFFFFF
                            if not st.synced:
                                st.synced = True  # emitted data ended on a boundary
                    else:
                        st.ooo_bytes -= len(p)
                        if back < len(p):
                            st.buf += p[back:]
                            st.next_seq = (st.next_seq + len(p) - back) & 0xFFFFFFFF
                    progressed = True
            if not progressed:
                return

    def _skip_gap(self, st: _Stream, out: list[bytes]) -> None:
        """The missing bytes are not coming: drop the partial message, jump ahead."""
        self.gaps += 1
        st.buf.clear()
        st.next_seq = min(st.ooo, key=lambda s: (s - st.next_seq) & 0xFFFFFFFF)
        st.synced = False
        self._drain_ooo(st)
        self._extract(st, out)

    def flush_gaps(self) -> list[tuple[Hashable, float, bytes]]:
        """At end of capture: give up on every hole; return (key, ts, message) after it."""
        res: list[tuple[Hashable, float, bytes]] = []
        for key, st in self.streams.items():
            if st.ooo:
                out: list[bytes] = []
                self._skip_gap(st, out)
                res.extend((key, st.last_ts, m) for m in out)
        return res

    def _extract(self, st: _Stream, out: list[bytes]) -> None:
        buf = st.buf
        if not st.synced:
            # Find where a length-prefixed message starts; bytes before it belong
            # to a message whose start we never saw.
            for i in range(min(len(buf), 4096)):
                if plausible_prefix(buf, i):
                    if i:
                        self.resyncs += 1
                        del buf[:i]
                    st.synced = True
                    break
            else:
                if len(buf) > 4096:
                    buf.clear()
                return
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            ln = (buf[pos] << 8) | buf[pos + 1]
            if n - pos - 2 < ln:
                break
            out.append(bytes(buf[pos + 2:pos + 2 + ln]))
            pos += 2 + ln
        if pos:
            del buf[:pos]
        if len(buf) > self.max_pending:
            buf.clear()
            st.synced = False
            self.gaps += 1


def _whole_messages(p: bytes) -> list[bytes] | None:
    """The messages in ``p`` if it is exactly a run of whole length-prefixed ones."""
    msgs = []
    i, n = 0, len(p)
    while i < n:
        if not plausible_prefix(p, i):
            return None
        ln = (p[i] << 8) | p[i + 1]
        if i + 2 + ln > n:
            return None
        msgs.append(bytes(p[i + 2:i + 2 + ln]))
        i += 2 + ln
    return msgs or None
