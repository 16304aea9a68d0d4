"""`detector demo`: the main job on an embedded default.

Starts the embedded Kafka-protocol broker, runs the pipeline on live eBPF
capture when this host allows it (root, BCC, kernel headers; a loopback
``demo-bot`` process then plays a DGA walk and a DNS tunnel so there is
something to catch, see detector/demo_traffic.py), otherwise on the
bundled capture (detector/data/demo.pcap, synthetic: a DGA, a tunnel, a
resolver bypass and a sick resolver among ordinary browsing), prints the
alerts, and reads them back from the ``dns-alerts`` topic to show they arrived.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time

from detector import errors
from detector.paths import bundled

DEMO_ALLOWLIST = "demo-allowlist.yaml"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="embedded broker + live capture (or the bundled capture): see it work",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  detector demo                      live capture when possible, else the bundled capture\n"
        "  detector demo --source pcap --no-broker\n"
        "  detector demo --pcap capture.pcap  your own capture through the embedded broker\n\n"
        "exit codes: those of `detector replay pcap` or `detector live` (see `detector --help`);\n"
        "5 also when no alert reached the embedded broker's topic")
    p.add_argument("--source", choices=("auto", "live", "pcap"), default="auto",
                   help="auto: live capture when root and BCC allow, else the bundled capture")
    p.add_argument("--pcap", metavar="FILE", help="replay this capture instead of the bundled one")
    p.add_argument("--duration", type=float, default=20.0, metavar="SEC",
                   help="live capture length (default 20 s)")
    p.add_argument("--format", choices=("ecs", "jsonl", "ocsf"), default="ecs",
                   help="ecs: Elastic Common Schema 9.4 (default); jsonl: flat records; ocsf: OCSF 1.8 "
                   "(DNS Activity 4003 events, Detection Finding 2004 alerts)")
    p.add_argument("--no-broker", action="store_true", help="skip the embedded broker")
    p.add_argument("--no-sample", action="store_true",
                   help="live: do not start the demo-bot (sample DGA and tunnel traffic on loopback)")
    p.set_defaults(func=run)


def _say(msg: str) -> None:
    print(f"\033[1m==> {msg}\033[0m" if sys.stderr.isatty() else f"==> {msg}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    source = args.source
    if source == "auto":
        source = "pcap" if args.pcap else ("live" if _live_possible() else "pcap")
    broker = None
    if not args.no_broker:
        from detector.broker import EmbeddedBroker

        broker = EmbeddedBroker(topics={"dns-alerts": 1, "dns-events": 1})
        broker.start()
        _say(f"embedded Kafka broker (tansu) on {broker.bootstrap}, topic dns-alerts")
    traffic = None
    try:
        if source == "live" and not args.no_sample:
            traffic = _SampleTraffic().start()
        argv = _pipeline_argv(args, source, broker, traffic)
        from detector.cli import main as cli_main

        _say("running: detector " + " ".join(argv))
        code = cli_main(argv)
        if traffic is not None:
            traffic.stop()
        if broker is not None:
            n = _read_back(broker.bootstrap)
            _say(f"{n} alert(s) read back from topic dns-alerts on {broker.bootstrap}")
            if code in (errors.OK, errors.ALERTS) and n == 0 and _expected_alerts(source):
                print("detector: error: no alert reached the topic", file=sys.stderr)
                return errors.SINK
        return code
    finally:
        if traffic is not None:
            traffic.stop()
        if broker is not None:
            broker.stop()


def _expected_alerts(source: str) -> bool:
    return source == "pcap"


class _SampleTraffic:
    """The loopback responder, and the ``demo-bot`` child once the probes are armed."""

    def __init__(self) -> None:
        from detector.demo_traffic import Responder

        self.responder = Responder()
        self.port = self.responder.port
        self.child = None
        self._thread = threading.Thread(target=self._launch, name="demo-bot-launcher", daemon=True)
        self._done = threading.Event()

    def start(self) -> "_SampleTraffic":
        self.responder.start()
        # started now, told to go once the probes are armed: after loading them the
        # sensor drops its privileges and may no longer exec (capture/privileges.py)
        self.child = subprocess.Popen([sys.executable, "-m", "detector.demo_traffic", "--wait", str(self.port)],
                                      stdin=subprocess.PIPE)
        self._thread.start()
        return self

    def _launch(self) -> None:
        from detector.commands.live import ARMED

        while not ARMED.wait(0.2):
            if self._done.is_set():
                return
        time.sleep(0.5)  # the reader thread is draining by now
        _say(f"starting demo-bot: a DGA walk and a DNS tunnel to 127.0.0.1:{self.port} (loopback only)")
        try:
            self.child.stdin.write(b"go\n")
            self.child.stdin.close()
        except OSError as e:  # the bot is gone already
            _say(f"demo-bot did not start: {e}")

    def stop(self) -> None:
        self._done.set()
        if self.child is not None and self.child.stdin is not None and not self.child.stdin.closed:
            try:
                self.child.stdin.close()  # never told to go: it exits
            except OSError:
                pass
        if self.child is not None and self.child.poll() is None:
            self.child.terminate()
            try:
                self.child.wait(5)
            except subprocess.TimeoutExpired:
                self.child.kill()
        self.responder.stop()


def _pipeline_argv(args: argparse.Namespace, source: str, broker, traffic=None) -> list[str]:
    rules = ["--rules", str(_rules_dir()), "--rules", str(bundled(DEMO_ALLOWLIST))]
    kafka = ["--kafka", broker.bootstrap] if broker is not None else []
    common = ["--format", args.format] + rules + kafka
    if source == "live":
        _say(f"live eBPF capture for {args.duration:.0f} s (root, BCC): DNS with the process behind it")
        ports = ["--ports", f"53,{traffic.port}"] if traffic is not None else []
        return ["live", "--duration", str(args.duration), "--events"] + ports + common
    pcap = args.pcap or str(bundled("demo.pcap"))
    _say(f"replaying {pcap}")
    return ["replay", "pcap", pcap] + common


def _rules_dir():
    from detector.ruleset import default_rules_dir

    return default_rules_dir()


def _live_possible() -> bool:
    try:
        from detector.capture import live
    except ImportError:
        return False
    check = getattr(live, "live_capture_available", None)
    if check is None:
        return False
    if check():
        return True
    try:
        live.check_requirements()
        why = "requirements not met"
    except Exception as e:  # noqa: BLE001 - only for the message
        why = str(e)
    _say(f"live capture not possible here ({why}); using the bundled capture")
    return False


def _read_back(bootstrap: str, timeout: float = 10.0) -> int:
    from kafka import KafkaConsumer

    c = KafkaConsumer("dns-alerts", bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                      enable_auto_commit=False, consumer_timeout_ms=3000,
                      value_deserializer=lambda b: json.loads(b))
    n = 0
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            got = c.poll(timeout_ms=1000)
            if not got and n:
                break
            n += sum(len(v) for v in got.values())
    finally:
        c.close()
    return n

