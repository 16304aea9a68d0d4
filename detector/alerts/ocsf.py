"""Render events and alerts as OCSF 1.8: DNS events as DNS Activity (class 4003),
alerts as Detection Finding (class 2004). One ``--format ocsf`` stream holds
only these two classes.

Times are milliseconds since the epoch (timestamp_t); ``type_uid`` is
``class_uid * 100 + activity_id``. What OCSF has no attribute for goes under
``unmapped`` with the names our ECS documents use under ``dns_detector``:
OCSF 1.8 has no attribute for the authority and additional sections, EDNS,
the header's Z bit, the questions after the first or DNS UPDATE's sections
(``unmapped.dns``, ``unmapped.edns``, as :func:`ecs.message_fields` builds
them). mDNS's cache-flush bit is an answer flag: ``flag_ids`` 99 Other with
``flags`` "Cache Flush", the dictionary's way to give a flag it has no number for.
docs/output.md maps every attribute.
"""

from __future__ import annotations

from typing import Any

from detector import __version__
from detector.alerts import ecs
from detector.alerts.community_id import PROTOCOLS, community_id
from detector.dns.constants import qtype_name, rcode_name
from detector.events import QUERY, RESPONSE, UNANSWERED, DnsEvent, Finding, ProcessInfo

OCSF_VERSION = "1.8.0"
PRODUCT = {"name": "dns-detector", "vendor_name": "dns-detector", "version": __version__}

DNS_ACTIVITY = 4003
DETECTION_FINDING = 2004

#: DNS Activity activity_id: 1 Query, 2 Response, 6 Traffic (a request and its
#: response in one record), 99 Other (a query that got no response: "Unanswered")
_DNS_ACTIVITY = {1: "Query", 2: "Response", 6: "Traffic", 99: "Unanswered"}
_FINDING_ACTIVITY = {1: "Create", 2: "Update"}
_SEVERITY = {"low": (2, "Low"), "medium": (3, "Medium"), "high": (4, "High"), "critical": (5, "Critical")}
#: rcode_id: the RFC 6895 codes OCSF lists by number; 16 is BADSIG_VERS
_RCODE_CAPTIONS = {
    0: "NoError", 1: "FormError", 2: "ServError", 3: "NXDomain", 4: "NotImp", 5: "Refused",
    6: "YXDomain", 7: "YXRRSet", 8: "NXRRSet", 9: "NotAuth", 10: "NotZone", 11: "DSOTYPENI",
    16: "BADSIG_VERS", 17: "BADKEY", 18: "BADTIME", 19: "BADMODE", 20: "BADNAME", 21: "BADALG",
    22: "BADTRUNC", 23: "BADCOOKIE",
}
#: dns_answer flag_ids: header flags by OCSF number
_FLAG_IDS = ((0x0400, 1, "Authoritative Answer"), (0x0200, 2, "Truncated Response"),
             (0x0100, 3, "Recursion Desired"), (0x0080, 4, "Recursion Available"),
             (0x0020, 5, "Authentic Data"), (0x0010, 6, "Checking Disabled"))
#: mDNS's cache-flush bit (RFC 6762 10.2): OCSF has no number for it, so 99 Other and
#: the flag's own name in ``flags``
_CACHE_FLUSH = (99, "Cache Flush")
_OPCODE_IDS = {0: "Query", 1: "Inverse Query", 2: "Status", 4: "Notify", 5: "Update", 6: "DSO Message"}


def ms(ts: float) -> int:
    return int(round(ts * 1000))


def rcode(r: int) -> tuple[int, str]:
    """(rcode_id, rcode) by OCSF's enumeration (RFC 6895 ranges for the rest)."""
    cap = _RCODE_CAPTIONS.get(r)
    if cap is not None:
        return r, cap
    if 3841 <= r <= 4095 or r == 65535:
        return 25, "Reserved"
    return 24, "Unassigned"


def _metadata(uid: str | None, profiles: list[str]) -> dict[str, Any]:
    m: dict[str, Any] = {"version": OCSF_VERSION, "product": dict(PRODUCT)}
    if uid:
        m["uid"] = uid
    if profiles:
        m["profiles"] = profiles
    return m


def _query(ev: DnsEvent) -> dict[str, Any] | None:
    if not ev.questions:
        return None
    q = ev.questions[0]
    d: dict[str, Any] = {"hostname": q.name, "type": qtype_name(q.qtype),
                         "class": ecs.class_name(q.qclass), "packet_uid": ev.id}
    op = ev.opcode
    if op in _OPCODE_IDS:
        d["opcode_id"], d["opcode"] = op, _OPCODE_IDS[op]
    else:
        d["opcode_id"], d["opcode"] = 99, ecs.opcode_name(op)
    return d


def _answers(ev: DnsEvent) -> list[dict[str, Any]]:
    """The answer section (not for DNS UPDATE, whose records are prerequisites): each
    record with its own class, the header's flags, and mDNS's cache-flush bit."""
    flag_ids = [i for bit, i, _ in _FLAG_IDS if ev.flags & bit]
    flags = [n for bit, _, n in _FLAG_IDS if ev.flags & bit]
    class_name = ecs.class_name
    out = []
    for a in ev.answers:
        r: dict[str, Any] = {"rdata": a.data, "type": qtype_name(a.rtype), "class": class_name(a.rclass),
                             "ttl": a.ttl, "packet_uid": ev.id}
        if a.cache_flush:
            r["flag_ids"], r["flags"] = flag_ids + [_CACHE_FLUSH[0]], flags + [_CACHE_FLUSH[1]]
        elif flag_ids:
            r["flag_ids"], r["flags"] = flag_ids, flags
        out.append(r)
    return out


def _endpoints(ev: DnsEvent, transaction: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    if transaction:
        (sip, sport), (dip, dport) = ev.client, ev.server
    else:
        sip, sport, dip, dport = ev.src_ip, ev.src_port, ev.dst_ip, ev.dst_port
    if sip and dip:
        return {"ip": sip, "port": sport}, {"ip": dip, "port": dport}
    # DoH read from the TLS library of an application doing its own I/O: no addresses;
    # the asking side is this host (OCSF wants at least one endpoint)
    src = {"ip": sip, "port": sport} if sip else {}
    dst = {"ip": dip, "port": dport} if dip else {}
    if not (src or dst):
        local = {"hostname": ecs.HOSTNAME}
        if ev.qr and not transaction:
            dst = local
        else:
            src = local
    return src, dst


def _connection(ev: DnsEvent) -> dict[str, Any]:
    c: dict[str, Any] = {"protocol_name": ev.transport, "direction_id": 0, "direction": "Unknown"}
    if ev.transport in PROTOCOLS:
        c["protocol_num"] = PROTOCOLS[ev.transport]
    if ev.ip_version in (4, 6):
        c["protocol_ver_id"] = ev.ip_version
        c["protocol_ver"] = f"Internet Protocol version {ev.ip_version} (IPv{ev.ip_version})"
    cid = community_id(ev.src_ip, ev.src_port, ev.dst_ip, ev.dst_port, ev.transport)
    if cid:
        c["community_uid"] = cid
    return c


def _process(p: ProcessInfo, profiles: list[str]) -> dict[str, Any]:
    d: dict[str, Any] = {"pid": p.pid}
    name = ecs.process_name(p)
    if name:
        d["name"] = name
    if p.tid:
        d["ptid"] = p.tid
    if p.exe:
        d["file"] = {"name": p.exe.rsplit("/", 1)[-1] or p.exe, "path": p.exe, "type_id": 1, "type": "Regular File"}
    if p.uid >= 0:
        d["user"] = {"uid": str(p.uid)}
    if p.container_id or p.container_name:
        c: dict[str, Any] = {}
        if p.container_id:
            c["uid"] = p.container_id
        if p.container_name:
            c["name"] = p.container_name
        if p.pod_uid:
            c["pod_uuid"] = p.pod_uid
        if p.pod_name or p.pod_namespace or p.pod_uid:
            c["orchestrator"] = "kubernetes"
        d["container"] = c
        if "container" not in profiles:
            profiles.append("container")
    return d


def _unmapped(ev: DnsEvent) -> dict[str, Any]:
    u: dict[str, Any] = {}
    if ev.edns is not None:
        u["edns"] = ecs.edns_fields(ev.edns)
    p = ev.process
    if p is not None:
        if p.comm:
            u["thread_name"] = p.comm
        if p.pod_name or p.pod_namespace:
            u["pod"] = {k: v for k, v in (("name", p.pod_name), ("namespace", p.pod_namespace)) if v}
        if p.cgroup_id:
            u["cgroup_id"] = p.cgroup_id
    if ev.malformed:
        u["malformed"] = ev.malformed
    if ev.cause:
        u["cause"] = ev.cause
    return u


def event_doc(ev: DnsEvent, model: str = "message") -> dict[str, Any] | None:
    """A DNS Activity (4003) record for one DNS event; None when the model has no
    record for it (a query, in the transaction model)."""
    transaction = model == "transaction"
    kind = ev.kind
    if kind == QUERY:
        if transaction:
            return None
        act = 1
    elif kind == RESPONSE:
        act = 6 if transaction else 2
    else:
        act = 6 if transaction else 99
    lat = ev.latency
    start = ev.ts - lat if lat is not None else ev.ts
    profiles: list[str] = ["host"]
    d: dict[str, Any] = {
        "class_uid": DNS_ACTIVITY,
        "class_name": "DNS Activity",
        "category_uid": 4,
        "category_name": "Network Activity",
        "activity_id": act,
        "activity_name": _DNS_ACTIVITY[act],
        "type_uid": DNS_ACTIVITY * 100 + act,
        "type_name": f"DNS Activity: {_DNS_ACTIVITY[act]}",
        "time": ms(start if transaction else ev.ts),
        "timezone_offset": 0,
        "severity_id": 1,
        "severity": "Informational",
        "connection_info": _connection(ev),
        "device": {"hostname": ecs.HOSTNAME, "type_id": 0, "type": "Unknown"},
    }
    src, dst = _endpoints(ev, transaction)
    for k, e in (("src_endpoint", src), ("dst_endpoint", dst)):
        if e:
            d[k] = e
    q = _query(ev)
    if q is not None:
        d["query"] = q
    if ev.answers and ev.opcode != ecs.UPDATE:
        d["answers"] = _answers(ev)
    if ev.flags & 0x8000:
        d["rcode_id"], d["rcode"] = rcode(ev.rcode)
        ok = ev.rcode == 0
        d["status_id"], d["status"] = (1, "Success") if ok else (2, "Failure")
        d["status_detail"] = rcode_name(ev.rcode)
        d["response_time"] = ms(ev.ts)
        if lat is not None:
            d["query_time"] = ms(start)
            d["duration"] = int(round(lat * 1000))
            d["start_time"], d["end_time"] = ms(start), ms(ev.ts)
    else:
        d["query_time"] = ms(start)
        if kind == UNANSWERED:
            d["status_id"], d["status"], d["status_detail"] = 2, "Failure", "unanswered"
            if lat is not None:
                d["duration"] = int(round(lat * 1000))
    if ev.size:
        # bytes_out: source to destination; in the transaction model the source is
        # the client, so a response's bytes come in
        way = "bytes_in" if transaction and ev.flags & 0x8000 else "bytes_out"
        d["traffic"] = {"bytes": ev.size, way: ev.size}
    if ev.process is not None:
        d["actor"] = {"process": _process(ev.process, profiles)}
    u = _unmapped(ev)
    m = ecs.message_fields(ev, answer_cache_flush=False)
    if m is not None:
        u["dns"] = m
    if u:
        d["unmapped"] = u
    d["metadata"] = _metadata(None, profiles)
    return d


def alert_doc(f: Finding, aid: str, extra: dict[str, Any]) -> dict[str, Any]:
    """A Detection Finding (2004) for one (deduplicated) alert revision: the first
    revision is activity Create, each later one (same finding_info.uid) Update."""
    ev = f.event
    revision = extra.get("revision", 1)
    act = 2 if revision > 1 else 1
    sev_id, sev = _SEVERITY.get(f.severity, (3, "Medium"))
    tid = f.technique_id
    parent, sub = ecs.technique_names(f.technique_name, "." in tid)
    attack: dict[str, Any] = {"technique": {"uid": tid.split(".")[0],
                                            "src_url": f"https://attack.mitre.org/techniques/{tid.split('.')[0]}/"}}
    if parent:
        attack["technique"]["name"] = parent
    if "." in tid:
        attack["sub_technique"] = {"uid": tid, "src_url": f"https://attack.mitre.org/techniques/{tid.replace('.', '/')}/"}
        if sub:
            attack["sub_technique"]["name"] = sub
    first_seen = extra.get("first_seen", f.ts)
    profiles: list[str] = ["host"]
    finding_info: dict[str, Any] = {
        "uid": aid,
        "title": f.title,
        "desc": f.reason,
        "analytic": {"uid": f.rule_id, "name": f.title, "type_id": 1, "type": "Rule", "category": f.category},
        "attacks": [attack],
        "types": [f.category],
        "first_seen_time": ms(first_seen),
        "last_seen_time": ms(f.ts),
    }
    if revision > 1:
        finding_info["modified_time"] = ms(f.ts)
    d: dict[str, Any] = {
        "class_uid": DETECTION_FINDING,
        "class_name": "Detection Finding",
        "category_uid": 2,
        "category_name": "Findings",
        "activity_id": act,
        "activity_name": _FINDING_ACTIVITY[act],
        "type_uid": DETECTION_FINDING * 100 + act,
        "type_name": f"Detection Finding: {_FINDING_ACTIVITY[act]}",
        "time": ms(f.ts),
        "timezone_offset": 0,
        "severity_id": sev_id,
        "severity": sev,
        "status_id": 1,
        "status": "New",
        "message": f.reason,
        "finding_info": finding_info,
        "is_alert": True,
        "risk_score": int(round(f.score * 100)),
        "count": f.count,
        "device": {"hostname": ecs.HOSTNAME, "type_id": 0, "type": "Unknown"},
    }
    if ev is not None:
        evidence: dict[str, Any] = {}
        q = _query(ev)
        if q is not None:
            evidence["query"] = q
        for k, e in zip(("src_endpoint", "dst_endpoint"), _endpoints(ev, False)):
            if e:
                evidence[k] = e
        evidence["connection_info"] = _connection(ev)
        if ev.process is not None:
            evidence["process"] = _process(ev.process, profiles)
        d["evidences"] = [evidence]
        obs = [(n, 2, "IP Address", ip) for n, ip in (("evidences[0].src_endpoint.ip", ev.src_ip),
                                                      ("evidences[0].dst_endpoint.ip", ev.dst_ip)) if ip]
        if q is not None and q["hostname"]:
            obs.insert(0, ("evidences[0].query.hostname", 1, "Hostname", q["hostname"]))
        name = evidence.get("process", {}).get("name")
        if name:
            obs.append(("evidences[0].process.name", 9, "Process Name", name))
        d["observables"] = [{"name": n, "type_id": i, "type": t, "value": v} for n, i, t, v in obs]
    u = {"features": f.features, "entity": f.entity, "domain": f.domain, "score": f.score, **extra}
    if ev is not None:
        u.update(_unmapped(ev))
    d["unmapped"] = u
    d["metadata"] = _metadata(f"{aid}-{revision}", profiles)
    return d
