"""JSON lines to stdout or to a file."""

from __future__ import annotations

import json
import sys
from typing import IO, Any

from detector.errors import SINK, DetectorError
from detector.sinks.base import Sink

try:  # orjson: about 5x faster than the json module, same output for our documents
    import orjson

    _OPTS = orjson.OPT_NON_STR_KEYS

    def _dumps(doc: dict[str, Any]) -> str:
        try:
            return orjson.dumps(doc, default=str, option=_OPTS).decode()
        except (TypeError, ValueError):  # e.g. a lone surrogate, an int over 64 bits
            return _json_dumps(doc)
except ImportError:  # pragma: no cover - orjson is a dependency; keep working without it
    _dumps = None  # type: ignore[assignment]
_json_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, default=str).encode
if _dumps is None:
    _dumps = _json_dumps


class StreamSink(Sink):
    """Write one JSON document per line to an open text stream."""

    name = "stdout"

    def __init__(self, stream: IO[str] | None = None, line_flush: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.line_flush = line_flush
        self.written = 0

    def write(self, doc: dict[str, Any], key: str | None = None) -> None:
        self.stream.write(_dumps(doc) + "\n")
        self.written += 1
        if self.line_flush:
            self.stream.flush()

    def flush(self) -> None:
        self.stream.flush()


class FileSink(StreamSink):
    """Append JSON lines to a file (created if missing)."""

    name = "file"

    def __init__(self, path: str) -> None:
        try:
            f = open(path, "a", encoding="utf-8", buffering=1 << 16)
        except OSError as e:
            raise DetectorError(f"cannot write {path}: {e.strerror}", SINK) from None
        super().__init__(f)
        self.path = path

    def close(self) -> None:
        self.stream.flush()
        self.stream.close()


def open_output(target: str) -> StreamSink:
    """``-`` is stdout (flushed per line when it is a terminal or a pipe reader wants it)."""
    if target == "-":
        return StreamSink(sys.stdout, line_flush=sys.stdout.isatty())
    return FileSink(target)
