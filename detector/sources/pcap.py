"""pcap and pcapng files as a Source: PcapReader frames through PacketDecoder.

Files are read one after the other, as one stream (time is each capture's
own). A batch holds the DNS messages and DoT/DoH connection starts of up to
``BATCH_PACKETS`` packets, in capture order. ``-`` is stdin, read as a
stream (pcap or pcapng): a batch also ends whenever the stream pauses. A file cut mid-record is not an
error: what came before the cut is processed and the file is listed in
:attr:`PcapSource.truncated` (exit code 3 in replay).
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator

from detector import errors
from detector.capture.layers import DEFAULT_PORTS, SUPPORTED_LINKTYPES, PacketDecoder
from detector.capture.pcap import CaptureError, PcapReader
from detector.errors import DetectorError
from detector.events import ConnEvent
from detector.sources.base import Batch, Source

BATCH_PACKETS = 2048

#: decoder counters that are bookkeeping, not skips or errors
_NOT_ERRORS = ("not_dns", "ip_fragment_held", "ip_reassembled")


class PcapSource(Source):
    name = "pcap"
    unit = "pkts"

    def __init__(self, paths: list[str], ports: frozenset[int] = DEFAULT_PORTS, *, conns: bool = True,
                 warn=None) -> None:
        self.paths = list(paths)
        #: bytes of all the files together (progress), None when one is a stream (stdin)
        self.total_bytes = check_inputs(self.paths)
        self.dec = PacketDecoder(ports, on_conn=self._on_conn if conns else None)
        self.truncated: list[str] = []
        #: captures refused (not a capture, unknown link type, broken mid-file): one line each
        self.refused: list[str] = []
        self.reader_skips: Counter = Counter()  # the readers' counted skips, all files
        self.warn = warn if warn is not None else _warn
        #: called when a stream (stdin) has nothing more for now, after the batch
        #: before it was handed on: the command flushes its sinks
        self.on_idle = None
        self._out: list = []
        self._has_conn = False
        self._reader: PcapReader | None = None
        self._done_bytes = 0  # bytes of the files already read
        self._label = self.paths[0] if self.paths else ""
        #: classic pcap records decoded a run at a time in C when it was built (False:
        #: frame by frame in Python, the reference tests/test_fast_path.py compares with)
        self.fast = True

    def _on_conn(self, ts, transport, ipv, src, sport, dst, dport) -> None:
        self._out.append(ConnEvent(ts, transport, ipv, src, sport, dst, dport))
        self._has_conn = True

    def _open(self, path: str) -> PcapReader:
        try:
            reader = PcapReader(path)
        except CaptureError as e:
            raise DetectorError(str(e), errors.USAGE) from None
        lts = reader.linktypes
        if reader.format == "pcap" and lts and lts[0] not in SUPPORTED_LINKTYPES:
            reader.close()
            raise DetectorError(_unknown_linktype(path, lts[0]), errors.USAGE)
        return reader

    def _take(self) -> Batch:
        b = Batch(self._out, conns=self._has_conn)
        self._out = []
        self._has_conn = False
        return b

    def batches(self) -> Iterator[Batch]:
        for path in self.paths:
            try:
                reader = self._reader = self._open(path)
            except DetectorError as e:
                if len(self.paths) == 1:
                    raise
                self._refuse(path, str(e))  # the others are still read
                continue
            self._label = _name(path)
            try:
                yield from self._read(reader)
            except CaptureError as e:  # broke mid-file (a second section with a bad magic...)
                self._refuse(path, f"{e}; the packets before it were processed")
            self._out.extend(self.dec.flush())  # messages held behind TCP holes
            if self._out:
                yield self._take()
            if reader.truncated:
                self.truncated.append(f"{_name(path)}: {reader.truncated_detail}")
                self.warn(f"{_name(path)} is truncated ({reader.truncated_detail}); "
                          "processed the packets before the cut")
            lts = reader.linktypes
            if reader.format == "pcapng" and lts and not any(lt in SUPPORTED_LINKTYPES for lt in lts):
                # as a classic pcap of that link type is refused: nothing here was readable
                self._refuse(path, _unknown_linktype(path, lts[0]))
            self.reader_skips["pcapng_bad_blocks"] += reader.skipped_blocks
            self.reader_skips["bad_timestamps"] += reader.bad_timestamps
            self._done_bytes += reader.offset
            reader.close()
            self._reader = None

    def _refuse(self, path: str, why: str) -> None:
        """A capture that could not be read (at all, or past some point): said at once,
        listed in the summary, exit 2 at the end; the run goes on with the next file."""
        self.refused.append(why)
        self.warn(f"{why}" if why.startswith(_name(path)) else f"{_name(path)}: {why}")

    def _read(self, reader: PcapReader) -> Iterator[Batch]:
        """The file's frames, decoded, in batches of BATCH_PACKETS packets. From
        stdin or a pipe, what is held also goes on whenever the stream pauses (a
        live `tcpdump -U -w -` gives its alerts as they happen)."""
        reader.idle_marks = reader.streaming
        if reader.format == "pcap" and self.dec.can_scan and self.fast:
            return self._scan(reader)
        return self._frames(reader)

    def _scan(self, reader: PcapReader) -> Iterator[Batch]:
        """:meth:`_read` for a classic pcap: the records decoded a run at a time in C
        (PacketDecoder.scan_pcap), the same events and batches as frame by frame."""
        dec = self.dec

        def scan(buf, off, size, big, res, lt, limit):
            return dec.scan_pcap(buf, off, size, big, res, lt, limit, self._out)

        for mark in reader.scan(scan, BATCH_PACKETS):
            if self._out:
                yield self._take()
            if mark is None and self.on_idle is not None:  # a stream with nothing right now
                self.on_idle()

    def _frames(self, reader: PcapReader) -> Iterator[Batch]:
        frame = self.dec.frame
        n = 0
        out = self._out
        for item in reader:
            if item is None:  # a stream with nothing to read right now
                n = 0
                if out:
                    yield self._take()
                    out = self._out
                if self.on_idle is not None:
                    self.on_idle()
                continue
            evs = frame(*item)
            if evs:
                out.extend(evs)
            n += 1
            if n >= BATCH_PACKETS:
                n = 0
                if out:
                    yield self._take()
                    out = self._out

    def progress(self) -> tuple[str, float | None, int, int] | None:
        """(file, fraction of the bytes of all files read or None for a stream,
        packets, bytes read)."""
        r = self._reader
        done = self._done_bytes + (r.offset if r is not None else 0)
        frac = None
        if self.total_bytes:
            frac = min(done / self.total_bytes, 1.0)
        return self._label, frac, self.dec.packets, done

    def errors(self) -> dict[str, int]:
        """Skips and parse errors by kind (for the summary)."""
        skipped = {k: v for k, v in self.dec.stats.items() if k not in _NOT_ERRORS}
        skipped.update((k, v) for k, v in self.reader_skips.items() if v)
        return skipped

    def stats(self) -> dict[str, int]:
        d = self.dec
        return {"packets": d.packets, "dns_messages": d.dns_messages,
                **{f"skipped_{k}": v for k, v in d.stats.items()}}

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def check_inputs(paths: list[str]) -> int | None:
    """Every input is there and readable before the first is read (a bad last
    file must not stop a run after the others' alerts went out). Returns the
    bytes of all files, or None when one is stdin (``-``, at most once)."""
    import os
    import stat

    total: int | None = 0
    if paths.count("-") > 1:
        raise DetectorError("-: stdin can be read only once", errors.USAGE)
    for p in paths:
        if p == "-":
            total = None
            continue
        try:
            st = os.stat(p)
        except FileNotFoundError:
            raise DetectorError(f"{p}: no such file", errors.USAGE) from None
        except OSError as e:
            raise DetectorError(f"{p}: cannot open: {e.strerror}", errors.USAGE) from None
        if stat.S_ISDIR(st.st_mode):
            raise DetectorError(f"{p}: is a directory, not a capture file", errors.USAGE,
                                f"give the files in it: {p.rstrip('/')}/*.pcap*")
        if not os.access(p, os.R_OK):
            raise DetectorError(f"{p}: cannot open: permission denied", errors.USAGE)
        if stat.S_ISREG(st.st_mode):
            if st.st_size == 0:
                raise DetectorError(f"{p}: empty file, not a capture", errors.USAGE)
            if total is not None:
                total += st.st_size
        else:  # a FIFO or a device: read as a stream, size unknown
            total = None
    return total


def _unknown_linktype(path: str, lt: int) -> str:
    return (f"{_name(path)}: unknown link type {lt}; supported: "
            + ", ".join(f"{k} {v}" for k, v in sorted(SUPPORTED_LINKTYPES.items())))


def _name(path: str) -> str:
    return "stdin" if path == "-" else path


def _warn(msg: str) -> None:
    print(f"detector: warning: {msg}", file=sys.stderr)
