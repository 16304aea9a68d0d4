"""The interface of every output: a JSON-able document in, delivered or spooled."""

from __future__ import annotations

from typing import Any


class Sink:
    """Write one document (an alert or an event, already a dict) at a time.

    ``close()`` must flush: after it returns, every document written was either
    delivered or is kept somewhere durable (a spool) and reported.
    """

    name = "sink"

    def write(self, doc: dict[str, Any], key: str | None = None) -> None:  # pragma: no cover
        raise NotImplementedError

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.flush()
