"""Long-running subprocesses whose pipes are read on threads.

A pipe nobody reads fills (64 KiB) and the process blocks writing to it: a
`detector live` blocked so cannot act on SIGINT nor end at its --duration. A
test starts the detector with `Drained` instead of `subprocess.Popen`, reads
its start-up lines with `read_until`, then calls `drain()`: from there both
pipes are read on threads until EOF, `tail()` gives the last stderr lines for a
failure message, and `communicate()` waits for the exit and returns what was
read, as Popen's does.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections import deque

#: stderr lines kept (the oldest are dropped beyond); stdout is kept whole
ERR_LINES = 10_000


class _Reader:
    """Reads a text pipe on a daemon thread until EOF, keeping the last `keep` lines
    (all of them when keep is None)."""

    def __init__(self, pipe, keep: int | None = None, head: str = ""):
        self.lines: deque[str] = deque(head.splitlines(keepends=True), maxlen=keep)
        self.lock = threading.Lock()
        self.pipe = pipe
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for line in self.pipe:
                with self.lock:
                    self.lines.append(line)
        finally:
            self.pipe.close()

    def text(self, last: int | None = None) -> str:
        with self.lock:
            lines = list(self.lines)
        return "".join(lines if last is None else lines[-last:])


class Drained(subprocess.Popen):
    """A Popen (text pipes) whose stdout and stderr are read on threads once `drain()` is called."""

    _out: _Reader | None = None
    _err: _Reader | None = None

    def read_until(self, marker: str, timeout: float) -> str:
        """stderr lines up to and with the first holding `marker`, or up to EOF or
        `timeout` seconds (checked between lines); before `drain()`."""
        t, head = time.monotonic(), ""
        while time.monotonic() - t < timeout:
            line = self.stderr.readline()
            head += line
            if marker in line or not line:
                break
        return head

    def drain(self, head: str = "") -> Drained:
        """Read both pipes on threads from now on; `head` (stderr already read) starts
        what `communicate()` and `tail()` give of stderr."""
        if self.stdout is not None:
            self._out = _Reader(self.stdout)
        if self.stderr is not None:
            self._err = _Reader(self.stderr, keep=ERR_LINES, head=head)
        return self

    def tail(self, n: int = 20) -> str:
        """The last `n` stderr lines read so far (`head` included)."""
        return self._err.text(n) if self._err is not None else ""

    def communicate(self, input=None, timeout=None):
        if self._out is None and self._err is None:
            return super().communicate(input, timeout)
        assert input is None, "a drained process takes no input"
        self.wait(timeout)  # TimeoutExpired as Popen.communicate; may be called again
        for r in (self._out, self._err):
            if r is not None:
                r.thread.join(timeout if timeout is not None else 30)
        return (self._out.text() if self._out is not None else None,
                self._err.text() if self._err is not None else None)
