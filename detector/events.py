"""The typed records that flow between pipeline stages.

capture/ and dns/ produce :class:`DnsEvent`; pipeline/correlate.py sets ``kind``
and ``latency``; pipeline/enrich.py sets the domain split; detect/ turns events
into :class:`Finding`; alerts/ turns findings into ECS documents.

Every field is a plain value so an event can cross Kafka as compact JSON
(:func:`event_to_wire` / :func:`event_from_wire`, versioned by ``WIRE_VERSION``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from detector.dns.constants import (FLAG_AA, FLAG_AD, FLAG_CD, FLAG_QR, FLAG_RA,  # noqa: F401
                                     FLAG_RD, FLAG_TC)

#: Version of the compact JSON form sensors publish to ``dns-events``.
WIRE_VERSION = 1

QUERY = "query"
RESPONSE = "response"
UNANSWERED = "unanswered"


@dataclass(slots=True)
class Question:
    name: str
    qtype: int
    qclass: int = 1


@dataclass(slots=True)
class Answer:
    name: str
    rtype: int
    ttl: int
    data: str
    rdlength: int = 0


@dataclass(slots=True)
class Edns:
    udp_size: int
    do: bool = False
    version: int = 0
    client_subnet: str | None = None  # "192.0.2.0/24" when the ECS option is present


@dataclass(slots=True)
class ProcessInfo:
    """The process that sent (or received) a message. Filled by live capture only."""

    pid: int
    tid: int = 0
    comm: str = ""
    exe: str = ""
    uid: int = -1
    gid: int = -1
    cgroup_id: int = 0
    container_id: str = ""


@dataclass(slots=True)
class DnsEvent:
    """One DNS message seen on the wire (or a synthetic "unanswered" record)."""

    ts: float
    transport: str  # "udp" | "tcp"
    ip_version: int  # 4 | 6
    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int
    id: int
    flags: int  # the raw 16-bit flags word (qr, opcode, aa, tc, rd, ra, ad, cd, rcode)
    rcode: int  # full rcode, extended by EDNS when present
    questions: list[Question]
    answers: list[Answer] = field(default_factory=list)
    ancount: int = 0
    nscount: int = 0
    arcount: int = 0
    size: int = 0  # DNS message size in bytes
    edns: Edns | None = None
    process: ProcessInfo | None = None
    # set by correlate
    kind: str = QUERY
    latency: float | None = None  # seconds, on responses (and unanswered: the timeout)
    # set by enrich (from the first question's name)
    registered_domain: str = ""
    subdomain: str = ""
    suffix: str = ""
    # set by enrich, once per event for every detector: who asked (the process
    # "comm[pid]" when known, else the client address) and whether the global
    # allowlist covers the event (name, process or client)
    entity: str = ""
    allowed: bool = False
    # set by live capture: upstream query caused by this application query (stub link)
    cause: dict[str, Any] | None = None
    # set by the decoder when the message broke after the question section
    malformed: str = ""

    # --- header accessors ---------------------------------------------------
    @property
    def qr(self) -> bool:
        return bool(self.flags & FLAG_QR)

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF

    @property
    def aa(self) -> bool:
        return bool(self.flags & FLAG_AA)

    @property
    def tc(self) -> bool:
        return bool(self.flags & FLAG_TC)

    @property
    def rd(self) -> bool:
        return bool(self.flags & FLAG_RD)

    @property
    def ra(self) -> bool:
        return bool(self.flags & FLAG_RA)

    @property
    def ad(self) -> bool:
        return bool(self.flags & FLAG_AD)

    @property
    def cd(self) -> bool:
        return bool(self.flags & FLAG_CD)

    @property
    def qname(self) -> str:
        return self.questions[0].name if self.questions else ""

    @property
    def qtype(self) -> int:
        return self.questions[0].qtype if self.questions else 0

    @property
    def client(self) -> tuple[str, int]:
        """The (address, port) of the side that asked."""
        return (self.dst_ip, self.dst_port) if self.qr else (self.src_ip, self.src_port)

    @property
    def server(self) -> tuple[str, int]:
        return (self.src_ip, self.src_port) if self.qr else (self.dst_ip, self.dst_port)


@dataclass(slots=True)
class Finding:
    """What a detector reports; alerts/ dedups it and renders it as ECS."""

    rule_id: str
    title: str
    score: float  # 0..1
    severity: str  # "low" | "medium" | "high" | "critical"
    technique_id: str
    technique_name: str
    entity: str  # who: process "comm[pid]" or client address
    domain: str  # registered domain or resolver address the finding is about
    features: dict[str, Any]
    reason: str  # one sentence that explains the finding
    event: DnsEvent | None = None
    ts: float = 0.0
    category: str = "dns"  # dga | tunnel | resolver | health | denylist
    count: int = 1  # events this finding stands for (set by dedup)
    # what one open alert is about, when not the domain: a DGA campaign's generator
    # shape, so the alert is updated as the campaign grows instead of repeated
    key: str = ""
    # the detector says this finding changes what an open alert reports (a campaign
    # that doubled, a C2 candidate that resolved): dedup re-emits the alert
    revise: bool = False


@dataclass(slots=True)
class ConnEvent:
    """A connection that may carry DNS we cannot read: DoT (853) or DoH (443).

    The packet layers emit one per TCP SYN (or first UDP datagram) to a watched
    port; live capture emits one per connect() with the process behind it.
    """

    ts: float
    transport: str  # "udp" | "tcp"
    ip_version: int
    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int
    process: ProcessInfo | None = None


# --- compact wire form (dns-events topic) -------------------------------------

def event_to_wire(ev: DnsEvent) -> dict[str, Any]:
    d: dict[str, Any] = {
        "v": WIRE_VERSION,
        "ts": ev.ts,
        "t": ev.transport,
        "ipv": ev.ip_version,
        "s": [ev.src_ip, ev.src_port],
        "d": [ev.dst_ip, ev.dst_port],
        "id": ev.id,
        "f": ev.flags,
        "rc": ev.rcode,
        "q": [[q.name, q.qtype, q.qclass] for q in ev.questions],
        "c": [ev.ancount, ev.nscount, ev.arcount],
        "sz": ev.size,
        "k": ev.kind,
    }
    if ev.answers:
        d["a"] = [[a.name, a.rtype, a.ttl, a.data, a.rdlength] for a in ev.answers]
    if ev.edns is not None:
        e = ev.edns
        d["e"] = [e.udp_size, e.do, e.version, e.client_subnet]
    if ev.process is not None:
        p = ev.process
        d["p"] = [p.pid, p.tid, p.comm, p.exe, p.uid, p.gid, p.cgroup_id, p.container_id]
    if ev.latency is not None:
        d["lat"] = ev.latency
    if ev.cause:
        d["cause"] = ev.cause
    return d


class WireVersionError(ValueError):
    pass


def event_from_wire(d: dict[str, Any]) -> DnsEvent:
    v = d.get("v")
    if v != WIRE_VERSION:
        raise WireVersionError(
            f"dns-events record has schema version {v!r}; this detector understands version "
            f"{WIRE_VERSION} only (upgrade the detector or the sensor so they match)"
        )
    an, ns, ar = d["c"]
    e = d.get("e")
    p = d.get("p")
    return DnsEvent(
        ts=d["ts"],
        transport=d["t"],
        ip_version=d["ipv"],
        src_ip=d["s"][0],
        src_port=d["s"][1],
        dst_ip=d["d"][0],
        dst_port=d["d"][1],
        id=d["id"],
        flags=d["f"],
        rcode=d["rc"],
        questions=[Question(*q) for q in d["q"]],
        answers=[Answer(*a) for a in d.get("a", ())],
        ancount=an,
        nscount=ns,
        arcount=ar,
        size=d["sz"],
        edns=Edns(*e) if e else None,
        process=ProcessInfo(*p) if p else None,
        kind=d.get("k", QUERY),
        latency=d.get("lat"),
        cause=d.get("cause"),
    )
