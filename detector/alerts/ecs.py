"""Render events and alerts as ECS documents (Elastic Common Schema 8.x).

Field names are the ones SIEMs already index: ``dns.question.name``,
``process.pid``, ``source.ip``, ``threat.technique.subtechnique.id``... What
ECS has no field for (the detector's score and features) lives under
``dns_detector.*``. The schema is written down in docs/alert.schema.json.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from detector import __version__
from detector.dns.constants import (CLASSES, FLAG_NAMES, OPCODES, QTYPES, RCODES,  # noqa: F401
                                     qtype_name, rcode_name)
from detector.events import DnsEvent, Finding

HOSTNAME = socket.gethostname()

SEVERITY_NUM = {"low": 21, "medium": 47, "high": 73, "critical": 99}
_FLAG_NAMES = FLAG_NAMES


_FLAGS_CACHE: dict[int, list[str]] = {}


def header_flags(flags: int) -> list[str]:
    """["AA", "RD", ...] for a flags word (cached per distinct word; callers copy if they mutate)."""
    k = flags & 0x07F0
    r = _FLAGS_CACHE.get(k)
    if r is None:
        r = _FLAGS_CACHE[k] = [n for bit, n in _FLAG_NAMES if flags & bit]
    return list(r)


def iso(ts: float) -> str:
    sec, us = divmod(int(round(ts * 1e6)), 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{us:06d}Z"


def dns_fields(ev: DnsEvent) -> dict[str, Any]:
    d: dict[str, Any] = {
        "id": ev.id,
        "type": "answer" if ev.flags & 0x8000 else "query",
        "op_code": OPCODES.get(ev.opcode, str(ev.opcode)),
        "header_flags": header_flags(ev.flags),
    }
    if ev.flags & 0x8000:
        d["response_code"] = rcode_name(ev.rcode)
    if ev.questions:
        q = ev.questions[0]
        d["question"] = {
            "name": q.name,
            "type": qtype_name(q.qtype),
            "class": CLASSES.get(q.qclass, f"CLASS{q.qclass}"),
            "registered_domain": ev.registered_domain,
            "subdomain": ev.subdomain,
            "top_level_domain": ev.suffix,
        }
    if ev.answers:
        d["answers"] = [
            {"name": a.name, "type": qtype_name(a.rtype), "ttl": a.ttl, "data": a.data}
            for a in ev.answers
        ]
        ips = [a.data for a in ev.answers if a.rtype in (1, 28)]
        if ips:
            d["resolved_ip"] = ips
    return d


def _process(ev: DnsEvent, doc: dict[str, Any]) -> None:
    p = ev.process
    if p is None:
        return
    proc: dict[str, Any] = {"pid": p.pid, "name": p.comm}
    if p.tid:
        proc["thread"] = {"id": p.tid}
    if p.exe:
        proc["executable"] = p.exe
    if p.uid >= 0:
        proc["user"] = {"id": str(p.uid)}
    if p.gid >= 0:
        proc["group"] = {"id": str(p.gid)}
    doc["process"] = proc
    if p.container_id:
        doc["container"] = {"id": p.container_id}
    if p.cgroup_id:
        doc.setdefault("dns_detector", {})["cgroup_id"] = p.cgroup_id


def event_doc(ev: DnsEvent) -> dict[str, Any]:
    """An ECS document for one DNS event (``--events``)."""
    doc: dict[str, Any] = {
        "@timestamp": iso(ev.ts),
        "event": {
            "kind": "event",
            "category": ["network"],
            "type": ["protocol"],
            "action": f"dns_{ev.kind}",
            "dataset": "dns_detector.dns",
        },
        "network": {
            "transport": ev.transport,
            "type": f"ipv{ev.ip_version}",
            "protocol": "dns",
            "bytes": ev.size,
        },
        "source": {"ip": ev.src_ip, "port": ev.src_port},
        "destination": {"ip": ev.dst_ip, "port": ev.dst_port},
        "dns": dns_fields(ev),
        "host": {"hostname": HOSTNAME},
    }
    if ev.latency is not None:
        doc["event"]["duration"] = int(ev.latency * 1e9)
    extra: dict[str, Any] = {}
    if ev.edns is not None:
        e = ev.edns
        extra["edns"] = {"udp_size": e.udp_size, "do": e.do, "version": e.version}
        if e.client_subnet:
            extra["edns"]["client_subnet"] = e.client_subnet
    if ev.malformed:
        extra["malformed"] = ev.malformed
    if ev.cause:
        extra["cause"] = ev.cause
    if extra:
        doc["dns_detector"] = extra
    _process(ev, doc)
    return doc


def alert_doc(f: Finding, alert_id: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """An ECS alert document for one (deduplicated) finding."""
    ev = f.event
    tid = f.technique_id
    technique: dict[str, Any] = {"id": tid.split(".")[0], "name": f.technique_name,
                                 "reference": f"https://attack.mitre.org/techniques/{tid.split('.')[0]}/"}
    if "." in tid:
        technique["subtechnique"] = {
            "id": tid,
            "reference": f"https://attack.mitre.org/techniques/{tid.replace('.', '/')}/",
        }
    doc: dict[str, Any] = {
        "@timestamp": iso(f.ts),
        "event": {
            "kind": "alert",
            "category": ["network", "threat"],
            "type": ["indicator"],
            "id": alert_id,
            "severity": SEVERITY_NUM.get(f.severity, 47),
            "risk_score": round(f.score * 100, 1),
            "reason": f.reason,
            "dataset": "dns_detector.alert",
            "module": "dns_detector",
        },
        "rule": {"id": f.rule_id, "name": f.title, "category": f.category,
                 "ruleset": "dns-detector", "version": __version__},
        "threat": {"framework": "MITRE ATT&CK", "technique": technique},
        "host": {"hostname": HOSTNAME},
        "observer": {"type": "sensor", "product": "dns-detector", "version": __version__},
        "dns_detector": {
            "score": f.score,
            "severity": f.severity,
            "entity": f.entity,
            "domain": f.domain,
            "count": f.count,
            "features": f.features,
        },
    }
    if extra:
        doc["dns_detector"].update(extra)
    if ev is not None:
        doc["network"] = {"transport": ev.transport, "type": f"ipv{ev.ip_version}", "protocol": "dns"}
        doc["source"] = {"ip": ev.src_ip, "port": ev.src_port}
        doc["destination"] = {"ip": ev.dst_ip, "port": ev.dst_port}
        if ev.questions or ev.id:
            doc["dns"] = dns_fields(ev)
        _process(ev, doc)
        if ev.cause:
            doc["dns_detector"]["cause"] = ev.cause
    return doc
