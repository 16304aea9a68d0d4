"""pcap and pcapng files as a Source: PcapReader frames through PacketDecoder.

Files are read one after the other, as one stream (time is each capture's
own). A batch holds the DNS messages and DoT/DoH connection starts of up to
``BATCH_PACKETS`` packets, in capture order. A file cut mid-record is not an
error: what came before the cut is processed and the file is listed in
:attr:`PcapSource.truncated` (exit code 3 in replay).
"""

from __future__ import annotations

import sys
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
        self.dec = PacketDecoder(ports, on_conn=self._on_conn if conns else None)
        self.truncated: list[str] = []
        self.warn = warn if warn is not None else _warn
        self._out: list = []
        self._has_conn = False
        self._reader: PcapReader | None = None

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
            raise DetectorError(
                f"{path}: unknown link type {lts[0]}; supported: "
                + ", ".join(f"{k} {v}" for k, v in sorted(SUPPORTED_LINKTYPES.items())), errors.USAGE)
        return reader

    def _take(self) -> Batch:
        b = Batch(self._out, conns=self._has_conn)
        self._out = []
        self._has_conn = False
        return b

    def batches(self) -> Iterator[Batch]:
        dec = self.dec
        frame = dec.frame
        for path in self.paths:
            reader = self._reader = self._open(path)
            n = 0
            out = self._out
            for ts, lt, data in reader:
                evs = frame(ts, lt, data)
                if evs:
                    out.extend(evs)
                n += 1
                if n >= BATCH_PACKETS:
                    n = 0
                    if out:
                        yield self._take()
                        out = self._out
            self._out.extend(dec.flush())  # messages held behind TCP holes
            if self._out:
                yield self._take()
            if reader.truncated:
                self.truncated.append(f"{path}: {reader.truncated_detail}")
                self.warn(f"{path} is truncated ({reader.truncated_detail}); processed the packets before the cut")
            reader.close()
        self._reader = None

    def progress(self) -> tuple[str, float, int] | None:
        r = self._reader
        if r is None:
            return None
        return r.path, (r.offset / r.size if r.size else 1.0), self.dec.packets

    def errors(self) -> dict[str, int]:
        """Skips and parse errors by kind (for the summary)."""
        skipped = {k: v for k, v in self.dec.stats.items() if k not in _NOT_ERRORS}
        if self.dec.tcp.gaps:
            skipped["tcp_gaps"] = self.dec.tcp.gaps
        return skipped

    def stats(self) -> dict[str, int]:
        d = self.dec
        return {"packets": d.packets, "dns_messages": d.dns_messages,
                **{f"skipped_{k}": v for k, v in d.stats.items()}}

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def _warn(msg: str) -> None:
    print(f"detector: warning: {msg}", file=sys.stderr)
