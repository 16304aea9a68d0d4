"""Choose the document shape for events and alerts: ECS (default), flat JSON
lines, or OCSF Detection Finding (class 2004)."""

from __future__ import annotations

from typing import Any

from detector.alerts import ecs
from detector.events import DnsEvent, Finding


def flat_event(ev: DnsEvent) -> dict[str, Any]:
    d: dict[str, Any] = {
        "ts": round(ev.ts, 6),
        "kind": ev.kind,
        "transport": ev.transport,
        "src": ev.src_ip,
        "sport": ev.src_port,
        "dst": ev.dst_ip,
        "dport": ev.dst_port,
        "id": ev.id,
        "qr": int(ev.qr),
        "opcode": ev.opcode,
        "rcode": ecs.rcode_name(ev.rcode),
        "flags": ecs.header_flags(ev.flags),
        "qname": ev.qname,
        "qtype": ecs.qtype_name(ev.qtype),
        "ancount": ev.ancount,
        "size": ev.size,
        "registered_domain": ev.registered_domain,
    }
    if ev.answers:
        d["answers"] = [[a.name, ecs.qtype_name(a.rtype), a.ttl, a.data] for a in ev.answers]
    if ev.latency is not None:
        d["latency_ms"] = round(ev.latency * 1000, 3)
    if ev.edns is not None:
        d["edns"] = {"udp_size": ev.edns.udp_size, "do": ev.edns.do}
        if ev.edns.client_subnet:
            d["edns"]["client_subnet"] = ev.edns.client_subnet
    if ev.process is not None:
        p = ev.process
        d["process"] = {"pid": p.pid, "tid": p.tid, "comm": p.comm, "exe": p.exe, "uid": p.uid,
                        "gid": p.gid, "cgroup_id": p.cgroup_id, "container_id": p.container_id}
    if ev.malformed:
        d["malformed"] = ev.malformed
    if ev.cause:
        d["cause"] = ev.cause
    return d


def flat_alert(f: Finding, aid: str, extra: dict[str, Any]) -> dict[str, Any]:
    d: dict[str, Any] = {
        "ts": round(f.ts, 6),
        "alert_id": aid,
        "rule_id": f.rule_id,
        "title": f.title,
        "severity": f.severity,
        "score": f.score,
        "technique": f.technique_id,
        "entity": f.entity,
        "domain": f.domain,
        "count": f.count,
        "reason": f.reason,
        "features": f.features,
        **extra,
    }
    if f.event is not None:
        d["qname"] = f.event.qname
        d["src"] = f.event.src_ip
        d["dst"] = f.event.dst_ip
        if f.event.process is not None:
            d["pid"] = f.event.process.pid
            d["comm"] = f.event.process.comm
        if f.event.cause:
            d["cause"] = f.event.cause
    return d


_OCSF_SEVERITY = {"low": 2, "medium": 3, "high": 4, "critical": 5}


def ocsf_alert(f: Finding, aid: str, extra: dict[str, Any]) -> dict[str, Any]:
    """OCSF 1.1 Detection Finding (class_uid 2004, category 2 Findings)."""
    ev = f.event
    act = 2 if extra.get("revision", 1) > 1 else 1  # 1: Create, 2: Update (a later revision)
    d: dict[str, Any] = {
        "class_uid": 2004,
        "class_name": "Detection Finding",
        "category_uid": 2,
        "category_name": "Findings",
        "type_uid": 200400 + act,  # class_uid * 100 + activity_id
        "activity_id": act,
        "time": int(f.ts * 1000),
        "severity_id": _OCSF_SEVERITY.get(f.severity, 3),
        "severity": f.severity.capitalize(),
        "status_id": 1,
        "message": f.reason,
        "metadata": {"version": "1.1.0", "uid": aid,
                     "product": {"name": "dns-detector", "vendor_name": "dns-detector"}},
        "finding_info": {
            "uid": aid,
            "title": f.title,
            "analytic": {"uid": f.rule_id, "name": f.title, "type_id": 1, "type": "Rule"},
            "attacks": [{"technique": {"uid": f.technique_id, "name": f.technique_name},
                         "version": "14"}],
        },
        "risk_score": int(round(f.score * 100)),
        "count": f.count,
        "unmapped": {"features": f.features, "entity": f.entity, "domain": f.domain, **extra},
    }
    if ev is not None:
        d["src_endpoint"] = {"ip": ev.src_ip, "port": ev.src_port}
        d["dst_endpoint"] = {"ip": ev.dst_ip, "port": ev.dst_port}
        if ev.questions:
            d["evidences"] = [{"query": {"hostname": ev.qname, "type": ecs.qtype_name(ev.qtype)}}]
        if ev.process is not None:
            d.setdefault("evidences", [{}])[0]["process"] = {
                "pid": ev.process.pid, "name": ev.process.comm, "file": {"path": ev.process.exe}}
    return d


def render_event(ev: DnsEvent, fmt: str) -> dict[str, Any]:
    return flat_event(ev) if fmt == "jsonl" else ecs.event_doc(ev)


def render_alert(f: Finding, aid: str, extra: dict[str, Any], fmt: str) -> dict[str, Any]:
    if fmt == "jsonl":
        return flat_alert(f, aid, extra)
    if fmt == "ocsf":
        return ocsf_alert(f, aid, extra)
    return ecs.alert_doc(f, aid, extra)
