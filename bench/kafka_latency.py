#!/usr/bin/env python3
"""End-to-end alert latency and consumer throughput through Kafka, same run.

Topology (as plain processes, on the embedded tansu broker):

  this script (the sensor: EventSink, paced) --dns-events (4 partitions)-->
      detector consume x2 (group) --dns-alerts--> reader (this script)

1. Latency: publishes --rate events/s for --seconds (DNS queries + responses
   for benign names, --alert-share of queries for denylisted domains, each
   from a new client so each raises an alert). Every event's ts is the wall
   clock at publish, as a live sensor's packet timestamp. Latency of an alert =
   its record's CreateTime on dns-alerts (the detector's producer append) minus
   the packet timestamp. Prints p50/p99 (target p99 <= 1 s).
2. Throughput: preloads --preload events on a fresh topic (packed, as the
   sensor's EventSink writes them), then times one `detector consume`, two in
   one group, and one with the denylist rule only (the consume path's own
   ceiling), as events/s between first and last record, and the peer: a bare
   kafka-python consumer that only reads and JSON-decodes the same records.

Prints each consumer's peak RSS (from its summary).

    .venv/bin/python bench/kafka_latency.py [--rate 1000] [--seconds 10] [--preload 60000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from detector.broker import EmbeddedBroker  # noqa: E402
from detector.capture.layers import DEFAULT_PORTS, PacketDecoder  # noqa: E402
from detector.capture.pcapwrite import dns_query, dns_response, eth_ip, udp  # noqa: E402
from detector.kafkaconf import KafkaConfig  # noqa: E402
try:  # noqa: E402
    from detector.dns.names import split_domain
except ImportError:  # before the registered-domain code moved
    from detector.pipeline.enrich import split_domain
from detector.sinks.kafka import EventSink  # noqa: E402

DETECTOR = [sys.executable, "-m", "detector"]
RULE = """\
id: bench-deny
title: bench denylist
detector: denylist
severity: high
technique: {id: T1071.004, name: "Application Layer Protocol: DNS"}
params: {domains: [evil-bench.com]}
"""


def make_events(n_pairs: int, alert_share: float) -> tuple[list, int]:
    """Decoded DnsEvents: n_pairs query/response pairs; returns (events, alerts expected)."""
    dec = PacketDecoder(DEFAULT_PORTS)
    evs, alerts = [], 0
    every = max(1, round(1 / alert_share)) if alert_share > 0 else 0
    for i in range(n_pairs):
        bad = every and i % every == 0
        cli = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{1 + (i & 127)}" if bad else f"192.168.{(i >> 8) & 15}.{1 + (i & 127)}"
        name = f"c{i}.evil-bench.com" if bad else f"www{i % 5000}.site{i % 700}.com"
        alerts += bool(bad)
        sp = 20000 + i % 40000
        for fr in (eth_ip(cli, "10.0.0.53", 17, udp(sp, 53, dns_query(i & 0xFFFF, name))),
                   eth_ip("10.0.0.53", cli, 17, udp(53, sp, dns_response(i & 0xFFFF, name, 1, [(1, b"\x01\x02\x03\x04")])))):
            evs.extend(dec.frame(0.0, 1, fr) or ())
    for ev in evs:  # what the sensor's pipeline does before its event sink
        ev.subdomain, ev.registered_domain, ev.suffix = split_domain(ev.questions[0].name)
    return evs, alerts


def start_consumers(work: Path, boot: str, group: str, n: int, topic: str, idle: float,
                    all_rules: bool = True) -> list:
    procs = []
    rules = ["--rules", str(REPO / "rules")] if all_rules else []
    for i in range(n):
        err = open(work / f"{group}{i}.err", "w")
        procs.append(subprocess.Popen(
            DETECTOR + ["consume", "--kafka", boot, "--group", group, "--events-topic", topic,
                        *rules, "--rules", str(work / "deny.yaml"),
                        "--spool-dir", str(work / "spool"), "--no-stdout", "--max-idle", str(idle), "-q",
                        "--summary-json", str(work / f"{group}{i}.json")],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=err))
    return procs


def wait_balanced(work: Path, group: str, n: int, parts: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = []
        for i in range(n):
            lines = [ln for ln in (work / f"{group}{i}.err").read_text().splitlines() if "assigned partitions" in ln]
            got.append(json.loads(lines[-1].split("assigned partitions ")[1].split(" of ")[0]) if lines else None)
        if all(got) and sorted(sum(got, [])) == list(range(parts)):
            return
        time.sleep(0.2)
    raise SystemExit(f"group {group} never balanced")


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(p / 100 * len(s))) - 1))]


def latency_phase(work, b, args) -> dict:
    from kafka import KafkaConsumer, TopicPartition

    conf = KafkaConfig(bootstrap=b.bootstrap, spool_dir=str(work / "spool"))
    n_pairs = int(args.rate * args.seconds / 2)
    evs, expected = make_events(n_pairs, args.alert_share)
    procs = start_consumers(work, b.bootstrap, "lat", 2, "dns-events", 4)
    wait_balanced(work, "lat", 2, 4)
    lat, seen = [], set()
    stop = threading.Event()

    def reader():
        c = KafkaConsumer(bootstrap_servers=b.bootstrap, group_id=None, enable_auto_commit=False)
        tp = TopicPartition("dns-alerts", 0)
        c.assign([tp])
        c.seek_to_beginning(tp)
        while not stop.is_set():
            for _, ms in c.poll(timeout_ms=200).items():
                for m in ms:
                    d = json.loads(m.value)
                    if d["event"]["id"] in seen:
                        continue
                    seen.add(d["event"]["id"])
                    ts = datetime.fromisoformat(d["@timestamp"].replace("Z", "+00:00")).timestamp()
                    lat.append(m.timestamp / 1000 - ts)
        c.close()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    pub = EventSink(conf)
    t0 = time.monotonic()
    per_tick = args.rate / 100
    sent = 0.0
    i = 0
    while i < len(evs):
        sent += per_tick
        while i < len(evs) and i < sent:
            ev = evs[i]
            ev.ts = time.time() + (0.002 if ev.qr else 0.0)  # the response 2 ms after its query
            pub.write_event(ev)
            i += 1
        t0 += 0.01
        time.sleep(max(0.0, t0 - time.monotonic()))
    pub.close()
    deadline = time.monotonic() + 30
    while len(seen) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
    stop.set()
    t.join(5)
    for p in procs:
        p.wait(timeout=120)
    return {"events": len(evs), "alerts_expected": expected, "alerts_seen": len(seen),
            "p50_ms": round(1000 * pct(lat, 50), 1) if lat else None,
            "p99_ms": round(1000 * pct(lat, 99), 1) if lat else None,
            "max_ms": round(1000 * max(lat), 1) if lat else None}


def throughput_phase(work, b, args) -> dict:
    from kafka import KafkaConsumer, TopicPartition

    topic = "dns-events-tp"
    b.create_topic(topic, 4)
    conf = KafkaConfig(bootstrap=b.bootstrap, spool_dir=str(work / "spool"), events_topic=topic)
    evs, _ = make_events(args.preload // 2, args.alert_share)
    pub = EventSink(conf)
    t = time.time()
    for ev in evs:
        ev.ts = t
        t += 0.0005
        pub.write_event(ev)
    pub.close()
    out = {"preloaded": len(evs)}
    runs = [("consumers_1", 1, True), ("consumers_2", 2, True), ("consumers_1_denylist", 1, False)]
    for name, n, all_rules in runs:
        procs = start_consumers(work, b.bootstrap, name, n, topic, 3, all_rules)
        for p in procs:
            p.wait(timeout=600)
        sums = [json.loads((work / f"{name}{i}.json").read_text()) for i in range(n)]
        done = sum(s["processed"] for s in sums)
        span = max(s["last_record_unix"] for s in sums) - min(s["first_record_unix"] for s in sums)
        out[name] = {"processed": done, "events_per_s": round(done / span) if span > 0 else None,
                     "per_consumer": round(done / span / n) if span > 0 else None,
                     "peak_rss_mib": max(s.get("peak_rss_mib", 0) for s in sums)}
    # peer: kafka-python alone (read + JSON-decode the same records, count their events)
    c = KafkaConsumer(bootstrap_servers=b.bootstrap, group_id=None, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in range(4)]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    n, records, t0, quiet = 0, 0, time.monotonic(), 0
    while n < len(evs) and quiet < 5:
        got = c.poll(timeout_ms=500, max_records=5000)
        quiet = 0 if got else quiet + 1
        for ms in got.values():
            for m in ms:
                d = json.loads(m.value)
                n += len(d["evs"]) if d.get("v") == 2 else 1
                records += 1
    el = time.monotonic() - t0
    c.close()
    out["records"] = records
    out["peer_kafka_python"] = {"read": n, "events_per_s": round(n / el)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=1000, help="events/s published in the latency phase")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--alert-share", type=float, default=0.02, help="share of query/response pairs that alert")
    ap.add_argument("--preload", type=int, default=60000, help="events for the throughput phase")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kafka-bench-") as tmp, \
            EmbeddedBroker(topics={"dns-alerts": 1, "dns-events": 4}) as b:
        work = Path(tmp)
        (work / "deny.yaml").write_text(RULE)
        res = {"latency": latency_phase(work, b, args), "throughput": throughput_phase(work, b, args)}
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    res["consumer_peak_rss_mib"] = round(rss, 1)
    res["bench_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    L, T = res["latency"], res["throughput"]
    print(f"latency  {L['events']:,} events at {args.rate:,.0f}/s, {L['alerts_seen']}/{L['alerts_expected']} alerts: "
          f"p50 {L['p50_ms']} ms  p99 {L['p99_ms']} ms  max {L['max_ms']} ms  (target p99 <= 1000 ms)")
    p = T["peer_kafka_python"]["events_per_s"]
    print(f"throughput: {T['preloaded']:,} events in {T['records']:,} records on 4 partitions")
    for name, what in (("consumers_1", "x1, all rules"), ("consumers_2", "x2, all rules"),
                       ("consumers_1_denylist", "x1, denylist only")):
        r = T[name]
        print(f"detector consume {what:<18} {r['per_consumer']:>8,} events/s per consumer "
              f"({r['events_per_s']:,}/s in all; {r['per_consumer'] / p:.2f}x the bare kafka-python reader, "
              f"{p:,}/s)  peak RSS {r['peak_rss_mib']} MiB  (target >= 50,000/s per consumer)")
    print(f"peak RSS: largest child {res['consumer_peak_rss_mib']} MiB, publisher/bench {res['bench_peak_rss_mib']} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0 if L["alerts_seen"] == L["alerts_expected"] else 1


if __name__ == "__main__":
    sys.exit(main())
