"""Choose the document shape for events and alerts: ECS (default), flat JSON
lines, or OCSF (DNS Activity 4003 for events, Detection Finding 2004 for
alerts). One format per stream: events and alerts of one run share it.

The event model (docs/output.md) says which events get a document:
``message`` (default) one per DNS message plus one per unanswered query;
``transaction`` one per query/response pair, made when the response comes
or the query times out (a query alone gives none: :func:`render_event`
returns None).
"""

from __future__ import annotations

from typing import Any

from detector.alerts import ecs, ocsf
from detector.alerts.ecs import MODELS  # noqa: F401  (re-exported for the CLI)
from detector.events import QUERY, DnsEvent, Finding


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
        "flags": ecs.header_flags(ev.flags, ev.edns is not None and ev.edns.do),
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
        d["process"] = {"pid": p.pid, "tid": p.tid, "name": p.name, "comm": p.comm, "exe": p.exe,
                        "uid": p.uid, "gid": p.gid, "cgroup_id": p.cgroup_id, "container_id": p.container_id}
        for k in ("container_name", "pod_name", "pod_namespace", "pod_uid"):
            if getattr(p, k):
                d["process"][k] = getattr(p, k)
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
            if f.event.process.name:
                d["process_name"] = f.event.process.name
        if f.event.cause:
            d["cause"] = f.event.cause
    return d


def render_event(ev: DnsEvent, fmt: str, model: str = "message") -> dict[str, Any] | None:
    """The document for one event, or None when ``model`` gives it none (a query in
    the transaction model: the caller writes nothing)."""
    if fmt == "jsonl":
        return None if model == "transaction" and ev.kind == QUERY else flat_event(ev)
    if fmt == "ocsf":
        return ocsf.event_doc(ev, model)
    return ecs.event_doc(ev, model)


def render_alert(f: Finding, aid: str, extra: dict[str, Any], fmt: str) -> dict[str, Any]:
    if fmt == "jsonl":
        return flat_alert(f, aid, extra)
    if fmt == "ocsf":
        return ocsf.alert_doc(f, aid, extra)
    return ecs.alert_doc(f, aid, extra)
