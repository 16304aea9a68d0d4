"""Live eBPF capture as a Source: :class:`detector.capture.live.LiveCapture`, polled.

Each poll hands over what the ring-buffer reader thread decoded since the last
one (DnsEvent with the process, ConnEvent for DoT connects and connects to
flagged addresses); a quiet poll is
an empty batch with the wall clock, so query timeouts and windows run on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from detector.sources.base import Batch, Source

POLL_INTERVAL = 0.02  # seconds a quiet poll waits


class LiveSource(Source):
    name = "live"
    unit = "messages"

    def __init__(self, ports: frozenset[int], interval: float = POLL_INTERVAL, *,
                 drop_privileges: bool = True, any_port: bool = True, policy=None, tls: bool = False) -> None:
        """Loads and attaches the programs, then (``drop_privileges``) keeps only what
        the running sensor needs: see detector/capture/privileges.py. ``any_port``:
        DNS on other UDP ports too, recognized by content in the kernel. ``tls``: DoH and
        DoT in clear text from uprobes on libssl (detector/capture/tls.py). ``policy``:
        the resolver policy to audit or enforce in the kernel (resolver_policy.KernelPolicy)."""
        from detector.capture.live import LiveCapture

        self.cap = LiveCapture(ports=ports, drop_privileges=drop_privileges, any_port=any_port, policy=policy, tls=tls)
        self.interval = interval
        self._closed = False

    def start(self) -> None:
        """Start the ring-buffer reader (probes are attached from the constructor on)."""
        self.cap.start()

    def batches(self) -> Iterator[Batch]:
        self.start()
        poll = self.cap.poll
        interval = self.interval
        while True:
            evs = poll(interval)
            if evs:
                yield Batch(evs, conns=True)
            else:
                yield Batch(evs, now=time.time())

    def stats(self) -> dict[str, int]:
        return {**self.cap.stats, "lost_bpf_events": self.cap.lost, **self.cap.policy_counters()}

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.cap.close()
