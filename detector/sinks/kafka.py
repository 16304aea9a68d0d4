"""Kafka outputs: alerts to ``dns-alerts`` (:class:`KafkaSink`) and enriched DNS
events to ``dns-events`` (:class:`EventSink`), through kafka-python.

Delivery: acks=all, retries, idempotence (tansu and Apache Kafka both accept
it), a small linger. Alerts are never lost: a record the broker does not ack
(down at start, killed mid-run, timed out) goes to the on-disk spool
(:mod:`detector.sinks.spool`); while records wait there, new ones queue behind
them so order is kept; every ``PROBE_INTERVAL`` s the sink probes the broker
and, once it answers, re-sends the spool oldest first, deleting segments only
after they were acked. A later run drains what an earlier one left. Nothing
blocks for long: ``max_block_ms``, ``request_timeout_ms`` and ``delivery_timeout_ms``
bound every call, and ``close()`` is bounded too.

Keys: alerts are keyed by rule, entity and campaign (``rule|entity|key``), so
every revision of one alert lands on one partition, in order. Events are keyed
by their detection entity (the process ``name[pid]`` when known, else the
client address: ``DnsEvent.entity``), and DoT/DoH connection records travel
in the same packs, so everything a per-entity window holds (tunneling and
exfiltration per entity and domain, DGA campaigns per host, per-process
health, resolver policy and bypass) lands on one partition and therefore one
consumer of the group, which then raises the alerts one replay would
(tests/test_group_parity.py). Aggregates across clients (floods against one
domain, a resolver's overall health, prevalence) see their partition's share,
see detector/commands/consume.py.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from detector import errors
from detector.errors import DetectorError
from detector.events import (UNANSWERED, WIRE_VERSION, conn_entity, conn_to_wire, events_to_record,
                              to_wire_fields)
from detector.kafkaconf import KafkaConfig
from detector.sinks.base import Sink
from detector.sinks.spool import Spool, SpoolError, SpoolFull

log = logging.getLogger(__name__)

PROBE_INTERVAL = 2.0  # seconds between broker probes while spooling
REAP_EVERY = 512  # check delivery futures every N sends
DRAIN_CHUNK = 2000
FLUSH_TIMEOUT = 10.0  # bound on one flush; unacked records then go to the spool

ACTIVE: list[ReliableProducer] = []  # every producer this process made (metrics)


_INF = float("inf")


def _json_dumps(v: Any) -> bytes:
    """The fallback when orjson refuses: ASCII JSON, so a string that is not valid
    UTF-8 (a lone surrogate from a path with a stray byte) is sent as an escape."""
    return json.dumps(v, separators=(",", ":")).encode()


try:  # orjson: several times faster; same JSON for our documents
    import orjson

    def _dumps(v: Any) -> bytes:
        try:
            return orjson.dumps(v)
        except (TypeError, ValueError):  # an int over 64 bits, a lone surrogate, a non-str key
            return _json_dumps(v)
except ImportError:  # pragma: no cover - orjson is a dependency
    _dumps = _json_dumps


def _key(k: str | bytes | None) -> bytes | None:
    if k is None or k == "":
        return None
    return k if isinstance(k, bytes) else str(k).encode()


def _warn(msg: str) -> None:
    print(f"detector: warning: {msg}", file=sys.stderr, flush=True)


class ReliableProducer(Sink):
    """Produce JSON records to one topic; spool what the broker does not ack."""

    def __init__(self, conf: KafkaConfig, topic: str, *, what: str = "alerts",
                 linger_ms: int | None = None, batch_size: int | None = None,
                 reap_every: int = REAP_EVERY) -> None:
        self.conf = conf
        self.reap_every = reap_every  # sends between delivery checks (unacked records stay in memory)
        self.topic = topic
        self.what = what
        self.name = f"kafka:{topic}"
        self.sent = 0
        self.spooled = 0
        self.replayed = 0
        self.failed = 0
        self.send_errors = 0
        self.spool_full = False
        self._extra = {}
        if linger_ms is not None:
            self._extra["linger_ms"] = linger_ms
        if batch_size is not None:
            self._extra["batch_size"] = batch_size
        try:
            self.spool = Spool(Path(conf.spool_dir) / conf.cluster_key, topic, conf.spool_max_bytes)
        except SpoolError as e:
            raise DetectorError(str(e), errors.SINK, "pass --spool-dir DIR (a writable folder)") from None
        if log.getEffectiveLevel() > logging.DEBUG:
            # kafka-python logs every refused connection; our own warnings say what matters
            logging.getLogger("kafka").setLevel(logging.CRITICAL)
        self.pending: deque[tuple[Any, Any, Any]] = deque()
        self.producer = None
        self.spooling = False
        self._next_probe = 0.0
        self._closed = False
        self._warned_down = False
        self._warned_cluster = False
        ACTIVE.append(self)
        old = sorted((Path(conf.spool_dir) / topic).glob("seg-*.jsonl"))
        if old:  # the layout before a folder per cluster: which cluster they were for is unknown
            _warn(f"{len(old)} spool segment(s) in {old[0].parent} were written by an older version "
                  f"and are not re-sent on their own: move them into {self.spool.dir} if they are "
                  f"{self.what} for {conf.bootstrap}")
        if self._connect():
            if not self.spool.records:
                self.spool.claim(self._cluster_id())  # this folder now belongs to that cluster
            else:
                n = self.spool.records
                self._recover(probe=False)
                if not self.spooling:
                    _warn(f"{self.topic}: re-sent {n:,} spooled record(s) from an earlier run")
        else:
            self._down("cannot connect")

    # --- connection -----------------------------------------------------------------
    def _connect(self) -> bool:
        from kafka import KafkaProducer
        from kafka.errors import KafkaConfigurationError, KafkaError

        kw = self.conf.producer_kwargs()
        kw.update(self._extra)
        kw["bootstrap_timeout_ms"] = self.conf.max_block_ms
        try:
            self.producer = KafkaProducer(value_serializer=_dumps, key_serializer=_key, **kw)
            return True
        except KafkaConfigurationError as e:
            raise DetectorError(f"bad Kafka configuration: {e}", errors.USAGE) from None
        except (KafkaError, OSError, ValueError) as e:
            log.debug("producer for %s: %s", self.conf.bootstrap, e)
            self.producer = None
            return False

    def _cluster_id(self) -> str | None:
        """The id of the cluster the producer reached (None before its first metadata)."""
        md = getattr(self.producer, "_metadata", None)
        cid = getattr(md, "cluster_id", None)
        if cid is None and self.producer is not None:
            try:
                self.producer.partitions_for(self.topic)  # one metadata request, bounded by max_block_ms
            except Exception as e:  # noqa: BLE001  KafkaTimeoutError
                log.debug("metadata of %s: %s", self.topic, e)
            cid = getattr(md, "cluster_id", None)
        return cid

    def _reachable(self) -> bool:
        for s in self.conf.servers:
            host, _, port = s.rpartition(":")
            try:
                with socket.create_connection((host.strip("[]"), int(port)), timeout=0.5):
                    return True
            except OSError:
                continue
        return False

    def _down(self, why: str) -> None:
        if not self.spooling:
            self.spooling = True
            if not self._warned_down:
                self._warned_down = True
                _warn(f"Kafka {self.conf.bootstrap} unreachable or topic {self.topic} missing ({why}): "
                      f"{self.what} go to the spool "
                      f"{self.spool.dir} and are re-sent when it is back")
        self._next_probe = time.monotonic() + PROBE_INTERVAL

    # --- writing -------------------------------------------------------------------
    def write(self, doc: dict[str, Any], key: str | None = None) -> None:
        if self.spooling:
            self._to_spool(key, doc)
            if time.monotonic() >= self._next_probe:
                self._recover()
            return
        from kafka.errors import KafkaError

        try:
            fut = self.producer.send(self.topic, value=doc, key=key)
        except (KafkaError, OSError) as e:  # KafkaTimeoutError after max_block_ms: no metadata
            self.send_errors += 1
            self._down(type(e).__name__)
            self._to_spool(key, doc)
            return
        self.pending.append((key, doc, fut))
        if len(self.pending) >= self.reap_every:
            self._reap(block=False)
            # a backlog of unacked sends and a broker that refuses connections: stop
            # piling up in memory, move them to the spool now
            if len(self.pending) >= 4 * self.reap_every and time.monotonic() >= self._next_probe:
                self._next_probe = time.monotonic() + 1.0
                if not self._reachable():
                    self._reap(block=True)

    def _to_spool(self, key, doc) -> None:
        try:
            self.spool.append(key, doc)
            self.spooled += 1
        except SpoolFull as e:
            self.failed += 1
            if not self.spool_full or self.failed % 1000 == 1:
                log.error("%s: record DROPPED (%d so far): %s", self.topic, self.failed, e)
            self.spool_full = True
        except OSError as e:  # a full or failing disk: the record is lost, counted, said once
            self.failed += 1
            if self.failed == 1 or self.failed % 1000 == 0:
                log.error("%s: cannot write the spool %s: %s: record DROPPED (%d so far)",
                          self.topic, self.spool.dir, e.strerror or e, self.failed)

    def _reap(self, block: bool) -> None:
        """Account for finished sends, in order; failed ones go to the spool."""
        if block and self.pending and self.producer is not None:
            self._flush_bounded()
        p = self.pending
        while p:
            key, doc, fut = p[0]
            if not fut.is_done:
                if not block:
                    return
                self.send_errors += 1
                self._down("no ack in time")
                self._to_spool(key, doc)
            elif fut.succeeded():
                self.sent += 1
            else:
                self.send_errors += 1
                self._down(type(fut.exception).__name__)
                self._to_spool(key, doc)
            p.popleft()

    def _flush_bounded(self) -> bool:
        """Flush in short slices; give up early when the broker stops answering TCP."""
        deadline = time.monotonic() + FLUSH_TIMEOUT
        while time.monotonic() < deadline:
            try:
                self.producer.flush(timeout=0.5)
                return True
            except Exception as e:  # noqa: BLE001  KafkaTimeoutError: not all acked yet
                log.debug("flush: %s", e)
            if not self._reachable():
                return False
        return False

    def _recover(self, probe: bool = True) -> None:
        """Broker back? re-send the spool oldest first, then send directly again."""
        self._next_probe = time.monotonic() + PROBE_INTERVAL
        if probe and not self._reachable():
            return
        self._reap(block=True)
        # a fresh producer: the old one's idempotence state belongs to the broker that died
        if self.producer is not None and self.spooling:
            self._drop_producer()
        if self.producer is None and not self._connect():
            self._down("cannot connect")
            return
        self.spool.close()
        before = self.spool.records
        other = self.spool.claim(self._cluster_id())
        if other is not None:
            if not self._warned_cluster:
                self._warned_cluster = True
                _warn(f"{self.spool.dir} holds {self.what} kept for Kafka cluster {other}, but "
                      f"{self.conf.bootstrap} is cluster {self._cluster_id()}: they are not sent here "
                      f"(move the folder away or point --kafka at that cluster)")
            self._down("another cluster")
            return
        try:
            self.replayed += self.spool.drain(self._send_batch)
        except OSError as e:
            log.error("spool %s: %s", self.spool.dir, e)
        if self.spool.segments():
            self._down("re-send incomplete")
            if before:
                log.info("%s: spool drain incomplete (%d left)", self.topic, self.spool.records)
            return
        self.spooling = False
        self.spool_full = False
        if self._warned_down:
            _warn(f"Kafka {self.conf.bootstrap} is back: spooled {self.what} re-sent to {self.topic}")
            self._warned_down = False

    def _send_batch(self, records: list[tuple[str | None, Any]]) -> int:
        """Send spooled records; return how many leading ones were acked."""
        from kafka.errors import KafkaError

        done = 0
        for i in range(0, len(records), DRAIN_CHUNK):
            chunk = records[i:i + DRAIN_CHUNK]
            futs = []
            try:
                for k, v in chunk:
                    futs.append(self.producer.send(self.topic, value=v, key=k))
                self._flush_bounded()
            except (KafkaError, OSError) as e:
                log.debug("re-send: %s", e)
            for f in futs:
                if f.is_done and f.succeeded():
                    done += 1
                else:
                    return done
            if len(futs) < len(chunk):
                return done
        return done

    def _drop_producer(self) -> None:
        p, self.producer = self.producer, None
        if p is None:
            return
        try:
            p.close(timeout=1)
            return
        except Exception as e:  # noqa: BLE001  KafkaTimeoutError: records it could not deliver
            log.debug("closing producer: %s", e)
        # those records are already in the spool: close without sending them
        sender = getattr(p, "_sender", None)
        try:
            if sender is not None:
                sender.force_close()
                sender.join(1)
            p._unregister_cleanup()
            p._closed = True
        except Exception as e:  # noqa: BLE001
            log.debug("force-closing producer: %s", e)

    # --- lifecycle -----------------------------------------------------------------
    def flush(self) -> None:
        if self._closed:
            return
        self._reap(block=True)
        if self.spooling and time.monotonic() >= self._next_probe:
            self._recover()

    def close(self) -> None:
        if self._closed:
            return
        self._reap(block=True)
        if self.spooling:
            self._recover()
        self._closed = True
        self.spool.close()
        self._drop_producer()
        # what is left in the spool, or lost, the command reports through failure()

    @property
    def failure_code(self) -> int:
        return errors.SINK if self.failed else errors.PENDING

    def failure(self) -> str | None:
        """Lost records (spool full or unwritable): exit 5; records kept in the spool,
        not delivered by the end of the run: exit 6 (a later run re-sends them)."""
        if self.failed:
            return (f"Kafka {self.topic}: {self.failed:,} {self.what} record(s) lost: the spool "
                    f"{self.spool.dir} was full or unwritable")
        if self.spool.records:
            return (f"Kafka {self.conf.bootstrap}: {self.spool.records:,} {self.what} record(s) not "
                    f"delivered to {self.topic}, kept in the spool {self.spool.dir}; the next run "
                    f"with --kafka {self.conf.bootstrap} re-sends them")
        return None

    def counters(self) -> dict[str, int]:
        return {"sent": self.sent, "spooled": self.spooled, "replayed": self.replayed,
                "failed": self.failed, "send_errors": self.send_errors,
                "spool_depth": self.spool.records, "spool_bytes": self.spool._bytes}


class KafkaSink(ReliableProducer):
    """Alerts to the alerts topic (default ``dns-alerts``), keyed by rule, entity and campaign."""

    def __init__(self, conf: KafkaConfig) -> None:
        super().__init__(conf, conf.alerts_topic, what="alerts")


class EventSink(ReliableProducer):
    """DNS events to the events topic (``dns-events``), packed: one record holds up
    to ``PACK`` events of one partition (wire version 2, ``{"v": 2, "evs": [...]}``).

    An event sink after enrichment: :meth:`write_event` takes the DnsEvent itself
    (enrichment has set its entity). Each event goes to the partition its entity
    hashes to, as Kafka's default partitioner would place it, so one entity's
    window state lives in one consumer; :meth:`write_conn` puts a DoT/DoH
    connection into its entity's pack. A pack is keyed by its first event's key, which hashes to the
    same partition, so the spool re-sends it there too. A pack goes out when full,
    ``LINGER`` seconds after its first event, or on flush. Per-record overhead in
    the broker and in kafka-python is paid once per pack, not per event.
    Synthetic "unanswered" records are not published: every consumer derives
    them again from its own query timeouts.
    """

    wants_events = True
    PACK = 500
    LINGER = 0.05  # seconds

    def __init__(self, conf: KafkaConfig) -> None:
        super().__init__(conf, conf.events_topic, what="events", linger_ms=20, batch_size=1024 * 1024,
                         reap_every=8)
        self.published = 0
        self.published_conns = 0
        self._parts: list[int] | None = None  # the topic's partitions, once known
        self._part_of: dict[str, int] = {}  # key -> partition
        self._packs: dict[int, tuple[str, list]] = {}  # partition -> (first key, event dicts)
        self._due = _INF  # when the oldest open pack must go

    def write_event(self, ev) -> None:
        if ev.kind == UNANSWERED:
            return
        key = ev.entity or (ev.dst_ip if ev.flags & 0x8000 else ev.src_ip)
        self.published += 1
        pack = self._pack(key)
        if pack is None:  # partitions unknown (broker down): a record of one, keyed
            self.write(events_to_record([ev]), key)
            return
        evs = pack[1]
        evs.append(to_wire_fields(ev))
        if len(evs) >= self.PACK:
            self._send_pack(key)
        if time.monotonic() >= self._due:
            self._send_packs()

    def write_conn(self, c) -> None:
        """A DoT/DoH connection start: packed with its entity's events, in order (the
        bypass rule pairs a DoH hostname's lookup with the connection that follows)."""
        key = conn_entity(c)
        self.published_conns += 1
        pack = self._pack(key)
        if pack is None:
            self.write({"v": WIRE_VERSION, "evs": [], "conns": [conn_to_wire(c, 0)]}, key)
            return
        pack[2].append(conn_to_wire(c, len(pack[1])))
        if len(pack[2]) >= self.PACK:
            self._send_pack(key)
        if time.monotonic() >= self._due:
            self._send_packs()

    def _pack(self, key: str):
        """The open pack of the partition ``key`` goes to; None while partitions are unknown."""
        part = self._part_of.get(key)
        if part is None:
            part = self._partition(key)
            if part is None:
                return None
        pack = self._packs.get(part)
        if pack is None:
            pack = self._packs[part] = (key, [], [])
            if self._due == _INF:
                self._due = time.monotonic() + self.LINGER
        return pack

    def _send_pack(self, key: str) -> None:
        k, evs, conns = self._packs.pop(self._part_of[key])
        rec = {"v": WIRE_VERSION, "evs": evs}
        if conns:
            rec["conns"] = conns
        self.write(rec, k)

    def _partition(self, key: str) -> int | None:
        if self._parts is None:
            if self.spooling or self.producer is None:
                return None
            try:
                ps = self.producer.partitions_for(self.topic)
            except Exception as e:  # noqa: BLE001  KafkaTimeoutError: no metadata in max_block_ms
                log.debug("partitions of %s: %s", self.topic, e)
                ps = None
            if not ps:
                return None
            self._parts = sorted(ps)
        from kafka.partitioner.default import murmur2

        parts = self._parts
        part = parts[(murmur2(key.encode()) & 0x7FFFFFFF) % len(parts)]
        if len(self._part_of) >= 200_000:
            self._part_of.clear()
        self._part_of[key] = part
        return part

    def _send_packs(self) -> None:
        packs, self._packs = self._packs, {}
        self._due = _INF
        for key, evs, conns in packs.values():
            rec = {"v": WIRE_VERSION, "evs": evs}
            if conns:
                rec["conns"] = conns
            self.write(rec, key)

    def flush(self) -> None:
        if self._packs:
            self._send_packs()
        super().flush()

    def close(self) -> None:
        if self._packs and not self._closed:
            self._send_packs()
        super().close()
