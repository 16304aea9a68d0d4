"""Render events and alerts as ECS documents (Elastic Common Schema 9.4).

Field names are the ones SIEMs already index: ``dns.question.name``,
``process.pid``, ``client.ip``, ``threat.technique.subtechnique.id``... What
ECS has no field for (the detector's score and features, EDNS, the questions
after the first, the authority and additional sections, record lengths and
mDNS bits, DNS UPDATE's sections) lives under our own namespace
``dns_detector.*``: :func:`message_fields` builds its ``dns`` object, which
the OCSF records carry under ``unmapped`` with the same names. docs/output.md describes both
document models (one document per DNS message, or one per transaction) and
every field; docs/alert.schema.json is the alert's JSON schema.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from detector import __version__
from detector.alerts.community_id import PROTOCOLS, community_id
from detector.dns.constants import (CLASSES, FLAG_NAMES, OPCODES, QTYPES, RCODES,  # noqa: F401
                                     qtype_name, rcode_name)
from detector.events import QUERY, RESPONSE, UNANSWERED, Answer, DnsEvent, Edns, Finding, ProcessInfo, Question

ECS_VERSION = "9.4.0"
HOSTNAME = socket.gethostname()
PRODUCT = "dns-detector"
#: our namespace for what ECS has no field for
NAMESPACE = "dns_detector"

#: document models for DNS events: "message" gives one document per DNS message
#: (a query, a response) plus one per query left unanswered; "transaction" one per
#: query/response pair (the response, or the unanswered query, carrying both sides)
MODELS = ("message", "transaction")

SEVERITY_NUM = {"low": 21, "medium": 47, "high": 73, "critical": 99}
_FLAG_NAMES = FLAG_NAMES
#: record types whose data is a host name (for related.hosts)
_NAME_RTYPES = frozenset({2, 5, 12, 39})  # NS, CNAME, PTR, DNAME
#: the DNS UPDATE opcode (RFC 2136): its sections are zone, prerequisites, updates
UPDATE = 5
#: the header's reserved Z bit (must be zero)
_Z_BIT = 0x0040

_FLAGS_CACHE: dict[int, list[str]] = {}


def header_flags(flags: int, do: bool = False) -> list[str]:
    """["AA", "RD", ..., "DO"] for a flags word and the EDNS DO bit (a new list)."""
    k = (flags & 0x07F0) | (0x1 if do else 0)
    r = _FLAGS_CACHE.get(k)
    if r is None:
        r = _FLAGS_CACHE[k] = [n for bit, n in _FLAG_NAMES if flags & bit] + (["DO"] if do else [])
    return list(r)


_ISO_SEC = [-1, ""]  # the last second formatted: events come in time order


def iso(ts: float) -> str:
    sec, us = divmod(int(round(ts * 1e6)), 1_000_000)
    last = _ISO_SEC
    if sec != last[0]:
        last[0], last[1] = sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return f"{last[1]}.{us:06d}Z"


def outcome(ev: DnsEvent) -> str:
    """success: a NOERROR response; failure: any other rcode, or no response; unknown: a query."""
    if ev.kind == UNANSWERED:
        return "failure"
    if ev.flags & 0x8000:
        return "success" if ev.rcode == 0 else "failure"
    return "unknown"


def technique_names(name: str, has_sub: bool) -> tuple[str, str]:
    """("Application Layer Protocol", "DNS") from ATT&CK's "Parent: Sub" form."""
    if has_sub and ": " in name:
        parent, sub = name.split(": ", 1)
        return parent, sub
    return name, ""


def opcode_name(op: int) -> str:
    """QUERY, NOTIFY...; OPCODE<n> for an unassigned one (as TYPE<n>, RCODE<n>)."""
    return OPCODES.get(op) or f"OPCODE{op}"


def class_name(c: int) -> str:
    """IN, CH...; CLASS<n> for one without a name (RFC 3597)."""
    n = CLASSES.get(c)
    return n if n is not None else f"CLASS{c}"


def dns_fields(ev: DnsEvent) -> dict[str, Any]:
    """ECS's ``dns.*``: the header, the first question, the answers (each with its
    own class). A DNS UPDATE's question is its zone and its other sections are not
    answers: they go to :func:`message_fields` under their own names."""
    qr = ev.flags & 0x8000
    e = ev.edns
    d: dict[str, Any] = {
        "id": str(ev.id),  # a keyword in ECS
        "type": "answer" if qr else "query",
        "op_code": opcode_name(ev.opcode),
        "header_flags": header_flags(ev.flags, e is not None and e.do),
    }
    if qr:
        d["response_code"] = rcode_name(ev.rcode)
    if ev.questions:
        q = ev.questions[0]
        question = {"name": q.name, "type": qtype_name(q.qtype), "class": class_name(q.qclass)}
        if ev.registered_domain:
            question["registered_domain"] = ev.registered_domain
        if ev.subdomain:
            question["subdomain"] = ev.subdomain
        if ev.suffix:
            question["top_level_domain"] = ev.suffix
        d["question"] = question
    if ev.answers and ev.opcode != UPDATE:
        d["answers"] = [{"name": a.name, "type": qtype_name(a.rtype), "class": class_name(a.rclass),
                         "ttl": a.ttl, "data": a.data} for a in ev.answers]
        # an A or AAAA record of the wrong length decodes to hex or "": not an address
        ips = [a.data for a in ev.answers
               if (a.rtype == 1 and a.data.count(".") == 3) or (a.rtype == 28 and ":" in a.data)]
        if ips:
            d["resolved_ip"] = ips
    return d


def record_fields(r: Answer) -> dict[str, Any]:
    """One resource record of a section ECS has no field for (authority, additional,
    UPDATE's prerequisites and updates): dns.answers' fields plus rdlength and
    mDNS's cache-flush bit."""
    return {"name": r.name, "type": qtype_name(r.rtype), "class": class_name(r.rclass), "ttl": r.ttl,
            "data": r.data, "rdlength": r.rdlength, "cache_flush": r.cache_flush}


def question_fields(q: Question) -> dict[str, Any]:
    return {"name": q.name, "type": qtype_name(q.qtype), "class": class_name(q.qclass),
            "unicast_response": q.unicast_response}


def edns_fields(e: Edns) -> dict[str, Any]:
    """The OPT record: UDP size, version, DO, the flags word and extended rcode bits,
    the client subnet with its scope, every option (code, name, data) in wire order."""
    d: dict[str, Any] = {"udp_size": e.udp_size, "do": e.do, "version": e.version, "flags": e.flags,
                         "ext_rcode": e.ext_rcode}
    if e.client_subnet:
        d["client_subnet"] = e.client_subnet
    if e.client_subnet_scope is not None:
        d["client_subnet_scope"] = e.client_subnet_scope
    if e.options:
        d["options"] = [{"code": o.code, "name": o.name, "data": o.data} for o in e.options]
    return d


def message_fields(ev: DnsEvent, answer_cache_flush: bool = True) -> dict[str, Any] | None:
    """``dns_detector.dns``: what of the message ECS's ``dns.*`` cannot hold, or None
    when there is nothing (the common case: one question, no authority or additional
    records, no answers). Only sections that are present are written:

    - ``questions[]``: every question, when there is more than one or one carries
      mDNS's unicast-response bit (else ``dns.question`` says it all);
    - ``answers[]``: per ``dns.answers`` entry, in the same order, ``rdlength`` and
      ``cache_flush`` (left out when ``answer_cache_flush`` is false: OCSF carries
      the bit in the answer's own flags);
    - ``authority[]``, ``additional[]``: records (:func:`record_fields`);
    - ``z``: true when the header's reserved bit is set;
    - DNS UPDATE: ``zone`` (the question), ``prerequisites[]`` and ``updates[]``
      instead of answers and authority.
    """
    d: dict[str, Any] = {}
    qs = ev.questions
    if qs and (len(qs) > 1 or qs[0].unicast_response):
        d["questions"] = [question_fields(q) for q in qs]
    if ev.opcode == UPDATE:
        if qs:
            q = qs[0]
            d["zone"] = {"name": q.name, "type": qtype_name(q.qtype), "class": class_name(q.qclass)}
        if ev.answers:
            d["prerequisites"] = [record_fields(r) for r in ev.answers]
        if ev.authority:
            d["updates"] = [record_fields(r) for r in ev.authority]
    else:
        if ev.answers:
            d["answers"] = ([{"rdlength": a.rdlength, "cache_flush": a.cache_flush} for a in ev.answers]
                            if answer_cache_flush else [{"rdlength": a.rdlength} for a in ev.answers])
        if ev.authority:
            d["authority"] = [record_fields(r) for r in ev.authority]
    if ev.additional:
        d["additional"] = [record_fields(r) for r in ev.additional]
    if ev.flags & _Z_BIT:
        d["z"] = True
    return d or None


def process_name(p: ProcessInfo) -> str:
    """The process's own name; the thread's comm only when it is the main thread."""
    if p.name:
        return p.name
    return p.comm if p.comm and p.tid == p.pid else ""


def _process(ev: DnsEvent, doc: dict[str, Any]) -> None:
    p = ev.process
    if p is None:
        return
    proc: dict[str, Any] = {"pid": p.pid}
    name = process_name(p)
    if name:
        proc["name"] = name
    thread: dict[str, Any] = {}
    if p.tid:
        thread["id"] = p.tid
    if p.comm:
        thread["name"] = p.comm
    if thread:
        proc["thread"] = thread
    if p.exe:
        proc["executable"] = p.exe
    if p.uid >= 0:
        proc["user"] = {"id": str(p.uid)}
    if p.gid >= 0:
        proc["group"] = {"id": str(p.gid)}
    doc["process"] = proc
    if p.container_id or p.container_name:
        c = doc["container"] = {}
        if p.container_id:
            c["id"] = p.container_id
        if p.container_name:
            c["name"] = p.container_name
    if p.pod_name or p.pod_namespace or p.pod_uid:
        o: dict[str, Any] = {"type": "kubernetes"}
        if p.pod_namespace:
            o["namespace"] = p.pod_namespace
        res: dict[str, Any] = {"type": "pod"}
        if p.pod_name:
            res["name"] = p.pod_name
        if p.pod_uid:
            res["id"] = p.pod_uid
        o["resource"] = res
        doc["orchestrator"] = o
    if p.cgroup_id:
        doc.setdefault(NAMESPACE, {})["cgroup_id"] = p.cgroup_id


def _related(ev: DnsEvent, dns: dict[str, Any]) -> dict[str, Any]:
    ips = [ev.src_ip] if ev.src_ip else []
    if ev.dst_ip and ev.dst_ip != ev.src_ip:
        ips.append(ev.dst_ip)
    for ip in dns.get("resolved_ip", ()):
        if ip not in ips:
            ips.append(ip)
    hosts = []
    if ev.questions and ev.questions[0].name:
        hosts.append(ev.questions[0].name)
    for recs in (ev.answers, ev.authority) if ev.opcode == UPDATE else (ev.answers,):
        for a in recs:
            for h in (a.name, a.data if a.rtype in _NAME_RTYPES else ""):
                if h and h not in hosts:
                    hosts.append(h)
    r: dict[str, Any] = {"ip": ips} if ips else {}
    if hosts:
        r["hosts"] = hosts
    return r


def _network(ev: DnsEvent, doc: dict[str, Any], transaction: bool) -> None:
    """network.*, source/destination, client/server and related.* for one event."""
    cip, cport = ev.client
    sip, sport = ev.server
    net: dict[str, Any] = {"transport": ev.transport, "type": f"ipv{ev.ip_version}", "protocol": "dns"}
    if ev.protocol:  # DNS read from the TLS library (live --tls): the application protocol
        net["application"] = ev.protocol
    if ev.transport in PROTOCOLS:
        net["iana_number"] = str(PROTOCOLS[ev.transport])
    cid = community_id(ev.src_ip, ev.src_port, ev.dst_ip, ev.dst_port, ev.transport)
    if cid:
        net["community_id"] = cid
    client: dict[str, Any] = {"ip": cip, "port": cport}
    server: dict[str, Any] = {"ip": sip, "port": sport}
    if ev.size:
        # the bytes of the message this document was made from (a transaction
        # document is made from the response, or the unanswered query)
        (server if ev.flags & 0x8000 else client)["bytes"] = ev.size
        if not transaction or ev.kind == UNANSWERED:
            net["bytes"] = ev.size
    doc["network"] = net
    if transaction:  # the transaction's initiator is the source
        doc["source"] = dict(client)
        doc["destination"] = dict(server)
    else:
        src = {"ip": ev.src_ip, "port": ev.src_port}
        dst = {"ip": ev.dst_ip, "port": ev.dst_port}
        if ev.size:
            src["bytes"] = ev.size
        doc["source"], doc["destination"] = src, dst
    doc["client"], doc["server"] = client, server
    if not (ev.src_ip and ev.dst_ip):  # a DoH message from an application doing its own I/O
        for k in ("source", "destination", "client", "server"):
            e = doc[k]
            if not e.get("ip"):
                e.pop("ip", None)
                e.pop("port", None)
            if not e:
                del doc[k]


def _event_type(ev: DnsEvent, transaction: bool) -> list[str]:
    if transaction:
        return ["protocol"]
    return ["protocol", "start"] if ev.kind == QUERY else ["protocol", "end"]


def event_doc(ev: DnsEvent, model: str = "message") -> dict[str, Any] | None:
    """An ECS document for one DNS event (``--events``); None when the model has
    no document for it (a query, in the transaction model: its response or its
    timeout carries it)."""
    transaction = model == "transaction"
    kind = ev.kind
    if transaction and kind == QUERY:
        return None
    lat = ev.latency
    event: dict[str, Any] = {
        "kind": "event",
        "category": ["network"],
        "type": _event_type(ev, transaction),
        "action": f"dns_{kind}",
        "outcome": outcome(ev),
        "dataset": "dns_detector.dns",
        "module": NAMESPACE,
    }
    ts = ev.ts
    if lat is not None:
        event["duration"] = int(lat * 1e9)
        start = ts - lat
        event["start"] = iso(start)
        if kind == RESPONSE:
            event["end"] = iso(ts)
        if transaction:
            ts = start  # a transaction is dated by its query
    dns = dns_fields(ev)
    doc: dict[str, Any] = {
        "@timestamp": iso(ts),
        "ecs": {"version": ECS_VERSION},
        "event": event,
        "dns": dns,
        "host": {"hostname": HOSTNAME, "name": HOSTNAME},
        "observer": {"type": "sensor", "product": PRODUCT, "version": __version__},
    }
    _network(ev, doc, transaction)
    doc["related"] = _related(ev, dns)
    extra: dict[str, Any] = {}
    m = message_fields(ev)
    if m is not None:
        extra["dns"] = m
    if ev.edns is not None:
        extra["edns"] = edns_fields(ev.edns)
    if ev.malformed:
        extra["malformed"] = ev.malformed
    if ev.cause:
        extra["cause"] = ev.cause
    if extra:
        doc[NAMESPACE] = extra
    _process(ev, doc)
    return doc


def threat_fields(f: Finding) -> dict[str, Any]:
    tid = f.technique_id
    parent_id = tid.split(".")[0]
    parent, sub = technique_names(f.technique_name, "." in tid)
    technique: dict[str, Any] = {"id": parent_id, "reference": f"https://attack.mitre.org/techniques/{parent_id}/"}
    if parent:
        technique["name"] = parent
    if "." in tid:
        st: dict[str, Any] = {"id": tid, "reference": f"https://attack.mitre.org/techniques/{tid.replace('.', '/')}/"}
        if sub:
            st["name"] = sub
        technique["subtechnique"] = st
    return {"framework": "MITRE ATT&CK", "technique": technique}


def alert_doc(f: Finding, alert_id: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """An ECS alert document for one (deduplicated) finding."""
    ev = f.event
    doc: dict[str, Any] = {
        "@timestamp": iso(f.ts),
        "ecs": {"version": ECS_VERSION},
        "event": {
            "kind": "alert",
            "category": ["network", "threat"],
            "type": ["indicator"],
            "id": alert_id,
            "severity": SEVERITY_NUM.get(f.severity, 47),
            "risk_score": round(f.score * 100, 1),
            "reason": f.reason,
            "dataset": "dns_detector.alert",
            "module": NAMESPACE,
        },
        "rule": {"id": f.rule_id, "name": f.title, "category": f.category,
                 "ruleset": PRODUCT, "version": __version__},
        "threat": threat_fields(f),
        "host": {"hostname": HOSTNAME, "name": HOSTNAME},
        "observer": {"type": "sensor", "product": PRODUCT, "version": __version__},
        NAMESPACE: {
            "score": f.score,
            "severity": f.severity,
            "entity": f.entity,
            "domain": f.domain,
            "count": f.count,
            "features": f.features,
        },
    }
    if extra:
        doc[NAMESPACE].update(extra)
        if "first_seen" in extra:
            doc["event"]["start"] = iso(extra["first_seen"])
    if ev is not None:
        _network(ev, doc, False)
        if ev.questions or ev.id:
            doc["dns"] = dns_fields(ev)
        doc["related"] = _related(ev, doc.get("dns", {}))
        _process(ev, doc)
        if ev.cause:
            doc[NAMESPACE]["cause"] = ev.cause
    return doc
