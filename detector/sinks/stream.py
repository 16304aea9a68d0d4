"""JSON lines to stdout or to a file, with every lost line counted.

Lines are buffered (64 KiB; per line on a terminal) and written with
``os.write``, so a failed write (a full disk, ``-o /dev/full``, a closed
stdout) says exactly which lines did not make it: they are counted as lost,
by kind (alerts, events), and :meth:`StreamSink.failure` reports them at
the end (exit code 5). A failure is announced once on stderr when it first
happens, and later writes are tried again (a disk may get space back). A
line cut in the middle by a failed write is ended before the next one, so
the file stays one JSON document per line, the torn one aside.

A file is truncated when opened, unless ``append`` (``--append``).
``BrokenPipeError`` (``detector ... | head``: the reader went away) is not
counted: it propagates, and the command ends quietly.
"""

from __future__ import annotations

import io
import json
import os
import sys
from typing import IO, Any

from detector.errors import SINK, DetectorError
from detector.sinks.base import Sink

try:  # orjson: about 5x faster than the json module, same output for our documents
    import orjson

    _OPTS = orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE
    _odumps = orjson.dumps

    def _dumps(doc: dict[str, Any]) -> bytes:
        try:
            return _odumps(doc, default=str, option=_OPTS)
        except (TypeError, ValueError):  # e.g. a lone surrogate, an int over 64 bits
            return _json_line(doc)
except ImportError:  # pragma: no cover - orjson is a dependency; keep working without it
    _dumps = None  # type: ignore[assignment]
_json_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, default=str).encode


def _json_line(doc: dict[str, Any]) -> bytes:
    return (_json_encode(doc) + "\n").encode()


if _dumps is None:  # pragma: no cover
    _dumps = _json_line

BUFFER = 1 << 16  # bytes held before a write
#: plural nouns of the kinds of documents a sink counts
_NOUNS = {"alert": "alerts", "event": "events", "document": "documents"}


class StreamSink(Sink):
    """Write one JSON document per line to an open stream (stdout by default)."""

    name = "stdout"

    def __init__(self, stream: IO | None = None, line_flush: bool = False, label: str = "stdout") -> None:
        self.stream = stream if stream is not None else sys.stdout
        try:
            self.fd: int | None = self.stream.fileno()
            self.stream.flush()  # what was printed before goes first
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            self.fd = None  # e.g. io.StringIO: written as text
        self.label = label
        self.line_flush = line_flush
        self._buf: list[bytes] = []
        self._kinds: list[str] = []
        self._size = 0
        self.counts: dict[str, int] = {}  # documents written, by kind
        self.lost: dict[str, int] = {}  # of which not written
        self.error = ""  # why, the first time
        self._torn = False  # the last failed write ended mid-line
        self._broken = False  # the reader went away (EPIPE)
        self.close_error = ""

    @property
    def written(self) -> int:
        """Documents handed to this sink (delivered or lost)."""
        return sum(self.counts.values())

    def write(self, doc: dict[str, Any], key: str | None = None, kind: str = "document") -> None:
        if self._broken:
            return
        line = _dumps(doc)
        self._buf.append(line)
        self._kinds.append(kind)
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self._size += len(line)
        if self.line_flush or self._size >= BUFFER:
            self._drain()

    def flush(self) -> None:
        if self._buf:
            self._drain()

    def _drain(self) -> None:
        buf, kinds = self._buf, self._kinds
        self._buf, self._kinds, self._size = [], [], 0
        if self._broken or not buf:
            return
        data = b"".join(buf)
        lead = b"\n" if self._torn else b""
        if lead:
            data = lead + data
        done = 0
        try:
            if self.fd is None:
                self.stream.write(data.decode())
                self.stream.flush()
                done = len(data)
            else:
                view = memoryview(data)
                while done < len(data):
                    done += os.write(self.fd, view[done:])
            self._torn = False
        except BrokenPipeError:
            self._broken = True
            raise
        except OSError as e:
            whole = data[:done].count(b"\n") - (1 if lead and done else 0)
            if done:  # else the file ends as it did (torn or not)
                self._torn = data[done - 1:done] != b"\n"
            self._lose(kinds[max(whole, 0):], e.strerror or str(e))

    def _lose(self, kinds: list[str], why: str) -> None:
        if not self.error:
            self.error = why
            print(f"detector: warning: {self.label}: write failed: {why}; counting what is lost",
                  file=sys.stderr, flush=True)
        for k in kinds:
            self.lost[k] = self.lost.get(k, 0) + 1

    def failure(self) -> str | None:
        if not self.lost:
            if self.close_error:
                return f"{self.label}: closing failed ({self.close_error}): the last lines may be missing"
            return None
        parts = [f"{self.lost.get(k, 0):,} of {n:,} {_NOUNS.get(k, k + 's')}"
                 for k, n in self.counts.items() if n]
        return f"{self.label}: {' and '.join(parts)} not written: {self.error}"


class FileSink(StreamSink):
    """JSON lines into a file: truncated at open, or appended to with ``append``."""

    name = "file"

    def __init__(self, path: str, append: bool = False, option: str = "-o") -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | (0 if append else os.O_TRUNC)
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as e:
            raise DetectorError(f"{option} {path}: cannot write: {_open_reason(path, e)}", SINK) from None
        self.path = path
        self._own = fd
        super().__init__(_Fd(fd), label=f"{option} {path}")

    def close(self) -> None:
        try:
            self.flush()
        finally:
            fd, self._own = self._own, None
            if fd is not None:
                try:
                    os.close(fd)
                except OSError as e:  # e.g. a network file system reports the failure here
                    self.close_error = e.strerror or str(e)


class _Fd:
    """The least a StreamSink needs of an open descriptor."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def flush(self) -> None:
        pass


def _open_reason(path: str, e: OSError) -> str:
    import errno

    if e.errno == errno.ENOENT:
        parent = os.path.dirname(os.path.abspath(path))
        return f"folder {parent} does not exist"
    if e.errno == errno.EISDIR:
        return "is a directory"
    if e.errno == errno.ENOTDIR:
        return "a part of the path is not a folder"
    return (e.strerror or str(e)).lower()


def open_output(target: str, append: bool = False, option: str = "-o") -> StreamSink:
    """``-`` is stdout (flushed per line when it is a terminal); else a file."""
    if target == "-":
        if sys.stdout is None:  # started with fd 1 closed
            raise DetectorError("stdout is closed: nowhere to write (give -o FILE)", SINK)
        return StreamSink(sys.stdout, line_flush=sys.stdout.isatty(), label="stdout")
    return FileSink(target, append=append, option=option)
