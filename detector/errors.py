"""Exit codes scripts can rely on, and the error type that carries one."""

from __future__ import annotations

OK = 0
ALERTS = 1  # `--fail-on-alert`: the run worked and raised at least one alert
USAGE = 2  # bad arguments, missing/unreadable input file, not a capture, unknown link type
TRUNCATED = 3  # the capture ended mid-record: what was there was processed
RULES = 4  # a rule file is invalid
SINK = 5  # an output could not be written: alerts or events were lost (the message says how many)
PENDING = 6  # alerts not delivered yet: kept in the on-disk spool, sent on a later run
NOT_ROOT = 10  # live capture needs root / CAP_BPF+CAP_PERFMON+CAP_NET_ADMIN
NO_BCC = 11  # BCC (python3-bpfcc) is not installed
NO_HEADERS = 12  # kernel headers are missing
BPF_REJECTED = 13  # the verifier or the kernel refused a BPF program
MODEL = 14  # the model file is missing or was built for another feature version
INTERRUPTED = 130


class DetectorError(Exception):
    """An error to show the user as one line, exiting with ``code``."""

    def __init__(self, msg: str, code: int = USAGE, hint: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.hint = hint
