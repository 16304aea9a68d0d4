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
from detector.events import QUERY, Answer, DnsEvent, Finding


def _rows(recs: list[Answer]) -> list[list]:
    """Records as flat rows: [name, type, ttl, data, class, rdlength, cache_flush]
    (the first four as before, so readers of the older rows keep working)."""
    return [[a.name, ecs.qtype_name(a.rtype), a.ttl, a.data, ecs.class_name(a.rclass), a.rdlength,
             a.cache_flush] for a in recs]


def flat_event(ev: DnsEvent) -> dict[str, Any]:
    """One flat record per event, with the same content as the ECS document: the
    sections and EDNS only when present (docs/output.md, "Flat JSON lines")."""
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
    qs = ev.questions
    if qs:
        if qs[0].qclass != 1:  # IN goes without saying
            d["qclass"] = ecs.class_name(qs[0].qclass)
        if len(qs) > 1 or qs[0].unicast_response:
            d["questions"] = [[q.name, ecs.qtype_name(q.qtype), ecs.class_name(q.qclass), q.unicast_response]
                              for q in qs]
    if ev.opcode == ecs.UPDATE:  # RFC 2136's names for the sections (qname is the zone)
        if ev.answers:
            d["prerequisites"] = _rows(ev.answers)
        if ev.authority:
            d["updates"] = _rows(ev.authority)
    else:
        if ev.answers:
            d["answers"] = _rows(ev.answers)
        if ev.authority:
            d["authority"] = _rows(ev.authority)
    if ev.additional:
        d["additional"] = _rows(ev.additional)
    if ev.flags & 0x0040:
        d["z"] = True
    if ev.latency is not None:
        d["latency_ms"] = round(ev.latency * 1000, 3)
    if ev.edns is not None:
        d["edns"] = ecs.edns_fields(ev.edns)
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
