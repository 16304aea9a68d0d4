"""Read pcap and pcapng files: yields (timestamp, link type, frame bytes).

Both formats, either byte order, microsecond and nanosecond pcap, pcapng with
several interfaces (each with its own link type and timestamp resolution).
A file is memory-mapped, so a 1 GB capture costs no 1 GB of RAM; stdin
(``-``), a pipe or a FIFO is read as a stream, chunk by chunk.

A capture compressed with gzip, xz, bzip2, zstd or lz4 (as tcpdump rotations
and test suites ship them) is read as it is, from a file or stdin: the format
is told by its magic bytes, not its name, and the bytes are decompressed as a
stream, a bounded piece at a time (:class:`Decompressor`).

A capture that ends mid-record is not an error: :attr:`PcapReader.truncated`
is set and iteration stops after the last whole packet. So is a compressed
stream that breaks off or goes corrupt: what decompressed before is read. A file that is not a
capture raises :class:`CaptureError` with a one-line reason.
"""

from __future__ import annotations

import bz2
import lzma
import mmap
import os
import select
import stat
import struct
import zlib
from collections.abc import Callable, Iterator

PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
RELEASE_BYTES = 8 << 20  # read pages given back in steps of this much
CHUNK = 1 << 20  # stream mode: bytes asked of each read
PROGRESS_EVERY = 0x3FF  # offset for progress updated every 1024 packets
#: a packet stamped later than this (year 5138) cannot be dated in ECS or OCSF:
#: it is a counted skip (``bad_timestamps``), not an event
MAX_TS = 1e11
#: pcapng block type -> its smallest total length (12 + the fixed fields)
_MIN_BLOCK = {6: 32, 2: 32, 3: 16, 1: 20}


class CaptureError(ValueError):
    """The file is not a readable capture (the message says why)."""


#: magic bytes -> compression format
COMPRESSED_MAGIC = {
    b"\x1f\x8b": "gzip", b"\xfd7zXZ\x00": "xz", b"BZh": "bzip2",
    b"\x28\xb5\x2f\xfd": "zstd", b"\x04\x22\x4d\x18": "lz4",
}
RAW_CHUNK = 1 << 16  # compressed bytes read at a time
ZSTD_PIECE = 1 << 13  # compressed bytes given to zstd at a time (it has no output bound)
OUT_PIECE = 1 << 14  # bytes decompressed at a time (corrupt data loses at most this much)


def compression_of(head: bytes) -> str | None:
    """The compression format whose magic ``head`` starts with, or None."""
    for magic, kind in COMPRESSED_MAGIC.items():
        if head.startswith(magic):
            return kind
    return None


class Decompressor:
    """A compressed stream read as the bytes it holds, one frame (gzip member, xz
    stream, zstd or lz4 frame) after another, as the command-line tools do.

    :meth:`read` gives some bytes (about as many as asked; b"" at the end). A
    stream that ends inside a frame, or whose data is corrupt, ends there with
    :attr:`damage` saying so; the bytes before it were given. Output is bounded
    per call (gzip, xz, bzip2 and lz4 take an output limit; zstd is given small
    pieces of input), so a small file that decompresses to gigabytes is read
    as a stream too, not held."""

    def __init__(self, kind: str, read_raw: Callable[[int], bytes], first: bytes = b"") -> None:
        self.kind = kind
        self._read_raw = read_raw
        self._raw = first  # compressed bytes read but not yet given to the decompressor
        self.raw_read = len(first)  # compressed bytes read from the source
        self.damage = ""
        self._done = False
        self._new()

    def _new(self) -> None:
        k = self.kind
        if k == "gzip":
            self._d = zlib.decompressobj(31)
        elif k == "xz":
            self._d = lzma.LZMADecompressor()
        elif k == "bzip2":
            self._d = bz2.BZ2Decompressor()
        elif k == "zstd":
            import zstandard

            self._d = zstandard.ZstdDecompressor().decompressobj()
        else:
            import lz4.frame

            self._d = lz4.frame.LZ4FrameDecompressor()
        self._fed = False  # this frame has had input

    @property
    def consumed(self) -> int:
        """Compressed bytes given to the decompressor so far."""
        return self.raw_read - len(self._raw)

    @property
    def pending(self) -> bool:
        """Compressed bytes in hand not yet decompressed (a read may not block)."""
        return bool(self._raw) or (self.kind not in ("gzip", "zstd") and self._fed
                                   and not self._d.eof and not self._d.needs_input)

    def read(self, n: int) -> bytes:
        while not self._done:
            try:
                out = self._step(min(max(n, 1), OUT_PIECE))
            except Exception as e:  # zlib.error, LZMAError, OSError, ZstdError, RuntimeError...
                self._end(f"{self.kind} data corrupt after {self.consumed} compressed bytes "
                          f"({str(e) or type(e).__name__})")
                return b""
            if out:
                return out
        return b""

    def _end(self, damage: str = "") -> None:
        self._done = True
        self.damage = damage
        self._raw = b""

    def _more(self) -> bool:
        """Read more compressed bytes; False at the end of the source."""
        chunk = self._read_raw(RAW_CHUNK)
        if not chunk:
            return False
        self.raw_read += len(chunk)
        self._raw += chunk
        return True

    def _step(self, want: int) -> bytes:
        d = self._d
        if self._fed and d.eof:  # a frame ended: another may follow, or the end
            while len(self._raw) < 6 and self._more():
                pass
            rest = self._raw
            if not rest:
                self._end()
                return b""
            if compression_of(rest[:6]) != self.kind:
                if not rest.strip(b"\x00"):  # zero padding after the last frame (tapes, dd)
                    self._raw = b""
                    return b""
                self._end(f"bytes after the last {self.kind} frame are not {self.kind} "
                          f"(at compressed byte {self.consumed})")
                return b""
            self._new()
            d = self._d
        if self.kind in ("gzip", "zstd") or not self._fed or d.needs_input:
            if not self._raw and not self._more():
                return self._eof()
        kind = self.kind
        if kind == "gzip":
            out = d.decompress(self._raw, want)
            self._raw = d.unconsumed_tail
        elif kind == "zstd":
            piece, self._raw = self._raw[:ZSTD_PIECE], self._raw[ZSTD_PIECE:]
            out = d.decompress(piece)
        elif self._fed and not d.needs_input:  # output still held from input given
            out = d.decompress(b"", max_length=want)
        else:
            raw, self._raw = self._raw, b""
            out = d.decompress(raw, max_length=want)
        self._fed = True
        if d.eof:  # what came after the frame goes back in front of the rest
            self._raw = (d.unused_data or b"") + self._raw
        return out

    def _eof(self) -> bytes:
        if self._fed and not self._d.eof:
            self._end(f"{self.kind} stream ends mid-frame after {self.consumed} compressed bytes")
        else:
            self._end()
        return b""


class PcapReader:
    """Iterate over the packets of a pcap or pcapng file.

    >>> r = PcapReader("capture.pcap")
    >>> for ts, linktype, frame in r: ...
    >>> r.truncated, r.packets

    ``-`` is stdin. Stdin, a pipe or a FIFO is read as a stream, in chunks, as it
    comes (no seeking, no mapping); :attr:`size` is None then (the length is not
    known). With :attr:`idle_marks` set, iteration yields ``None`` when the
    stream has nothing more to give right now and the next read would block, so
    the caller can hand on what it holds (``tcpdump -U -w - | detector ...``).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.truncated = False
        self.truncated_detail = ""
        self.packets = 0
        self.skipped_blocks = 0  # pcapng blocks too short, or for an interface never described
        self.bad_timestamps = 0  # packets stamped beyond MAX_TS
        self.offset = 0  # bytes consumed, for progress (updated every PROGRESS_EVERY packets)
        self.idle_marks = False
        self._fd: int | None = None  # stream mode: the descriptor read in chunks
        self._own_fd = False
        self._read: Callable[[int], bytes] | None = None  # stream mode: gives the next bytes
        self._dec: Decompressor | None = None  # a compressed capture's decompressor
        #: the compression format ("gzip", "xz", "bzip2", "zstd", "lz4"), or None
        self.compression: str | None = None
        self._pipe = path == "-"  # a pipe, FIFO or stdin (not a regular file)
        self._base = 0  # stream mode: file offset of self.buf[0]
        self.size: int | None
        if path == "-":
            fd = 0
            label = "stdin"
        else:
            label = path
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise CaptureError(f"{path}: no such file") from None
            except IsADirectoryError:
                raise CaptureError(f"{path}: is a directory, not a capture file") from None
            except OSError as e:
                raise CaptureError(f"{path}: cannot open: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise CaptureError(f"{path}: is a directory, not a capture file")
            self.buf = b""
            regular = stat.S_ISREG(st.st_mode)
            kind = None
            if regular and st.st_size > 0:
                self.size = st.st_size
                kind = compression_of(os.pread(fd, 6, 0))
                if kind is None:
                    try:
                        self.buf = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
                    except (OSError, ValueError):
                        self.size = None
            elif regular and path != "-":
                raise CaptureError(f"{path}: empty file, not a capture")
            else:
                self.size = None
            self._pipe = not regular
            if self.size is None or kind is not None:  # a pipe, FIFO, stdin, compressed: a stream
                self._fd = fd if path == "-" else os.dup(fd)
                self._own_fd = path != "-"
                sfd = self._fd
                self._read = lambda n: os.read(sfd, n)
                self.buf, _, n = self._refill(b"", 0, 24)
                if n == 0:
                    raise CaptureError(f"{label}: empty input, not a capture")
                kind = compression_of(bytes(self.buf[:6]))
                if kind is not None:
                    self._decompress(kind, label)
        except OSError as e:
            self._close_fd()
            raise CaptureError(f"{label}: cannot read: {e.strerror}") from None
        except BaseException:
            self._close_fd()
            raise
        finally:
            if path != "-":
                os.close(fd)
        head = bytes(self.buf[:4])
        if head in PCAP_MAGIC:
            self.format = "pcap"
        elif head == PCAPNG_SHB:
            self.format = "pcapng"
        else:
            self.close()
            inside = f"{self.compression}-compressed, but " if self.compression else ""
            raise CaptureError(f"{label}: {inside}not a pcap or pcapng file (starts with {head.hex()})")
        self.linktypes: list[int] = []
        self._released = 0  # bytes at the start of the mapping given back (see _release)
        if self.format == "pcap":
            if len(self.buf) < 24:
                n = len(self.buf)
                self.close()
                raise CaptureError(f"{label}: pcap header cut short ({n} of 24 bytes)")
            e, _ = PCAP_MAGIC[head]
            self.linktypes = [struct.unpack_from(e + "I", self.buf, 20)[0] & 0x0FFFFFFF]

    def _decompress(self, kind: str, label: str) -> None:
        """The stream is compressed: read on through a decompressor, from the bytes
        already read."""
        try:
            dec = Decompressor(kind, self._read, bytes(self.buf))
        except ImportError as e:
            raise CaptureError(f"{label}: {kind}-compressed, and the {e.name} module to read "
                               "it is not installed") from None
        self._dec = dec
        self.compression = kind
        self._read = dec.read
        self._base = 0
        self.buf, _, n = self._refill(b"", 0, 24)
        if n < 4:
            why = dec.damage or "no capture inside"
            raise CaptureError(f"{label}: {kind}-compressed; {why}")

    @property
    def streaming(self) -> bool:
        """Read as a stream from stdin, a pipe or a FIFO: no size known in advance."""
        return self._fd is not None and self._pipe

    @property
    def offset(self) -> int:
        """Bytes consumed, for progress (of the file as it is: compressed bytes for a
        compressed capture), updated every PROGRESS_EVERY packets."""
        if self._dec is not None:
            return self._dec.consumed
        return self._pos

    @offset.setter
    def offset(self, value: int) -> None:
        self._pos = value

    def __iter__(self) -> Iterator[tuple[float, int, bytes]]:
        if self.format == "pcap":
            return self._pcap()
        return self._pcapng()

    def scan(self, scan: Callable, chunk: int) -> Iterator[bool | None]:
        """Classic pcap, the records handed over a run at a time rather than one by one:
        ``scan(buf, off, size, big_endian, resolution, linktype, limit)`` decodes up
        to ``limit`` whole records of ``buf[off:size]`` and returns (offset after
        them, records decoded); it stops before a record that is not whole there,
        which this reader then reads on for, or finds cut (as iteration does).
        Yields True after every ``chunk`` records, and None when a stream has
        nothing more right now (with :attr:`idle_marks`; the count of ``chunk``
        starts again after it)."""
        if self.format != "pcap":
            raise ValueError("scan: classic pcap only")
        return self._pcap_scan(scan, chunk)

    def close(self) -> None:
        if isinstance(self.buf, mmap.mmap):
            self.buf.close()
        self._close_fd()

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None and self._own_fd:
            os.close(fd)

    def _refill(self, buf, off: int, need: int):
        """Stream mode: keep ``buf[off:]`` and read on until ``need`` bytes are there
        (or the stream ends). Returns the new (buf, off, size). A mapped file is
        all there already: returned as it is."""
        read = self._read
        if read is None:
            return buf, off, len(buf)
        keep = buf[off:]
        self._base += off
        parts = [keep]
        have = len(keep)
        while have < need:
            chunk = read(max(CHUNK, need - have))
            if not chunk:
                break
            parts.append(chunk)
            have += len(chunk)
        buf = self.buf = b"".join(parts) if len(parts) > 1 else keep
        return buf, 0, have

    def _would_block(self) -> bool:
        """Stream mode with idle_marks: nothing to read right now."""
        if not self.idle_marks or self._fd is None or not self._pipe:
            return False
        if self._dec is not None and self._dec.pending:
            return False
        try:
            return not select.select([self._fd], [], [], 0)[0]
        except (OSError, ValueError):
            return False

    def _release(self, off: int) -> None:
        """Give back the pages of the mapping already read: a capture is read once,
        front to back, and its mapped pages would otherwise count in this process's
        resident memory (the whole file, by the end)."""
        b = self.buf
        done = off & ~(mmap.PAGESIZE - 1)
        if isinstance(b, mmap.mmap) and done - self._released >= RELEASE_BYTES:
            try:
                b.madvise(mmap.MADV_DONTNEED, self._released, done - self._released)
            except (OSError, ValueError, AttributeError):
                return
            self._released = done

    def _cut(self, detail: str) -> None:
        self.truncated = True
        self.truncated_detail = detail

    def _damaged(self) -> None:
        """At the end: a compressed stream that broke off or went corrupt is a
        truncated capture (its damage said first, then where the records stop)."""
        dec = self._dec
        if dec is not None and dec.damage:
            d = self.truncated_detail
            self._cut(dec.damage + (f"; {d}" if d else ""))

    # --- classic pcap ----------------------------------------------------------
    def _corrupt(self, off: int, caplen: int) -> bool:
        """The record at ``off`` claims more than any real one (64 MiB): said so."""
        if caplen > 0x4000000:
            self._cut(f"record at byte {self._base + off} claims {caplen} bytes: corrupt")
            return True
        return False

    def _cut_short(self, off: int, caplen: int, size: int) -> bool:
        """The last record, at ``off``, is not whole in the ``size`` bytes there: said so."""
        if off + 16 + caplen > size:
            self._cut(f"last record at byte {self._base + off} cut short "
                      f"({size - off - 16} of {caplen} bytes)")
            return True
        return False

    def _stray(self, off: int, size: int) -> None:
        if off != size:
            self._cut(f"{size - off} stray bytes after the last record")

    def _pcap_end(self, n: int, off: int) -> None:
        self.packets = n
        self.offset = self._base + off
        self._damaged()

    def _pcap(self) -> Iterator[tuple[float, int, bytes]]:
        buf = self.buf
        size = len(buf)
        e, res = PCAP_MAGIC[bytes(buf[:4])]
        hdr = struct.Struct(e + "IIII")
        unpack = hdr.unpack_from
        lt = self.linktypes[0]
        off = 24
        n = 0
        stream = self._read is not None
        try:
            while True:
                if off + 16 > size:
                    if not stream:
                        break
                    if self._would_block():
                        self.offset = self._base + off
                        yield None  # type: ignore[misc]
                    buf, off, size = self._refill(buf, off, 16)
                    if off + 16 > size:
                        break
                sec, frac, caplen, _orig = unpack(buf, off)
                end = off + 16 + caplen
                if self._corrupt(off, caplen):
                    return
                if end > size:
                    if stream:
                        buf, off, size = self._refill(buf, off, 16 + caplen)
                        end = off + 16 + caplen
                    if self._cut_short(off, caplen, size):
                        return
                frame = buf[off + 16:end]
                off = end
                n += 1
                if not n & PROGRESS_EVERY:
                    self.offset = self._base + off
                    if not n & 0x3FFF:
                        self._release(off)
                yield sec + frac * res, lt, frame
            self._stray(off, size)
        finally:
            self._pcap_end(n, off)

    def _pcap_scan(self, scan: Callable, chunk: int) -> Iterator[bool | None]:
        buf = self.buf
        size = len(buf)
        e, res = PCAP_MAGIC[bytes(buf[:4])]
        big = e == ">"
        unpack = struct.Struct(e + "IIII").unpack_from
        lt = self.linktypes[0]
        off = 24
        n = 0
        left = chunk  # records before the next True
        stream = self._read is not None
        try:
            while True:
                off, k = scan(buf, off, size, big, res, lt, left)
                if k:
                    before, n = n, n + k
                    self.offset = self._base + off
                    if n >> 14 != before >> 14:
                        self._release(off)
                    left -= k
                    if not left:
                        left = chunk
                        yield True
                    continue
                # the record at off is not whole in buf: the end, a cut, or more to read
                if off + 16 > size:
                    if not stream:
                        break
                    if self._would_block():
                        self.offset = self._base + off
                        left = chunk
                        yield None
                    buf, off, size = self._refill(buf, off, 16)
                    if off + 16 > size:
                        break
                    continue
                caplen = unpack(buf, off)[2]
                if self._corrupt(off, caplen):
                    return
                if stream:
                    buf, off, size = self._refill(buf, off, 16 + caplen)
                if self._cut_short(off, caplen, size):
                    return
            self._stray(off, size)
        finally:
            self._pcap_end(n, off)

    # --- pcapng ----------------------------------------------------------------
    def _pcapng(self) -> Iterator[tuple[float, int, bytes]]:
        buf = self.buf
        size = len(buf)
        off = 0
        n = 0
        e = "<"
        stream = self._read is not None
        ifaces: list[tuple[int, float]] = []  # (linktype, seconds per tick)
        try:
            while True:
                if off + 12 > size:
                    if not stream:
                        break
                    if self._would_block():
                        self.offset = self._base + off
                        yield None  # type: ignore[misc]
                    buf, off, size = self._refill(buf, off, 12)
                    if off + 12 > size:
                        break
                btype_raw = buf[off:off + 4]
                if btype_raw == PCAPNG_SHB:
                    bom = buf[off + 8:off + 12]
                    if bom == b"\x4d\x3c\x2b\x1a":
                        e = "<"
                    elif bom == b"\x1a\x2b\x3c\x4d":
                        e = ">"
                    else:
                        raise CaptureError(f"{self.path}: pcapng section at byte {self._base + off} "
                                           "has a bad byte-order magic")
                    ifaces = []
                btype, blen = struct.unpack_from(e + "II", buf, off)
                if blen < 12 or blen % 4:
                    self._cut(f"block at byte {self._base + off} has a bad length {blen}")
                    return
                if off + blen > size:
                    if stream and blen <= 0x4000000:
                        buf, off, size = self._refill(buf, off, blen)
                    if off + blen > size:
                        self._cut(f"last block at byte {self._base + off} cut short ({size - off} of {blen} bytes)")
                        return
                body = off + 8
                if blen < _MIN_BLOCK.get(btype, 12):  # too short for its own fixed fields
                    self.skipped_blocks += 1
                elif btype == 6:  # enhanced packet block
                    iid, th, tl, caplen, _orig = struct.unpack_from(e + "IIIII", buf, body)
                    if iid < len(ifaces) and body + 20 + caplen <= off + blen:
                        lt, tick = ifaces[iid]
                        ts = ((th << 32) | tl) * tick
                        if ts > MAX_TS:
                            self.bad_timestamps += 1
                        else:
                            n += 1
                            if not n & PROGRESS_EVERY:
                                self.offset = self._base + off
                                if not n & 0x3FFF:
                                    self._release(off)
                            yield ts, lt, buf[body + 20:body + 20 + caplen]
                    else:
                        self.skipped_blocks += 1
                elif btype == 3:  # simple packet block: no timestamp
                    if ifaces:
                        orig = struct.unpack_from(e + "I", buf, body)[0]
                        caplen = min(orig, blen - 16)
                        n += 1
                        yield 0.0, ifaces[0][0], buf[body + 4:body + 4 + caplen]
                elif btype == 1:  # interface description
                    lt = struct.unpack_from(e + "H", buf, body)[0]
                    ifaces.append((lt, self._tsresol(buf, e, body + 8, off + blen - 4)))
                    self.linktypes.append(lt)
                elif btype == 2:  # obsolete packet block
                    iid, _drops, th, tl, caplen = struct.unpack_from(e + "HHIII", buf, body)
                    if iid < len(ifaces) and body + 20 + caplen <= off + blen:
                        lt, tick = ifaces[iid]
                        ts = ((th << 32) | tl) * tick
                        if ts > MAX_TS:
                            self.bad_timestamps += 1
                        else:
                            n += 1
                            yield ts, lt, buf[body + 20:body + 20 + caplen]
                    else:
                        self.skipped_blocks += 1
                off += blen
            if off != size:
                self._cut(f"{size - off} stray bytes after the last block")
        finally:
            self.packets = n
            self.offset = self._base + off
            self._damaged()

    @staticmethod
    def _tsresol(buf, e: str, off: int, end: int) -> float:
        while off + 4 <= end:
            code, ln = struct.unpack_from(e + "HH", buf, off)
            if code == 0:
                break
            if code == 9 and ln >= 1:
                v = buf[off + 4]
                return 2.0 ** -(v & 0x7F) if v & 0x80 else 10.0 ** -v
            off += 4 + ((ln + 3) & ~3)
        return 1e-6
