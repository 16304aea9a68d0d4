"""An on-disk spool for Kafka records the broker did not take.

Layout: ``<spool_dir>/<cluster>/<topic>/seg-<time_ns>-<pid>.jsonl`` (the Kafka
sink names the cluster folder by its bootstrap addresses and records the
cluster's id in ``<cluster>/cluster-id`` once a broker answered, see
:meth:`Spool.claim`), append-only JSON
lines ``{"k": key, "v": value}``, one segment per writer run (rotated at
``SEGMENT_BYTES``). The writer holds an exclusive ``flock`` on its open
segment, flushes every write to the OS and fsyncs on rotation and close, so
a crash loses at most what the kernel had not written. Segments are drained
oldest first (the name sorts by creation time); a segment is deleted only
after every record in it was acked, and a partly sent one is rewritten with
the remainder. Segments locked by another live process are left alone, so
several detectors can share one spool folder. The spool is bounded: a write
that would exceed ``max_bytes`` is refused (``SpoolFull``), and the caller
reports it: nothing is dropped silently.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SEGMENT_BYTES = 16 * 1024 * 1024


class SpoolFull(Exception):
    pass


class SpoolError(Exception):
    pass


class Spool:
    def __init__(self, root: str | os.PathLike, topic: str, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.dir = Path(root) / topic
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SpoolError(f"cannot create spool folder {self.dir}: {e.strerror}") from None
        if not os.access(self.dir, os.W_OK):
            raise SpoolError(f"spool folder {self.dir} is not writable")
        self.max_bytes = max_bytes
        self._f = None
        self._path: Path | None = None
        self._size = 0
        self.records_written = 0
        self.full_refusals = 0
        self._bytes = self.bytes()  # running estimate (this process's view)
        self.records = self.depth()  # records waiting (this process's view)

    # --- which cluster ----------------------------------------------------------
    def claim(self, cluster_id: str | None) -> str | None:
        """The broker that answered is cluster ``cluster_id``. None when the waiting
        records may go there; else the id of the cluster they were kept for, and
        they must not be re-sent here. With nothing waiting, the folder now
        belongs to this cluster (the id is written down beside the topics)."""
        if not cluster_id:
            return None
        f = self.dir.parent / "cluster-id"
        try:
            mine = f.read_text().strip()
        except OSError:
            mine = ""
        if mine == cluster_id:
            return None
        if mine and any(self.dir.parent.glob("*/seg-*.jsonl")):  # any topic's records wait
            return mine
        try:
            f.write_text(cluster_id + "\n")
        except OSError as e:
            log.debug("spool %s: cannot record the cluster id: %s", f, e)
        return None

    # --- writing --------------------------------------------------------------
    def append(self, key: str | None, value: Any) -> None:
        """Append one record, whole or not at all: a write the disk cannot take
        (ENOSPC, EIO) is cut back to the last whole line and raised as OSError, so
        no half-written line is ever left. ASCII JSON: a string that is not valid
        UTF-8 (a path from /proc with a stray byte) is kept as an escape."""
        line = (json.dumps({"k": key, "v": value}, separators=(",", ":")) + "\n").encode()
        if self._bytes + len(line) > self.max_bytes:
            self.full_refusals += 1
            raise SpoolFull(f"spool {self.dir} is full ({self.max_bytes // (1024 * 1024)} MiB)")
        if self._f is None or self._size + len(line) > SEGMENT_BYTES:
            self._open_segment()
        fd = self._f.fileno()
        try:
            done = 0
            while done < len(line):
                done += os.write(fd, line[done:])
        except OSError:
            try:
                os.ftruncate(fd, self._size)  # back to the last whole record
            except OSError as e:
                log.error("spool %s: cannot cut a partial record: %s", self._path, e)
            raise
        self._size += len(line)
        self._bytes += len(line)
        self.records_written += 1
        self.records += 1

    def _open_segment(self) -> None:
        self.close()
        self._path = self.dir / f"seg-{time.time_ns():020d}-{os.getpid()}.jsonl"
        self._f = open(self._path, "ab", buffering=0)  # append() writes whole records itself
        fcntl.flock(self._f.fileno(), fcntl.LOCK_EX)
        self._size = 0

    def close(self) -> None:
        """fsync and release the open segment (it becomes drainable)."""
        f, self._f = self._f, None
        if f is not None:
            try:
                f.flush()
                os.fsync(f.fileno())
            finally:
                f.close()  # releases the flock
            _fsync_dir(self.dir)

    # --- reading --------------------------------------------------------------
    def segments(self) -> list[Path]:
        return sorted(p for p in self.dir.glob("seg-*.jsonl") if p != self._path or self._f is None)

    def bytes(self) -> int:
        n = 0
        for p in self.dir.glob("seg-*.jsonl"):
            try:
                n += p.stat().st_size
            except FileNotFoundError:
                pass
        return n

    def depth(self) -> int:
        """Records waiting (counts lines; cheap enough for a spool)."""
        n = 0
        for p in self.dir.glob("seg-*.jsonl"):
            try:
                with open(p, "rb") as f:
                    n += sum(1 for _ in f)
            except FileNotFoundError:
                pass
        return n

    def drain(self, send: Callable[[list[tuple[str | None, Any]]], int]) -> int:
        """Hand records to ``send`` segment by segment, oldest first.

        ``send(records)`` returns how many leading records were acked. Acked
        segments are deleted; a partly acked one is rewritten with the rest
        and draining stops there (order is kept). Returns records acked.
        """
        self.close()
        total = 0
        for seg in self.segments():
            try:
                fh = open(seg, "r+b")
            except FileNotFoundError:
                continue
            with fh:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # another live process is writing or draining it
                if not seg.exists():  # drained and deleted while we waited
                    continue
                records, bad = _parse(fh)
                if bad:
                    log.warning("spool segment %s: %d unreadable line(s) skipped (torn write?)", seg, bad)
                acked = send(records) if records else 0
                total += acked
                if acked >= len(records):
                    seg.unlink()
                    continue
                rest = records[acked:]
                tmp = seg.with_suffix(".tmp")
                with open(tmp, "wb") as out:
                    for k, v in rest:
                        out.write((json.dumps({"k": k, "v": v}, separators=(",", ":")) + "\n").encode())  # ASCII, as append
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, seg)
                _fsync_dir(self.dir)
                break
        self._bytes = self.bytes()
        self.records = max(0, self.records - total)
        return total

    def __iter__(self) -> Iterator[tuple[str | None, Any]]:
        for seg in self.segments():
            with open(seg, "rb") as fh:
                yield from _parse(fh)[0]


def _parse(fh) -> tuple[list[tuple[str | None, Any]], int]:
    out, bad = [], 0
    for line in fh:
        try:
            d = json.loads(line)
            out.append((d.get("k"), d["v"]))
        except (ValueError, KeyError, AttributeError):
            bad += 1
    return out, bad


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
