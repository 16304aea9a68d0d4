"""The one loop that runs a :class:`~detector.sources.base.Source` through pipelines.

    lanes = Lanes(make_pipeline)            # one Pipeline per lane (Kafka partition)
    result = drive(source, lanes, outputs)  # until end of input, --duration or SIGINT

Per batch: DNS events go to ``Pipeline.process_many``, connection records to
``Pipeline.process_conn``, source findings to ``Pipeline.report``; an empty
batch from a live source advances the pipeline to the wall clock. A source
that acks (Kafka) gets :meth:`Source.ack` for each batch that carries a ``mark``,
after the sinks were flushed. At the
end (input exhausted, duration reached, Ctrl-C or SIGTERM) the source is
closed first, so a live capture detaches at once, then every pipeline closes
(open windows become alerts) and the sinks are flushed.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from detector.events import ConnEvent
from detector.sources.base import Batch, Source

log = logging.getLogger(__name__)

IDLE_FLUSH = 0.2  # seconds: a quiet live source flushes the sinks this often (packed events go out)


@dataclass
class DriveResult:
    seconds: float = 0.0
    batches: int = 0
    interrupted: bool = False
    pipeline_errors: int = 0
    #: monotonic time of the first and of the last batch that carried events
    first: float | None = None
    last: float | None = None


class Lanes:
    """One pipeline per lane, made on first use; closed lanes keep their stats."""

    def __init__(self, make: Callable[[], object]) -> None:
        self.make = make
        self.pipes: dict[int, object] = {}
        self.closed: list = []  # PipelineStats of closed lanes
        self.seen: set[int] = set()
        #: the detectors of the first pipeline (every lane runs the same rules)
        self.detectors: list = []

    @classmethod
    def single(cls, pipe) -> "Lanes":
        lanes = cls(lambda: pipe)
        lanes.get(0)
        return lanes

    def get(self, lane: int):
        p = self.pipes.get(lane)
        if p is None:
            p = self.pipes[lane] = self.make()
            self.seen.add(lane)
            if not self.detectors:
                self.detectors = p.detectors
        return p

    def close(self, lane: int) -> None:
        p = self.pipes.pop(lane, None)
        if p is not None:
            self.closed.append(p.close())

    def close_all(self) -> None:
        for lane in list(self.pipes):
            self.close(lane)

    def stats(self):
        """The counters of every lane, open and closed, summed."""
        from detector.pipeline.run import PipelineStats

        for p in self.pipes.values():  # repeats are counted by the suppressor as they happen
            sup = getattr(p, "suppressor", None)
            if sup is not None:
                p.stats.suppressed = sup.suppressed
        parts = self.closed + [p.stats for p in self.pipes.values()]
        if len(parts) == 1:
            return parts[0]
        tot = PipelineStats()
        for s in parts:
            for f in ("events", "queries", "responses", "unanswered", "findings", "alerts",
                      "suppressed", "detector_errors", "sink_errors"):
                setattr(tot, f, getattr(tot, f) + getattr(s, f))
            tot.alerts_by_rule.update(s.alerts_by_rule)
        return tot


class Progress:
    """A progress line on stderr: file, share of the bytes of all inputs read, a
    bar, packets, rate, ETA and alerts so far.

    On a terminal it is redrawn in place at most 4 times a second and erased
    at the end. ``force`` (``--progress``) shows it even when stderr is not a
    terminal: then one line a second, and a last one at the end. A source
    whose length is unknown (stdin) gets bytes and packets without share or ETA.
    """

    def __init__(self, enabled: bool, unit: str = "events", force: bool = False, stream=None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        try:
            self.tty = self.stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        self.enabled = bool(force or (enabled and self.tty))
        self.unit = unit
        self.interval = 0.25 if self.tty else 1.0
        self.last = 0.0
        self.shown = False
        self._width = 0
        self._last_args: tuple | None = None

    def show(self, source: Source, alerts: int, t0: float, *, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled:
            return
        self._last_args = (source, t0)
        if not final and now - self.last < self.interval:
            return
        p = source.progress()
        if p is None:
            return
        self.last = now
        line = self.line(p, alerts, now - t0, final)
        w = self.stream.write
        if self.tty:
            w("\r" + line.ljust(self._width))
            self._width = len(line)
        else:
            w(line + "\n")
        self.stream.flush()
        self.shown = True

    def line(self, p: tuple, alerts: int, elapsed: float, final: bool = False) -> str:
        label, frac, count = p[0], p[1], p[2]
        nbytes = p[3] if len(p) > 3 else None
        elapsed = max(elapsed, 1e-6)
        parts = [f"{label[-30:]:>30}"]
        if frac is not None:
            pct = 100.0 * frac
            parts.append(f"[{'#' * int(pct / 5):<20}] {pct:5.1f}%")
        elif nbytes is not None:
            parts.append(_size(nbytes))
        parts.append(f"{count:,} {self.unit}  {_rate(count / elapsed)} {self.unit}/s")
        if final:
            parts.append(f"done in {_clock(elapsed)}")
        elif frac is not None and frac > 0:
            parts.append(f"ETA {_clock(elapsed * (1 - frac) / frac)}")
        parts.append(f"{alerts:,} alerts")
        return "  ".join(parts)

    def done(self, alerts: int | None = None) -> None:
        if not self.enabled:
            return
        if self.tty:
            if self.shown:
                self.stream.write("\r" + " " * self._width + "\r")
                self.stream.flush()
        elif self._last_args is not None and alerts is not None:
            source, t0 = self._last_args
            self.show(source, alerts, t0, final=True)


def _rate(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.1f}M"
    if x >= 1e4:
        return f"{x / 1e3:.0f}k"
    if x >= 1e3:
        return f"{x / 1e3:.1f}k"
    return f"{x:.0f}"


def _size(n: int) -> str:
    for unit, f in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= f:
            return f"{n / f:.1f} {unit}"
    return f"{n} B"


def _clock(sec: float) -> str:
    sec = int(sec + 0.5)
    h, rem = divmod(sec, 3600)
    m, s_ = divmod(rem, 60)
    return f"{h}:{m:02d}:{s_:02d}" if h else f"{m}:{s_:02d}"


def feed(pipe, batch: Batch, on_error: Callable[[Exception], None] | None = None) -> None:
    """One batch into one pipeline, in order.

    With ``on_error``, an exception out of the pipeline is reported there and the
    batch goes on after the event that raised (a poisonous record from a topic
    must not stop a consumer); without, it propagates.
    """
    for f in batch.findings:
        pipe.report(f)
    evs = batch.events
    if on_error is not None:
        it = iter(evs)  # process_many consumes it; after an error, go on where it stopped
        while True:
            try:
                _feed(pipe, it, batch.conns)
                return
            except Exception as e:  # noqa: BLE001
                on_error(e)
    _feed(pipe, evs, batch.conns)


def _feed(pipe, evs, conns: bool) -> None:
    if not conns:
        pipe.process_many(evs)
        return
    run: list = []
    for ev in evs:
        if ev.__class__ is ConnEvent:
            if run:
                pipe.process_many(run)
                run = []
            pipe.process_conn(ev)
        else:
            run.append(ev)
    if run:
        pipe.process_many(run)


def drive(source: Source, lanes: Lanes, outputs=None, *, duration: float | None = None,
          progress: Progress | None = None, on_interrupt: Callable[[], None] | None = None) -> DriveResult:
    """Run ``source`` to its end (or ``duration`` seconds, or a signal); close everything.

    ``outputs`` (``flush()``, ``close()``) are the sinks behind the pipelines: flushed
    before each ack and on revoke, closed once after every pipeline closed.
    """
    res = DriveResult()
    t0 = time.monotonic()
    end = None if duration is None else t0 + duration

    def revoke(gone: list[int]) -> None:
        for lane in gone:
            lanes.close(lane)
        if outputs is not None:
            outputs.flush()

    source.on_revoke = revoke
    acks = source.acks
    on_error = None
    if source.isolate_errors:
        def on_error(e: Exception) -> None:
            source.failed(1)
            if res.pipeline_errors < 5:
                log.error("%s: processing an event failed: %s: %s", source.name, type(e).__name__, e,
                          exc_info=log.isEnabledFor(logging.DEBUG))
            res.pipeline_errors += 1
    flushed = t0
    try:
        for batch in source.batches():
            res.batches += 1
            if batch.events or batch.findings:
                now = time.monotonic()
                if res.first is None:
                    res.first = now
                res.last = now
                feed(lanes.get(batch.lane), batch, on_error)
            elif batch.now is not None:  # a quiet live source: time moves on, sinks deliver
                for p in list(lanes.pipes.values()) or [lanes.get(batch.lane)]:
                    p.advance(batch.now)
                if outputs is not None and not acks and time.monotonic() - flushed >= IDLE_FLUSH:
                    outputs.flush()
                    flushed = time.monotonic()
            if acks and batch.mark is not None:
                if outputs is not None:
                    outputs.flush()
                source.ack(batch)
            if progress is not None and progress.enabled:
                progress.show(source, lanes.stats().alerts, t0)
            if end is not None and time.monotonic() >= end:
                break
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (cli.py turns it into KeyboardInterrupt)
        res.interrupted = True
        if on_interrupt is not None:
            on_interrupt()
    finally:
        try:
            if progress is not None and progress.enabled and not progress.tty:
                # the last line counts what was read; the source still knows it
                progress.done(lanes.stats().alerts)
            elif progress is not None:
                progress.done()
            if not acks:
                source.close()  # first: a live capture detaches now, not after the flush
            lanes.close_all()
            if acks:
                if outputs is not None:
                    outputs.flush()
                source.ack(None)  # the end: commit what the closed lanes finished
        finally:
            if acks:
                source.close()
            if outputs is not None:
                outputs.close()
    res.seconds = time.monotonic() - t0
    return res
