"""The interface of every output: a JSON-able document in, delivered or spooled."""

from __future__ import annotations

from typing import Any

from detector import errors


class Sink:
    """Write one document (an alert or an event, already a dict) at a time.

    ``close()`` must flush: after it returns, every document written was either
    delivered or is kept somewhere durable (a spool) and reported.

    ``write()`` does not raise for a failed delivery (a full disk, a broker that
    went away): the sink counts what it lost and says so in :meth:`failure`.
    The commands ask every sink after closing it and exit with the sink's
    :attr:`failure_code`, so a loss is never silent.
    """

    name = "sink"
    #: exit code of the run when :meth:`failure` has something to say:
    #: errors.SINK (documents lost) or errors.PENDING (kept in a spool, not delivered)
    failure_code = errors.SINK

    def write(self, doc: dict[str, Any], key: str | None = None) -> None:  # pragma: no cover
        raise NotImplementedError

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.flush()

    def failure(self) -> str | None:
        """One line saying what was lost or not delivered, and where (e.g. "-o out.jsonl:
        12 of 40 alerts not written: No space left on device"); None when every
        document written was delivered. Asked after :meth:`close`."""
        return None
