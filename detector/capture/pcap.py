"""Read pcap and pcapng files: yields (timestamp, link type, frame bytes).

Both formats, either byte order, microsecond and nanosecond pcap, pcapng with
several interfaces (each with its own link type and timestamp resolution).
The file is memory-mapped, so a 1 GB capture costs no 1 GB of RAM.

A capture that ends mid-record is not an error: :attr:`PcapReader.truncated`
is set and iteration stops after the last whole packet. A file that is not a
capture raises :class:`CaptureError` with a one-line reason.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator

PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
RELEASE_BYTES = 8 << 20  # read pages given back in steps of this much


class CaptureError(ValueError):
    """The file is not a readable capture (the message says why)."""


class PcapReader:
    """Iterate over the packets of a pcap or pcapng file.

    >>> r = PcapReader("capture.pcap")
    >>> for ts, linktype, frame in r: ...
    >>> r.truncated, r.packets
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.truncated = False
        self.truncated_detail = ""
        self.packets = 0
        self.skipped_blocks = 0
        self.offset = 0  # bytes consumed, for progress
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise CaptureError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise CaptureError(f"{path}: is a directory, not a capture file") from None
        except OSError as e:
            raise CaptureError(f"{path}: cannot open: {e.strerror}") from None
        try:
            self.size = os.fstat(fd).st_size
            if self.size == 0:
                raise CaptureError(f"{path}: empty file, not a capture")
            try:
                self.buf = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError):  # pipes, special files
                with os.fdopen(os.dup(fd), "rb") as f:
                    self.buf = f.read()
                self.size = len(self.buf)
        finally:
            os.close(fd)
        head = self.buf[:4]
        if head in PCAP_MAGIC:
            self.format = "pcap"
        elif head == PCAPNG_SHB:
            self.format = "pcapng"
        elif head[:2] == b"\x1f\x8b":
            raise CaptureError(f"{path}: gzip-compressed; decompress it first (gunzip)")
        else:
            raise CaptureError(
                f"{path}: not a pcap or pcapng file (starts with {bytes(head).hex()})"
            )
        self.linktypes: list[int] = []
        self._released = 0  # bytes at the start of the mapping given back (see _release)
        if self.format == "pcap":
            if self.size < 24:
                raise CaptureError(f"{path}: pcap header cut short ({self.size} of 24 bytes)")
            e, _ = PCAP_MAGIC[head]
            self.linktypes = [struct.unpack_from(e + "I", self.buf, 20)[0] & 0x0FFFFFFF]

    def __iter__(self) -> Iterator[tuple[float, int, bytes]]:
        if self.format == "pcap":
            return self._pcap()
        return self._pcapng()

    def close(self) -> None:
        if isinstance(self.buf, mmap.mmap):
            self.buf.close()

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

    # --- classic pcap ----------------------------------------------------------
    def _pcap(self) -> Iterator[tuple[float, int, bytes]]:
        buf, size = self.buf, self.size
        e, res = PCAP_MAGIC[buf[:4]]
        hdr = struct.Struct(e + "IIII")
        unpack = hdr.unpack_from
        lt = self.linktypes[0]
        off = 24
        n = 0
        try:
            while off + 16 <= size:
                sec, frac, caplen, _orig = unpack(buf, off)
                end = off + 16 + caplen
                if caplen > 0x4000000:
                    self._cut(f"record at byte {off} claims {caplen} bytes: corrupt")
                    return
                if end > size:
                    self._cut(f"last record at byte {off} cut short ({size - off - 16} of {caplen} bytes)")
                    return
                frame = buf[off + 16:end]
                off = end
                n += 1
                if not n & 0x3FFF:
                    self._release(off)
                yield sec + frac * res, lt, frame
            if off != size:
                self._cut(f"{size - off} stray bytes after the last record")
        finally:
            self.packets = n
            self.offset = off

    # --- pcapng ----------------------------------------------------------------
    def _pcapng(self) -> Iterator[tuple[float, int, bytes]]:
        buf, size = self.buf, self.size
        off = 0
        n = 0
        e = "<"
        ifaces: list[tuple[int, float]] = []  # (linktype, seconds per tick)
        try:
            while off + 12 <= size:
                btype_raw = buf[off:off + 4]
                if btype_raw == PCAPNG_SHB:
                    bom = buf[off + 8:off + 12]
                    if bom == b"\x4d\x3c\x2b\x1a":
                        e = "<"
                    elif bom == b"\x1a\x2b\x3c\x4d":
                        e = ">"
                    else:
                        raise CaptureError(f"{self.path}: pcapng section at byte {off} has a bad byte-order magic")
                    ifaces = []
                btype, blen = struct.unpack_from(e + "II", buf, off)
                if blen < 12 or blen % 4:
                    self._cut(f"block at byte {off} has a bad length {blen}")
                    return
                if off + blen > size:
                    self._cut(f"last block at byte {off} cut short ({size - off} of {blen} bytes)")
                    return
                body = off + 8
                if btype == 6:  # enhanced packet block
                    iid, th, tl, caplen, _orig = struct.unpack_from(e + "IIIII", buf, body)
                    if iid < len(ifaces) and body + 20 + caplen <= off + blen:
                        lt, tick = ifaces[iid]
                        n += 1
                        self.offset = off
                        if not n & 0x3FFF:
                            self._release(off)
                        yield ((th << 32) | tl) * tick, lt, buf[body + 20:body + 20 + caplen]
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
                        n += 1
                        yield ((th << 32) | tl) * tick, lt, buf[body + 20:body + 20 + caplen]
                off += blen
            if off != size:
                self._cut(f"{size - off} stray bytes after the last block")
        finally:
            self.packets = n
            self.offset = off

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
