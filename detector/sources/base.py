"""The one interface every input implements: pcap files, live eBPF capture and
the Kafka dns-events topic are all a :class:`Source` to :mod:`detector.sources.driver`.

A source yields :class:`Batch` objects: DnsEvent (and ConnEvent) records in
time order, the pipeline lane they belong to, and, from a live source with
nothing to say, the wall clock so time moves on. ``stats()`` gives the
source's own counters (packets, parse errors, lost events, skipped records)
for the summary and the metrics endpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Batch:
    #: DnsEvent and ConnEvent records, in time order
    events: list
    #: which pipeline: the Kafka partition; 0 for sources that feed one pipeline
    lane: int = 0
    #: the batch may hold ConnEvent records (the driver splits them out)
    conns: bool = False
    #: wall clock of an empty batch from a live source: the pipeline advances to it
    now: float | None = None
    #: findings the source itself raises (e.g. it shed load); reported as alerts
    findings: list = field(default_factory=list)
    #: source bookkeeping (Kafka: the offsets this batch ends at), passed back to ack()
    mark: Any = None


class Source:
    """Base of every input. Subclasses implement :meth:`batches`."""

    name = "source"
    #: True: after each batch the driver flushes the sinks and calls :meth:`ack`
    #: (Kafka commits offsets only for records whose alerts were delivered)
    acks = False
    #: True: an exception out of the pipeline is counted (:meth:`failed`) and the
    #: batch goes on; False: it stops the run (a bug in our own decoding)
    isolate_errors = False
    #: unit of :meth:`progress` counts, for the progress line
    unit = "events"
    #: set by the driver: ``on_revoke(lanes)`` closes those lanes' pipelines and
    #: flushes the sinks; a source calls it before giving the lanes up (rebalance)
    on_revoke: Callable[[list[int]], None] | None = None

    def batches(self) -> Iterator[Batch]:  # pragma: no cover - interface
        raise NotImplementedError

    def stats(self) -> dict[str, int]:
        """Counters for the summary and the metrics endpoint."""
        return {}

    def progress(self) -> tuple[str, float, int] | None:
        """(label, fraction done, count) for a progress line, or None when unknown."""
        return None

    def ack(self, batch: Batch) -> None:
        """The batch was processed and its alerts delivered (or spooled)."""

    def failed(self, n: int = 1) -> None:
        """``n`` events raised in the pipeline (with ``isolate_errors``)."""

    def close(self) -> None:
        pass

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
