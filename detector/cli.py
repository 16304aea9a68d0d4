"""The `detector` command. Each subcommand lives in detector/commands/<name>.py and
exposes ``register(subparsers)``; this module only wires them and maps errors to
exit codes (see detector/errors.py)."""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import signal
import sys

# numpy's BLAS would start a thread pool on import, before live capture drops its
# privileges, and capabilities are per thread; our matrices are small anyway
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

from detector import errors

COMMANDS = ("demo", "replay", "live", "score", "eval", "consume", "top", "rules", "broker")

EPILOG = """\
examples:
  detector demo                                   embedded broker + live or bundled capture
  detector replay pcap capture.pcap               alerts as ECS JSON lines on stdout
  detector replay pcap a.pcapng --events -o out.jsonl --kafka localhost:9092
  detector live --duration 60 --events            eBPF capture with process attribution (root)
  echo example.com | detector score               DGA score per domain
  detector eval dga                               leave-family-out and leave-list-out evaluation
  detector consume --kafka kafka:9092 --group detectors   detection as a consumer group
  detector rules check rules/                     validate rule files

exit codes:
  0 ok   1 alerts raised (with --fail-on-alert)   2 usage / bad input file
  3 capture truncated (processed what was there)   4 invalid rules
  5 output failed: alerts or events lost (the message says how many and where)
  6 delivery pending: alerts not delivered, kept in the Kafka spool
  10 not root   11 BCC missing   12 kernel headers missing   13 BPF program refused
  14 model missing or wrong feature version        130 interrupted

`detector COMMAND --help` gives each command's options, examples and exit codes.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="detector",
        description="DNS threat detection: DGA, tunneling/exfiltration, unauthorized resolvers "
        "and DNS health, from live eBPF capture or pcap replay, alerts as ECS JSON.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="more logging (-vv: debug); anywhere on the command line")
    p.add_argument("--version", action="version", version=version_text())
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"detector.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"detector.commands.{name}":
                continue  # not built yet
            raise
        mod.register(sub)
    return p


def version_text() -> str:
    from detector import __version__
    from detector.detect.dga.features import FEATURE_VERSION
    from detector.events import WIRE_VERSION

    return (f"detector {__version__} (Python {sys.version.split()[0]}; DGA feature version "
            f"{FEATURE_VERSION}; dns-events wire version {WIRE_VERSION})")


def split_verbose(argv: list[str]) -> tuple[list[str], int]:
    """Take -v/-vv/--verbose from anywhere before a ``--``: the flag is global,
    and `detector replay pcap x.pcap -v` should work like `detector -v replay ...`."""
    out, n, rest = [], 0, False
    for a in argv:
        if rest:
            out.append(a)
        elif a == "--":
            rest = True
            out.append(a)
        elif a == "--verbose":
            n += 1
        elif len(a) > 1 and a[0] == "-" and a[1] != "-" and set(a[1:]) == {"v"}:
            n += len(a) - 1
        else:
            out.append(a)
    return out, n


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv, verbose = split_verbose(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    args.verbose = verbose
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return errors.USAGE
    # SIGTERM behaves like Ctrl-C: commands flush their sinks in `finally`.
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        return int(args.func(args) or 0)
    except errors.DetectorError as e:
        print(f"detector: error: {e}", file=sys.stderr)
        if e.hint:
            print(f"detector: hint: {e.hint}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("detector: interrupted", file=sys.stderr)
        return errors.INTERRUPTED
    except BrokenPipeError:
        # `detector ... | head`: the reader went away; not an error of ours.
        sys.stderr.close()
        return errors.OK
    except OSError as e:
        if e.errno not in _FULL:
            raise
        # a command printing to a full disk (`detector rules list > /full/x`)
        print(f"detector: error: writing output failed: {e.strerror}", file=sys.stderr)
        return errors.SINK


#: write errors that mean the output is lost (the disk or quota is full, the device failed)
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO})


def _sigterm(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt


def run() -> None:
    """The ``detector`` command: :func:`main`, then exit without tearing the
    interpreter down. A replay's state (windows, caches, the prevalence table) is
    millions of objects, and freeing them one by one at exit took longer than
    start-up. Exit handlers (an embedded broker, the BPF programs) still run and
    stdout is flushed first; a failed flush is an output failure, said in one line.
    With a thread other than daemons still running, the exit is the ordinary one."""
    import atexit
    import threading

    code = main()
    try:
        if sys.stdout is not None:  # None: started with stdout closed
            sys.stdout.flush()
    except BrokenPipeError:
        pass  # `detector ... | head`: the reader went away
    except OSError as e:
        print(f"detector: error: writing standard output failed: {e.strerror or e}", file=sys.stderr)
        code = errors.SINK
    main_thread = threading.main_thread()
    if any(t is not main_thread and not t.daemon for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()
    logging.shutdown()
    try:
        if sys.stderr is not None:
            sys.stderr.flush()
    except OSError:
        pass
    os._exit(code)


if __name__ == "__main__":
    run()
