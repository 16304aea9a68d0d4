"""Reassemble DNS-over-TCP streams (RFC 7766: a 2-byte length before each
message) the way the receiving host does, so that what the sensor decodes is
what the server or client was given.

One :class:`TcpDnsReassembler` serves all flows; each direction of a
connection is its own stream. The policy follows Linux (net/ipv4/tcp_input.c):

* **Window.** A segment is accepted only if it carries a byte at or after the
  next expected one (``rcv_nxt``) and starts less than :data:`WINDOW` bytes
  after it. Segments wholly before ``rcv_nxt`` are retransmissions: dropped,
  counted once (``retransmitted``). Segments starting beyond the window are
  dropped and counted (``tcp_out_of_window``), as the host drops them; they
  never move the stream. A stream picked up mid-connection (no SYN in the
  capture) is anchored on its first segment; until it has given a message, a
  segment outside that window that starts like a DNS message re-anchors it.
* **Overlaps: first wins, as Linux keeps the data already queued.** Bytes
  already delivered in order are never replaced: a retransmission that also
  carries new bytes (coalesced) gives only the new ones. Out-of-order
  segments are held by sequence number; one wholly inside a held segment is
  dropped, one with the same start and longer replaces it, held ones wholly
  inside a new one are dropped (tcp_data_queue_ofo). At delivery the lowest
  sequence number wins where held segments overlap.
* **Holes.** Out-of-order data waits for the missing bytes. A hole is given up
  (``tcp_gaps``), and the data after it delivered, only when the capture must
  have lost the bytes: the receiver acknowledged past the hole (:meth:`ack`,
  the other direction's ACK), or, for a stream whose ACKs are not seen (one
  direction captured, live capture), no progress for :data:`HOLE_TIMEOUT`
  seconds, or the capture ended (:meth:`flush_gaps`). Data planted ahead of the
  stream therefore never hides what follows: the real bytes fill the hole first.
  An ACK past the hole gives it up after :data:`ACK_GRACE` (the capture may
  write an ACK before the data it acknowledges), at once if the data held after
  the hole starts a plausible message (:func:`plausible_prefix`). After a hole
  the stream resumes at the next plausible length prefix, as dnscap does
  (``tcp_gap_bytes`` lost in holes, ``tcp_resync_skipped_bytes`` of partial
  messages dropped, ``resyncs``). Bytes of a hole given up that the capture
  gives late are read on their own, once (``late_segments``).
* **Bounds.** At most ``max_ooo`` out-of-order bytes per stream (beyond it the
  highest-sequence data is dropped first, as tcp_prune_ofo_queue does;
  ``tcp_ooo_dropped_bytes``), at most ``max_bytes`` held by all streams
  together (the stream waiting longest loses what it holds;
  ``tcp_memory_dropped_bytes``), and at most ``max_streams`` streams (the
  least recently used is evicted, ``tcp_streams_evicted``; streams that have
  not yet given a message go first, so a SYN flood churns only its own
  half-open entries). A message is at most 65,537 bytes with its prefix, so a
  stream's in-order buffer never holds more.
* **SYN and RST.** A SYN starts a stream at its sequence number + 1, unless
  the 4-tuple carried data in the last :data:`SYN_GUARD` seconds (a spoofed SYN
  would otherwise re-anchor a live stream; counted in ``syn_ignored``). A RST
  closes a stream only at exactly ``rcv_nxt`` (RFC 5961; ``rst_ignored``), a FIN
  once the data before it is in.
* **Snap length.** A segment the capture cut (``cut`` bytes missing at its end)
  gives the message it ends in as far as it goes; the decoder marks it
  malformed, and the stream goes on after the missing bytes (``cut_messages``).
* **Junk costs little.** A stream joined mid-stream is scanned once, in the
  bytes not yet scanned, for a plausible message start; after
  :data:`RESYNC_LIMIT` bytes without one, or a length prefix under 12 (no DNS
  header fits) where a message must start, the stream is given up
  (``tcp_streams_given_up``) and later segments cost a lookup
  (``tcp_junk_segments``).

Counters in ``stats`` (``tcp_*``) mean data not decoded; they go to the
``stats`` Counter given (the packet decoder's, so the replay summary and the
metrics list them). The attributes ``retransmitted``, ``overlaps``,
``resyncs``, ``expired``, ``syn_ignored``, ``rst_ignored``, ``cut_messages``
and ``late_segments`` are bookkeeping; :meth:`counters` gives all of them, and the streams and bytes
held now.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Hashable
from bisect import bisect_left, insort

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10

WINDOW = 1 << 20  # bytes accepted ahead of rcv_nxt (a scaled Linux receive window)
HOLE_TIMEOUT = 5.0  # seconds without progress before a hole is given up (no ACKs seen)
ACK_GRACE = 1.0  # an ACK past a hole gives it up this much later (capture order can lag)
SYN_GUARD = 30.0  # a SYN does not replace a stream that carried data this recently
IDLE_TIMEOUT = 300.0  # a stream silent this long is forgotten (expire())
RESYNC_LIMIT = 4096  # bytes scanned for a message start before a stream is given up
MAX_MESSAGE = 65535 + 2
_M32 = 0xFFFFFFFF


def plausible_prefix(buf: bytes | bytearray, i: int) -> bool:
    """Does a DNS message with a length prefix plausibly start at ``buf[i]``?

    The prefix leaves room for a header; the opcode is a standard one; the
    section counts fit in that length (a question takes at least 5 bytes, a
    record 11); at most 4 questions, none only in a response with answers (a
    zone transfer's later messages); and the first question's name, as far as
    its bytes are there, is plain labels (under 64 bytes, no pointer: nothing
    precedes it to point at) ending inside the message with room for its type
    and class. Used where a stream must find a message start: joined
    mid-stream, after a hole, after a cut message."""
    n = len(buf)
    if i + 14 > n:
        return False
    ln = (buf[i] << 8) | buf[i + 1]
    if ln < 12:
        return False
    h = i + 2
    if (buf[h + 2] >> 3) & 0xF not in (0, 1, 2, 4, 5, 6):
        return False
    qd = (buf[h + 4] << 8) | buf[h + 5]
    if qd > 4:
        return False
    an = (buf[h + 6] << 8) | buf[h + 7]
    if 12 + 5 * qd + 11 * (an + ((buf[h + 8] << 8) | buf[h + 9])
                           + ((buf[h + 10] << 8) | buf[h + 11])) > ln:
        return False
    if not qd and not (buf[h + 2] & 0x80 and an):  # no question: only a response with answers
        return False  # (a zone transfer goes on so); a header shifted by 2 looks like this
    if qd:
        end = h + ln  # the message's end
        p = h + 12
        stop = min(n, end)
        while p < stop:
            c = buf[p]
            if c == 0:
                return p + 5 <= end
            if c >= 64:
                return False
            p += c + 1
        if p >= end:  # a label runs past the message
            return False
    return True


class _Stream:
    __slots__ = ("nxt", "buf", "ooo", "keys", "ooo_bytes", "synced", "scan", "last_ts",
                 "stall_ts", "acks_seen", "acked", "ack_ts", "anchored", "dead", "fin", "held",
                 "last_data", "skip", "gap_lo", "gap_hi", "late", "late_nxt", "late_sync")

    def __init__(self, nxt: int, synced: bool, ts: float) -> None:
        self.nxt = nxt  # next expected byte, unwrapped (grows past 2**32)
        self.buf = bytearray()  # in-order bytes of a message not complete yet
        self.ooo: dict[int, bytes] = {}  # out-of-order segments by unwrapped seq
        self.keys: list[int] = []  # sorted keys of ooo
        self.ooo_bytes = 0
        self.synced = synced  # False: joined mid-stream, find a message start first
        self.scan = 0  # bytes of buf already scanned for a message start
        self.last_ts = ts
        self.stall_ts = ts  # when rcv_nxt last moved (hole age)
        self.acks_seen = False  # the receiver's ACKs are in the capture
        self.acked = -1  # highest byte acknowledged by the receiver, unwrapped
        self.ack_ts = 0.0  # when an ACK first passed a hole
        self.anchored = synced  # from a SYN, or has given a message: the window is sure
        self.dead = False  # given up: not DNS
        self.fin = -1  # unwrapped seq of a FIN seen ahead, or -1
        self.held = 0  # bytes counted in the reassembler's held_bytes
        self.last_data = ts  # last segment with payload
        self.skip = 0  # bytes to drop before the next message (after a cut message)
        self.gap_lo = self.gap_hi = -1  # the last hole given up: [gap_lo, gap_hi)
        self.late = bytearray()  # bytes of that hole come late (capture order), in order
        self.late_nxt = -1  # next byte of the hole expected late
        self.late_sync = False  # late bytes start at a message boundary

    def unwrap(self, seq: int) -> int:
        d = (seq - self.nxt) & _M32
        return self.nxt + (d - 0x100000000 if d >= 0x80000000 else d)


class TcpDnsReassembler:
    def __init__(self, max_streams: int = 20000, max_ooo: int = 1 << 16,
                 max_bytes: int = 32 << 20, stats: Counter | None = None) -> None:
        # streams that have given no message yet (half-open, new) and established
        # ones, each least recently used first
        self.fresh: OrderedDict[Hashable, _Stream] = OrderedDict()
        self.streams: OrderedDict[Hashable, _Stream] = OrderedDict()
        self.max_streams = max_streams
        self.max_ooo = max_ooo
        self.max_bytes = max_bytes
        self.held_bytes = 0  # bytes held by all streams (in-order partials + out of order)
        self._holders: OrderedDict[Hashable, _Stream] = OrderedDict()  # by waiting since
        self.stats: Counter = stats if stats is not None else Counter()
        # bookkeeping, not data loss
        self.retransmitted = 0  # segments wholly before rcv_nxt, dropped
        self.overlaps = 0  # segments partly before rcv_nxt or held: the known bytes dropped
        self.resyncs = 0  # message starts found after bytes of a cut message
        self.expired = 0  # streams forgotten after IDLE_TIMEOUT
        self.syn_ignored = 0  # SYNs on a stream that carried data recently (RFC 5961)
        self.rst_ignored = 0  # RSTs not at rcv_nxt (RFC 5961)
        self.cut_messages = 0  # messages given short: the capture cut their segment
        self.late_segments = 0  # segments inside a hole given up, read on their own (_late)
        #: set by segment(): its last message is one the capture cut (given short)
        self.cut_tail = False

    # --- counters -------------------------------------------------------------------
    @property
    def gaps(self) -> int:
        return self.stats["tcp_gaps"]

    @property
    def evicted(self) -> int:
        return self.stats["tcp_streams_evicted"]

    def counters(self) -> dict[str, int]:
        """Every counter, and the state held now (``tcp_streams``, ``tcp_held_bytes``)."""
        d = {k: v for k, v in self.stats.items() if k.startswith("tcp_")}
        d.update(tcp_retransmitted=self.retransmitted, tcp_overlaps=self.overlaps,
                 tcp_resyncs=self.resyncs, tcp_streams_expired=self.expired,
                 tcp_syn_ignored=self.syn_ignored, tcp_rst_ignored=self.rst_ignored,
                 tcp_cut_messages=self.cut_messages, tcp_late_segments=self.late_segments,
                 tcp_streams=len(self.fresh) + len(self.streams), tcp_held_bytes=self.held_bytes)
        return d

    def __len__(self) -> int:
        return len(self.fresh) + len(self.streams)

    # --- entry points ---------------------------------------------------------------
    def segment(self, key: Hashable, seq: int, flags: int, payload: bytes,
                ts: float = 0.0, cut: int = 0) -> list[bytes]:
        """Feed one segment of one direction; return the DNS messages it completes.

        ``cut``: bytes of the segment's payload the capture did not keep (a snap
        length shorter than the packet): the message they fall in is returned with
        what is there (the decoder marks it malformed), and the stream goes on after
        them."""
        st = self.streams.get(key)
        if st is None:
            st = self.fresh.get(key)
            if st is not None:
                self.fresh.move_to_end(key)
        else:
            self.streams.move_to_end(key)
        out: list[bytes] = []
        self.cut_tail = False
        if flags & SYN:
            if st is None or st.dead or ts - st.last_data > SYN_GUARD or not st.anchored:
                early = [] if st is None or st.dead else self._held_segments(st)
                self._drop(key)
                st = _Stream((seq + 1) & _M32, True, ts)
                self._put(key, st)
                for s, p in early:  # data seen before its SYN (capture order): re-read
                    self._add(key, st, st.unwrap(s), p, out)
            elif st.unwrap((seq + 1) & _M32) != st.nxt or payload:
                self.syn_ignored += 1
                return []
            if not payload:
                self._account(key, st)
                return out
            seq = (seq + 1) & _M32  # data on a SYN (TFO) counts from seq+1
        if st is None:
            if not payload:
                return []
            if flags & RST:
                return []
            st = _Stream(seq, False, ts)  # no SYN seen: joined mid-stream
            self._put(key, st)
        st.last_ts = ts
        if flags & RST:
            if st.unwrap(seq) == st.nxt:
                self._drop(key)
            else:
                self.rst_ignored += 1
            return []
        if st.dead:
            if payload:
                self.stats["tcp_junk_segments"] += 1
            return out
        if payload:
            st.last_data = ts
            if st.ooo:
                self._if_due(st, ts, out)
            self._add(key, st, st.unwrap(seq), payload, out, cut)
            if st.ooo and st.acks_seen:  # held data the receiver already acknowledged
                self._if_due(st, ts, out)
        if flags & FIN and not st.dead:
            end = st.unwrap(seq) + len(payload) + cut
            if st.nxt <= end < st.nxt + WINDOW:
                st.fin = end
        if st.fin >= 0 and st.nxt >= st.fin and not st.ooo:
            self._drop(key)
        else:
            self._account(key, st)
        return out

    def ack(self, key: Hashable, ack: int, ts: float = 0.0) -> list[bytes]:
        """The receiver of stream ``key`` acknowledged up to ``ack`` (the ACK field of
        a segment in the other direction). Bytes it acknowledged that the capture
        lacks were lost by the capture, not the network: give that hole up."""
        st = self.streams.get(key) or self.fresh.get(key)
        if st is None or st.dead:
            return []
        st.acks_seen = True
        a = st.unwrap(ack)
        if a <= st.nxt or a > st.nxt + WINDOW or a <= st.acked:
            return []
        if st.acked <= st.nxt:
            st.ack_ts = ts  # the ACK just passed rcv_nxt
        st.acked = a
        out: list[bytes] = []
        if st.ooo:
            self._if_due(st, ts, out)
            self._account(key, st)
        return out

    def _if_due(self, st: _Stream, now: float, out: list[bytes]) -> None:
        """Give up the hole if the capture must have lost its bytes."""
        if st.acks_seen:
            if st.acked > st.nxt and (now - st.ack_ts > ACK_GRACE or self._resumes(st)):
                self._give_up_hole(st, st.acked, out)
        elif now - st.stall_ts > HOLE_TIMEOUT:
            self._give_up_hole(st, None, out)

    @staticmethod
    def _resumes(st: _Stream) -> bool:
        """The data held after the hole starts a message, and the receiver has
        acknowledged up to it: nothing is gained by waiting out the ACK grace
        (a late copy of the hole's bytes is still read, see _late)."""
        keys, ooo = st.keys, st.ooo
        first = keys[0]
        if first > st.acked:
            return False
        head = ooo[first]
        end = first + len(head)
        if len(head) < 512:  # a prefix sent on its own: look at the contiguous bytes
            parts = [head]
            for k in keys[1:8]:
                if k > end:
                    break
                p = ooo[k]
                if k + len(p) > end:
                    parts.append(p[end - k:])
                    end = k + len(p)
            head = b"".join(parts)
        return plausible_prefix(head, 0)

    def expire(self, now: float) -> list[tuple[Hashable, float, bytes]]:
        """Give up holes older than HOLE_TIMEOUT in streams without ACKs, forget
        streams idle for IDLE_TIMEOUT; return (key, ts, message) so delivered."""
        res: list[tuple[Hashable, float, bytes]] = []
        for key, st in list(self._holders.items()):
            if st.ooo:
                out: list[bytes] = []
                self._if_due(st, now, out)
                res.extend((key, st.last_ts, m) for m in out)
                self._account(key, st)
        for pool in (self.fresh, self.streams):
            while pool:
                key, st = next(iter(pool.items()))
                if now - st.last_ts <= IDLE_TIMEOUT:
                    break
                if st.ooo:
                    out = []
                    self._give_up_hole(st, None, out)
                    res.extend((key, st.last_ts, m) for m in out)
                self._drop(key)
                self.expired += 1
        return res

    def flush_gaps(self) -> list[tuple[Hashable, float, bytes]]:
        """At end of capture: give up on every hole (in a stream whose ACKs are seen,
        up to what the receiver acknowledged); return (key, ts, message) after it."""
        res: list[tuple[Hashable, float, bytes]] = []
        for key, st in list(self._holders.items()):
            if st.ooo:
                out: list[bytes] = []
                if st.acks_seen:  # only what the receiver is known to have
                    if st.acked > st.nxt:
                        self._give_up_hole(st, st.acked, out)
                else:
                    while st.ooo and not st.dead:
                        self._give_up_hole(st, None, out)
                res.extend((key, st.last_ts, m) for m in out)
                self._account(key, st)
        return res

    # --- state ----------------------------------------------------------------------
    def _put(self, key: Hashable, st: _Stream) -> None:
        self.fresh[key] = st
        while len(self.fresh) + len(self.streams) > self.max_streams:
            pool = self.fresh if len(self.fresh) > 1 or not self.streams else self.streams
            old = next(iter(pool))
            if old == key:
                break
            self._drop(old)
            self.stats["tcp_streams_evicted"] += 1

    @staticmethod
    def _held_segments(st: _Stream) -> list[tuple[int, bytes]]:
        segs = [((st.nxt - len(st.buf)) & _M32, bytes(st.buf))] if st.buf else []
        return segs + [(k & _M32, st.ooo[k]) for k in st.keys]

    def _drop(self, key: Hashable) -> None:
        st = self.fresh.pop(key, None) or self.streams.pop(key, None)
        if st is not None and st.held:
            self.held_bytes -= st.held
            st.held = 0
            self._holders.pop(key, None)

    def _account(self, key: Hashable, st: _Stream) -> None:
        """Update the bytes held; over max_bytes, the longest-waiting holders lose theirs."""
        held = len(st.buf) + st.ooo_bytes + len(st.late)
        if held != st.held:
            self.held_bytes += held - st.held
            st.held = held
            if held and key not in self._holders:
                self._holders[key] = st
            elif not held:
                self._holders.pop(key, None)
        while self.held_bytes > self.max_bytes and self._holders:
            k, victim = self._holders.popitem(last=False)
            self.stats["tcp_memory_dropped_bytes"] += victim.held
            self.held_bytes -= victim.held
            victim.held = 0
            victim.buf.clear()
            victim.late.clear()
            victim.late_nxt = victim.gap_hi
            victim.scan = 0
            if victim.ooo:  # the data after the hole is gone too: skip to after it
                last = victim.keys[-1]
                victim.nxt = max(victim.nxt, last + len(victim.ooo[last]))
                victim.ooo.clear()
                victim.keys.clear()
                victim.ooo_bytes = 0
            victim.synced = False

    def _add(self, key: Hashable, st: _Stream, a: int, payload: bytes, out: list[bytes],
             cut: int = 0) -> None:
        end = a + len(payload)
        if end <= st.nxt:
            if st.gap_lo <= a < st.gap_hi and end > st.late_nxt:
                self._late(st, a, payload, out)  # bytes of a hole given up, come after all
            else:
                self.retransmitted += 1
            return
        if a >= st.nxt + WINDOW:
            if not st.anchored and plausible_prefix(payload, 0):
                # joined mid-stream on a segment that was not the stream's: re-anchor
                self.resyncs += 1
                st.nxt, st.synced, st.scan = a, True, 0
                st.buf.clear()
                st.ooo.clear()
                st.keys.clear()
                st.ooo_bytes = 0
                st.stall_ts = st.last_ts
            else:
                self.stats["tcp_out_of_window"] += 1
                return
        if a > st.nxt:
            self._hold(st, a, payload)
            return
        if a < st.nxt:  # a coalesced retransmission: keep only the new bytes
            self.overlaps += 1
            payload = payload[st.nxt - a:]
        st.buf += payload
        st.nxt = end
        st.stall_ts = st.last_ts
        if cut > 0 and not st.ooo:
            self._extract(key, st, out)
            self._cut(st, cut, out)
            return
        if st.ooo:
            self._drain(st)
        self._extract(key, st, out)

    def _cut(self, st: _Stream, cut: int, out: list[bytes]) -> None:
        """The capture kept the segment's first bytes only: give the message they
        end in as it is, and go on after the missing bytes."""
        self.cut_messages += 1
        buf = st.buf
        st.nxt += cut
        if st.synced and len(buf) >= 14:
            ln = (buf[0] << 8) | buf[1]
            out.append(bytes(buf[2:]))
            self.cut_tail = True
            rest = ln + 2 - len(buf)  # bytes of this message after what we have
            buf.clear()
            if cut <= rest:
                st.skip = rest - cut  # the message goes on in the next segment: skip it
                return
        buf.clear()
        st.synced, st.scan, st.skip = False, 0, 0

    def _late(self, st: _Stream, a: int, payload: bytes, out: list[bytes]) -> None:
        """Bytes of a hole already given up, given late by the capture (it wrote an
        ACK before the data it acknowledged): read in order on their own, from the
        hole's start if that was a message boundary, else from a segment that
        starts a message; their whole messages are given, once."""
        if a > st.late_nxt:  # a hole inside the hole: only a message start resumes
            if not plausible_prefix(payload, 0):
                self.retransmitted += 1
                return
            st.late.clear()
            st.late_nxt, st.late_sync = a, True
        payload = payload[st.late_nxt - a:st.gap_hi - a]
        if not st.late and not st.late_sync:
            if not plausible_prefix(payload, 0):
                self.retransmitted += 1
                return
            st.late_sync = True
        self.late_segments += 1
        late = st.late
        late += payload
        st.late_nxt += len(payload)
        pos, n = 0, len(late)
        while n - pos >= 2:
            ln = (late[pos] << 8) | late[pos + 1]
            if ln < 12:  # not a message start after all
                pos, st.late_nxt = n, st.gap_hi
                break
            if n - pos - 2 < ln:
                break
            out.append(bytes(late[pos + 2:pos + 2 + ln]))
            pos += 2 + ln
        del late[:pos]
        if st.late_nxt >= st.gap_hi:  # the rest of the message lay after the hole: gone
            late.clear()

    def _hold(self, st: _Stream, a: int, payload: bytes) -> None:
        """Queue an out-of-order segment as tcp_data_queue_ofo does."""
        ooo, keys = st.ooo, st.keys
        end = a + len(payload)
        old = ooo.get(a)
        if old is not None:
            if len(old) >= len(payload):
                self.overlaps += 1
                return
            st.ooo_bytes -= len(old)
        else:
            i = bisect_left(keys, a)
            if i:
                p = keys[i - 1]
                if p + len(ooo[p]) >= end:  # all its bytes are held already
                    self.overlaps += 1
                    return
            insort(keys, a)
        ooo[a] = payload
        st.ooo_bytes += len(payload)
        i = bisect_left(keys, a) + 1
        while i < len(keys) and keys[i] + len(ooo[keys[i]]) <= end:  # held ones it covers
            st.ooo_bytes -= len(ooo.pop(keys.pop(i)))
            self.overlaps += 1
        while st.ooo_bytes > self.max_ooo:  # drop from the far end first
            k = keys.pop()
            n = len(ooo.pop(k))
            st.ooo_bytes -= n
            self.stats["tcp_ooo_dropped_bytes"] += n

    def _drain(self, st: _Stream) -> None:
        ooo, keys = st.ooo, st.keys
        while keys and keys[0] <= st.nxt:
            k = keys.pop(0)
            p = ooo.pop(k)
            st.ooo_bytes -= len(p)
            if k + len(p) > st.nxt:
                st.buf += p[st.nxt - k:]
                st.nxt = k + len(p)
            else:
                self.overlaps += 1

    def _give_up_hole(self, st: _Stream, upto: int | None, out: list[bytes]) -> None:
        """The missing bytes are not coming: drop the partial message, jump ahead
        (to the first held segment, or to ``upto`` if the receiver has it and no
        held segment comes before)."""
        while st.keys and (upto is None or st.nxt < upto):
            first = st.keys[0]
            target = first if upto is None else min(first, upto)
            if target > st.nxt:
                self._skip_to(st, target)
            st.stall_ts = st.last_ts
            self._drain(st)
            self._extract(None, st, out)
            if upto is None or st.dead:
                break
        if upto is not None and st.nxt < upto and not st.ooo:
            self._skip_to(st, upto)

    def _skip_to(self, st: _Stream, target: int) -> None:
        """Jump over a hole to ``target``: the partial message before it is dropped,
        and the stream looks for the next message start (_extract). The hole is
        remembered, for its bytes the capture may yet give late (_late)."""
        self.stats["tcp_gaps"] += 1
        self.stats["tcp_gap_bytes"] += target - st.nxt
        st.late_sync = st.synced and not st.buf and not st.skip  # the hole starts a message
        if st.buf:
            self.stats["tcp_resync_skipped_bytes"] += len(st.buf)
            st.buf.clear()
        st.late.clear()
        st.gap_lo, st.gap_hi, st.late_nxt = st.nxt, target, st.nxt
        st.synced, st.scan, st.skip, st.nxt = False, 0, 0, target

    def _extract(self, key: Hashable | None, st: _Stream, out: list[bytes]) -> None:
        buf = st.buf
        if st.skip:  # the tail of a message the capture cut
            k = min(st.skip, len(buf))
            del buf[:k]
            st.skip -= k
            if st.skip:
                return
        if not st.synced:
            # Find where a length-prefixed message starts; bytes before it belong
            # to a message whose start we never saw. Each byte is scanned once.
            i = st.scan
            n = len(buf)
            while i + 14 <= n and not plausible_prefix(buf, i):
                i += 1
            if i + 14 > n:
                st.scan = i
                if i > RESYNC_LIMIT:
                    self._give_up(st)
                return
            if i:
                self.resyncs += 1
                self.stats["tcp_resync_skipped_bytes"] += i
                del buf[:i]
            st.synced = True
            st.scan = 0
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            ln = (buf[pos] << 8) | buf[pos + 1]
            if ln < 12:  # no DNS header fits: this is not DNS
                del buf[:pos]
                self._give_up(st)
                return
            if n - pos - 2 < ln:
                break
            out.append(bytes(buf[pos + 2:pos + 2 + ln]))
            pos += 2 + ln
        if pos:
            del buf[:pos]
            if not st.anchored:
                st.anchored = True
        if key is not None and out and key in self.fresh:
            self.streams[key] = self.fresh.pop(key)  # established: evicted last

    def _give_up(self, st: _Stream) -> None:
        st.dead = True
        self.stats["tcp_streams_given_up"] += 1
        st.buf = bytearray()
        st.ooo.clear()
        st.keys.clear()
        st.ooo_bytes = 0
