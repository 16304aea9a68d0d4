"""The dns-events topic as a Source: this process is one member of a consumer group.

Each poll returns records of the partitions assigned to this member; each
partition is a lane (its own pipeline, see detector/commands/consume.py for
why). A record is one event (wire version 1) or a pack of events of one
partition (version 2); a record that is not JSON, has another version or does
not decode is a counted skip, never a stop. Offsets are committed when the
driver acks a batch, that is after the events before them were processed and
the sinks flushed (at least once); on a rebalance the revoked partitions'
lanes are closed and their offsets committed before they are given up.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from collections.abc import Iterator

from detector import errors
from detector.errors import DetectorError
from detector.events import ConnEvent, WireVersionError, events_from_record, wire_type_error, wire_types_ok
from detector.sources.base import Batch, Source

log = logging.getLogger(__name__)

JOIN_GRACE = 30.0  # max_idle does not end a run that is still joining the group
POLL_RECORDS = 2000  # records per poll (a packed record holds up to 500 events)

try:
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - orjson is a dependency
    from json import loads as _loads


class KafkaSource(Source):
    name = "kafka"
    acks = True
    isolate_errors = True
    unit = "events"

    def __init__(self, conf, group: str, *, max_idle: float | None = None,
                 max_events: int | None = None) -> None:
        from kafka import KafkaConsumer
        from kafka.errors import KafkaConfigurationError, KafkaError

        self.conf = conf
        self.group = group
        self.topic = conf.events_topic
        self.max_idle = max_idle
        self.max_events = max_events
        self.processed = 0  # events handed to a pipeline
        self.conns = 0  # DoT/DoH connection records handed to a pipeline
        self._had_conns = False  # the last decoded poll held some
        self.skipped: Counter = Counter()
        self.lag: dict[int, int] = {}
        self.offsets: dict = {}  # TopicPartition -> next offset to commit
        self.committed: dict = {}
        self.assigned = False
        self.last = time.monotonic()  # last record (or assignment)
        self.first_unix: float | None = None
        self.last_unix: float | None = None
        self._wire_warned = False
        self._closed = False
        if log.getEffectiveLevel() > logging.DEBUG:
            logging.getLogger("kafka").setLevel(logging.CRITICAL)
        try:
            self.consumer = KafkaConsumer(**conf.consumer_kwargs(group),
                                          bootstrap_timeout_ms=max(5000, conf.max_block_ms))
        except KafkaConfigurationError as e:
            raise DetectorError(f"bad Kafka configuration: {e}", errors.USAGE) from None
        except KafkaError as e:
            raise DetectorError(f"cannot reach Kafka at {conf.bootstrap}: {type(e).__name__}", errors.SINK,
                                "check --kafka and that the broker runs") from None

    # --- group membership ---------------------------------------------------------
    def _listener(self):
        from kafka import ConsumerRebalanceListener

        src = self

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                revoked = set(revoked)
                if src.on_revoke is not None:
                    src.on_revoke([tp.partition for tp in revoked])
                src._commit(revoked)
                for tp in revoked:
                    src.offsets.pop(tp, None)
                    src.committed.pop(tp, None)
                # a rebalance follows: rejoining takes seconds, which max_idle must not count
                src.assigned = False
                src.last = time.monotonic()
                if revoked:
                    print(f"consume: revoked partitions {sorted(tp.partition for tp in revoked)}",
                          file=sys.stderr, flush=True)

            def on_partitions_assigned(self, assigned):
                src.last = time.monotonic()
                src.assigned = True
                print(f"consume: group {src.group}: assigned partitions "
                      f"{sorted(tp.partition for tp in assigned)} of {src.topic}", file=sys.stderr, flush=True)

        return Listener()

    # --- reading ------------------------------------------------------------------
    def batches(self) -> Iterator[Batch]:
        c = self.consumer
        c.subscribe([self.topic], listener=self._listener())
        while True:
            got = c.poll(timeout_ms=500, max_records=POLL_RECORDS)
            now = time.monotonic()
            if got:
                self.last = now
                if self.first_unix is None:
                    self.first_unix = time.time()
                items = list(got.items())
                for i, (tp, msgs) in enumerate(items):
                    evs = self._decode(tp, msgs)
                    # ack (flush sinks, commit) once per poll, after its last partition
                    yield Batch(evs, lane=tp.partition, mark=True if i == len(items) - 1 else None,
                                conns=self._had_conns)
                self.last_unix = time.time()  # the poll's records are processed and acked
                for tp, _ in items:
                    hw = c.highwater(tp)
                    if hw is not None:
                        self.lag[tp.partition] = max(0, hw - self.offsets.get(tp, 0))
            else:
                yield Batch([], mark=True)  # idle: flushing lets a spooling sink see the broker is back
            if self.max_events is not None and self.processed + sum(self.skipped.values()) >= self.max_events:
                return
            if self.max_idle is not None:
                # joining a group takes a few seconds: do not count that as idle
                limit = self.max_idle if self.assigned else max(self.max_idle, JOIN_GRACE)
                if now - self.last >= limit:
                    return

    def _decode(self, tp, msgs) -> list:
        out: list = []
        skipped = self.skipped
        conns = 0
        self._had_conns = False
        for m in msgs:
            try:
                evs = events_from_record(_loads(m.value))
                for ev in evs:
                    if ev.__class__ is ConnEvent:  # a DoT/DoH connection start (checked on reading)
                        conns += 1
                    elif not wire_types_ok(ev):  # a number where a name belongs, ...: not ours to run
                        raise TypeError(wire_type_error(ev))
                out += evs
            except WireVersionError as e:
                skipped["wire_version"] += 1
                if not self._wire_warned:
                    self._wire_warned = True
                    print(f"detector: error: {self.topic}[{tp.partition}]@{m.offset}: {e}; "
                          "such records are skipped and counted", file=sys.stderr)
            except (ValueError, UnicodeDecodeError):  # orjson.JSONDecodeError is a ValueError
                skipped["not_json"] += 1
            except (KeyError, TypeError, IndexError, AttributeError):
                skipped["bad_record"] += 1
        if msgs:
            self.offsets[tp] = msgs[-1].offset + 1
        self.processed += len(out) - conns
        self.conns += conns
        self._had_conns = conns > 0
        return out

    def failed(self, n: int = 1) -> None:
        """The pipeline raised on an event (counted; the rest of the batch goes on)."""
        self.processed -= n
        self.skipped["pipeline_error"] += n

    # --- committing ---------------------------------------------------------------
    def ack(self, batch: Batch | None) -> None:
        self._commit(None)

    def _commit(self, tps) -> None:
        from kafka.structs import OffsetAndMetadata

        todo = {tp: off for tp, off in self.offsets.items()
                if (tps is None or tp in tps) and self.committed.get(tp) != off}
        if not todo:
            return
        try:
            self.consumer.commit({tp: OffsetAndMetadata(off, "", -1) for tp, off in todo.items()})
            self.committed.update(todo)
        except Exception as e:  # noqa: BLE001  e.g. CommitFailedError after a rebalance
            log.warning("offset commit failed (%s); those records may be processed again", e)

    def stats(self) -> dict[str, int]:
        return {"records": self.processed, "conns": self.conns, **{f"skipped_{k}": v for k, v in self.skipped.items()}}

    def lags(self) -> list[tuple[str, int, int]]:
        return [(self.topic, p, n) for p, n in list(self.lag.items())]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.consumer.close(autocommit=False)
        except Exception as e:  # noqa: BLE001
            log.debug("consumer close: %s", e)
