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

#: Version of the records sensors publish to ``dns-events``: 2 is a batch
#: ``{"v": 2, "evs": [event, ...]}``; 1 (one event per record, ``{"v": 1, ...}``)
#: is still read. The event form is the same in both (see :func:`W`).
WIRE_VERSION = 2
READ_VERSIONS = (1, 2)


def W(key: str, *, at: int | None = None, rows: type | None = None, row: type | None = None,
      optional: bool = False) -> dict[str, Any]:
    """Field metadata: the field's place in the compact wire form.

    ``key`` alone: the value under that key. ``at=i``: element i of a list under
    ``key`` (fields that travel together, e.g. address and port). ``rows=Cls``: a
    list of Cls records, each a list of Cls's fields in declaration order;
    ``row=Cls``: one such record. ``optional``: left out when None or empty.
    On reading, a key that is missing is an error for a field without default.
    """
    return {"wire": (key, at, rows or row, rows is not None, optional)}

QUERY = "query"
RESPONSE = "response"
UNANSWERED = "unanswered"


@dataclass(slots=True)
class Question:
    name: str  # presentation text (dig's escapes); a damaged name: the labels before the damage
    qtype: int
    qclass: int = 1  # without mDNS's unicast-response bit
    # mDNS (port 5353): the QU bit, the top bit of the class (RFC 6762 5.4), taken out of qclass
    unicast_response: bool = False


@dataclass(slots=True)
class Answer:
    """A resource record of any section (answer, authority, additional; for DNS
    UPDATE the prerequisite and update sections). ``data`` is the typed rdata in
    dig's presentation format (docs/output.md lists the types); a type without a
    presentation here is lowercase hex of the rdata (at most 512 bytes)."""

    name: str
    rtype: int
    ttl: int
    data: str
    rdlength: int = 0
    rclass: int = 1  # without mDNS's cache-flush bit
    # mDNS (port 5353): the cache-flush bit, the top bit of the class (RFC 6762 10.2)
    cache_flush: bool = False


#: Every section's records are Answers; the name for code that is not about answers.
Record = Answer


@dataclass(slots=True)
class EdnsOption:
    """One EDNS option of the OPT record: its code, name (``COOKIE``, ``NSID``,
    ``ECS``, ``PADDING``, ``TCP-KEEPALIVE``, ``EXPIRE``, ``CHAIN``, ``KEY-TAG``,
    ``DAU``, ``DHU``, ``N3U``, ``EDE``...; ``OPT<code>`` when unknown) and its data
    in presentation form (docs/output.md)."""

    code: int
    name: str
    data: str


@dataclass(slots=True)
class Edns:
    udp_size: int
    do: bool = False
    version: int = 0
    client_subnet: str | None = None  # "192.0.2.0/24" when the ECS option is present
    client_subnet_scope: int | None = None  # the ECS option's scope prefix length
    # every option, in wire order (on the wire form: rows of the option's fields)
    options: list[EdnsOption] = field(default_factory=list, metadata={"rows": EdnsOption})
    flags: int = 0  # the OPT TTL's low 16 bits: DO (0x8000) and the Z bits
    ext_rcode: int = 0  # the OPT TTL's top 8 bits (the rcode's upper bits)

    def __post_init__(self) -> None:
        # rows read back from the wire form carry options as plain lists
        o = self.options
        if o and type(o[0]) is not EdnsOption:
            self.options = [EdnsOption(*x) for x in o]


@dataclass(slots=True)
class ProcessInfo:
    """The process that sent (or received) a message. Filled by live capture only.

    ``comm`` is the sending thread's name (what BPF sees, e.g. ``isc-net-0000``);
    ``name`` is the process's own name (the thread group leader's comm, from
    /proc/<pid>/comm), "" when the process was gone. The Kubernetes fields come
    from the cgroup path and /var/log/pods (or the CRI socket) on the node.
    New fields go at the end: the wire form is the fields in declaration order,
    and a shorter row from an older sensor takes the defaults.
    """

    pid: int
    tid: int = 0
    comm: str = ""
    exe: str = ""
    uid: int = -1
    gid: int = -1
    cgroup_id: int = 0
    container_id: str = ""
    name: str = ""
    container_name: str = ""
    pod_name: str = ""
    pod_namespace: str = ""
    pod_uid: str = ""


@dataclass(slots=True)
class DnsEvent:
    """One DNS message seen on the wire (or a synthetic "unanswered" record)."""

    # metadata=W(...): where the field travels in the compact wire form (dns-events);
    # fields without it are not sent (enrichment is derived again by each consumer)
    ts: float = field(metadata=W("ts"))
    transport: str = field(metadata=W("t"))  # "udp" | "tcp"
    ip_version: int = field(metadata=W("ipv"))  # 4 | 6
    src_ip: str = field(metadata=W("s", at=0))
    src_port: int = field(metadata=W("s", at=1))
    dst_ip: str = field(metadata=W("d", at=0))
    dst_port: int = field(metadata=W("d", at=1))
    id: int = field(metadata=W("id"))
    flags: int = field(metadata=W("f"))  # the raw 16-bit flags word (qr, opcode, aa, tc, rd, ra, ad, cd, rcode)
    rcode: int = field(metadata=W("rc"))  # full rcode, extended by EDNS when present
    questions: list[Question] = field(metadata=W("q", rows=Question))
    answers: list[Answer] = field(default_factory=list, metadata=W("a", rows=Answer, optional=True))
    # the authority and additional sections (the OPT record is ``edns``, not a record
    # here); for DNS UPDATE, ``questions`` is the zone, ``answers`` the prerequisites
    # and ``authority`` the updates (RFC 2136 2.2); empty tuples when absent
    authority: list[Answer] = field(default=(), metadata=W("ns", rows=Answer, optional=True))
    additional: list[Answer] = field(default=(), metadata=W("ar", rows=Answer, optional=True))
    ancount: int = field(default=0, metadata=W("c", at=0))
    nscount: int = field(default=0, metadata=W("c", at=1))
    arcount: int = field(default=0, metadata=W("c", at=2))
    size: int = field(default=0, metadata=W("sz"))  # DNS message size in bytes
    edns: Edns | None = field(default=None, metadata=W("e", row=Edns, optional=True))
    process: ProcessInfo | None = field(default=None, metadata=W("p", row=ProcessInfo, optional=True))
    # set by correlate
    kind: str = field(default=QUERY, metadata=W("k"))
    # seconds, on responses (and unanswered: the timeout)
    latency: float | None = field(default=None, metadata=W("lat", optional=True))
    # set by enrich (from the first question's name)
    registered_domain: str = ""
    subdomain: str = ""
    suffix: str = ""
    # set by enrich, once per event for every detector: who asked (the process
    # "comm[pid]" when known, else the client address) and whether the global
    # allowlist covers the event (name, process or client)
    entity: str = ""
    allowed: bool = False
    # set by enrich: the domain lists (DomainIndex bits) covering the name, and those
    # covering its registered domain, for every detector's allowlist and denylist
    # (-1: not looked up; the event has not been through a pipeline's enrichment)
    listed: int = -1
    reg_listed: int = -1
    # set by live capture: upstream query caused by this application query (stub link)
    cause: dict[str, Any] | None = field(default=None, metadata=W("cause", optional=True))
    # set by the decoder (or the packet layers) when part of the message could not be
    # decoded: the reason (``truncated_record``, ``bad_pointer``, ``capture_truncated``...);
    # what came before the damage is kept, and detectors still see the event
    malformed: str = field(default="", metadata=W("m", optional=True))
    # set by live capture for a message read in clear from a TLS library
    # (detector/capture/tls.py): "doh" or "dot"; "" for DNS seen on the wire.
    # ``transport`` stays "tcp" (the ECS network.transport of such a message)
    protocol: str = field(default="", metadata=W("pr", optional=True))

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
    def z(self) -> bool:
        """The header's reserved Z bit (0x0040), which must be zero."""
        return bool(self.flags & 0x0040)

    # DNS UPDATE (opcode 5, RFC 2136): the sections under their UPDATE names
    @property
    def zone(self) -> Question | None:
        return self.questions[0] if self.questions else None

    @property
    def prerequisites(self) -> list[Answer]:
        return self.answers

    @property
    def updates(self) -> list[Answer]:
        return self.authority

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
    #: set by live capture's resolver policy (bpf/dns_enforce.c): "refused" (the
    #: caller got EPERM) or "audit" (it would have been refused); "" otherwise
    policy: str = ""


# --- compact wire form (dns-events topic) -------------------------------------
# event_to_wire / event_from_wire are generated once from DnsEvent's field
# metadata (W): a new field on the wire is one W(...) on its declaration.

class WireVersionError(ValueError):
    pass


def _wire_spec():
    """[(key, [(at, field name, record class, is list, optional, has default)])] in field order."""
    from dataclasses import MISSING, fields

    groups: dict[str, list] = {}
    for f in fields(DnsEvent):
        w = f.metadata.get("wire")
        if w is None:
            continue
        key, at, cls, many, optional = w
        has_default = f.default is not MISSING or f.default_factory is not MISSING
        groups.setdefault(key, []).append((at, f.name, cls, many, optional, has_default))
    return list(groups.items())


def _record_fields(cls) -> list[str]:
    from dataclasses import fields

    return [f.name for f in fields(cls)]


def _generate() -> tuple:
    """Source text of the encoder and the decoder, from the field metadata."""
    from dataclasses import MISSING, fields

    enc = ["def to_wire_fields(ev):", "    d = {}"]
    dec = ["def from_wire_fields(d):"]
    args = []
    env: dict[str, Any] = {"DnsEvent": DnsEvent}
    for i, (key, parts) in enumerate(_wire_spec()):
        k, var = repr(key), f"w{i}"
        at, name, cls, many, optional, has_default = parts[0]
        if at is not None:  # several fields travel as one list
            parts = sorted(parts)
            enc.append(f"    d[{k}] = [" + ", ".join(f"ev.{p[1]}" for p in parts) + "]")
            required = not all(p[5] for p in parts)
            dec.append(f"    {var} = d[{k}]" if required else f"    {var} = d.get({k})")
            for p in parts:
                env[f"D_{p[1]}"] = _default(p[1]) if p[5] else None
                args.append(f"{p[1]}={var}[{p[0]}]" if required else f"{p[1]}={var}[{p[0]}] if {var} else D_{p[1]}")
            continue
        if cls is not None:  # records: lists of the record's fields in declaration order
            env[cls.__name__] = cls
            cols = ", ".join(_record_cols(cls, "r"))
            value = f"[[{cols}] for r in x]" if many else f"[{', '.join(_record_cols(cls, 'x'))}]"
            build = f"[{cls.__name__}(*r) for r in {var}]" if many else f"{cls.__name__}(*{var})"
        else:
            value, build = "x", var
        enc.append(f"    x = ev.{name}")
        if optional:
            test = "    if x:" if many or _default(name) == "" else "    if x is not None:"
            enc += [test, f"        d[{k}] = {value}"]
        else:
            enc.append(f"    d[{k}] = {value}")
        if has_default:
            env[f"D_{name}"] = _default(name)
            dec.append(f"    {var} = d.get({k})")
            empty = "[]" if many and isinstance(env[f"D_{name}"], list) else f"D_{name}"
            args.append(f"{name}={build} if {var} is not None else {empty}")
        else:
            dec.append(f"    {var} = d[{k}]")
            args.append(f"{name}={build}")
    enc.append("    return d")
    # positional, in declaration order (cheaper than keywords); fields not on the wire get
    # their defaults
    by_name = dict(a.split("=", 1) for a in args)
    pos = []
    for f in fields(DnsEvent):
        if f.name in by_name:
            pos.append(by_name[f.name])
        elif f.default is not MISSING:
            env[f"D_{f.name}"] = f.default
            pos.append(f"D_{f.name}")
        else:
            env[f"F_{f.name}"] = f.default_factory
            pos.append(f"F_{f.name}()")
    dec.append("    return DnsEvent(" + ", ".join(pos) + ")")
    src = "\n".join(enc) + "\n\n\n" + "\n".join(dec) + "\n"
    exec(compile(src, "<detector.events wire form>", "exec"), env)  # noqa: S102 - our own text
    return env["to_wire_fields"], env["from_wire_fields"], src


def _record_cols(cls, var: str) -> list[str]:
    """The wire form's expressions for one record's fields; a field declared with
    ``metadata={"rows": Sub}`` is a list of Sub rows (the record's __post_init__ reads them)."""
    from dataclasses import fields

    out = []
    for f in fields(cls):
        sub = f.metadata.get("rows")
        if sub is None:
            out.append(f"{var}.{f.name}")
        else:
            inner = ", ".join(f"o.{g}" for g in _record_fields(sub))
            out.append(f"[[{inner}] for o in {var}.{f.name}]")
    return out


def _default(name: str) -> Any:
    from dataclasses import MISSING, fields

    f = next(f for f in fields(DnsEvent) if f.name == name)
    return f.default if f.default is not MISSING else f.default_factory()


#: to_wire_fields(ev) -> the event's wire dict (no version key); from_wire_fields(d) ->
#: DnsEvent; WIRE_SOURCE is the generated code, for reading
to_wire_fields, from_wire_fields, WIRE_SOURCE = _generate()


def _type_checks() -> list[tuple[str, str | None, tuple]]:
    """(field, record field or None, accepted types) for the plain-typed wire fields."""
    from dataclasses import fields

    plain = {"str": (str,), "int": (int,), "float": (float, int), "bool": (bool,)}
    out: list[tuple[str, str | None, tuple]] = []
    for f in fields(DnsEvent):
        w = f.metadata.get("wire")
        if w is None:
            continue
        t = plain.get(str(f.type).split(" ")[0])
        if t is not None and w[2] is None:
            out.append((f.name, None, t + ((type(None),) if "None" in str(f.type) else ())))
        elif w[3]:  # a list of records: check the first one's plain fields
            out += [(f.name, g.name, plain[str(g.type)]) for g in fields(w[2]) if str(g.type) in plain]
    return out


_CHECKS = _type_checks()


def _generate_check():
    """One boolean expression over every check (the common case: all fine)."""
    env: dict[str, Any] = {}
    terms = []
    for i, (name, sub, types) in enumerate(_CHECKS):
        env[f"T{i}"] = types
        if sub is None:
            terms.append(f"ev.{name}.__class__ in T{i}")
        else:
            terms.append(f"(not ev.{name} or ev.{name}[0].{sub}.__class__ in T{i})")
    src = "def wire_types_ok(ev):\n    return " + " and ".join(terms) + "\n"
    exec(compile(src, "<detector.events type check>", "exec"), env)  # noqa: S102 - our own text
    return env["wire_types_ok"]


wire_types_ok = _generate_check()


def wire_type_error(ev: DnsEvent) -> str:
    """'' when the decoded event's plain fields have their declared types, else what is wrong
    (a record from another producer can hold a number where a name belongs)."""
    if wire_types_ok(ev):
        return ""
    for name, sub, types in _CHECKS:
        v = getattr(ev, name)
        if sub is not None:
            if not v:
                continue
            v = getattr(v[0], sub)
        if not isinstance(v, types):
            return f"{name}{'.' + sub if sub else ''} is {type(v).__name__}"
    return "a field has a subclass of its type"


def event_to_wire(ev: DnsEvent) -> dict[str, Any]:
    """One event as a version-1 record: ``{"v": 1, ...}``."""
    d = to_wire_fields(ev)
    d["v"] = 1
    return d


def event_from_wire(d: dict[str, Any]) -> DnsEvent:
    """A version-1 record (one event) back into a DnsEvent."""
    v = d.get("v")
    if v != 1:
        raise _version_error(v)
    return from_wire_fields(d)


def events_to_record(evs: list[DnsEvent]) -> dict[str, Any]:
    """Events as one version-2 record: ``{"v": 2, "evs": [...]}``."""
    return {"v": WIRE_VERSION, "evs": [to_wire_fields(ev) for ev in evs]}


def conn_entity(c: ConnEvent) -> str:
    """Who opened a connection, as enrichment names the asker of a DNS event: the
    process ``name[pid]`` when known, else the client address. A sensor keys both
    by it, so a client's DNS and its DoT/DoH connections reach one consumer."""
    p = c.process
    if p is not None and p.pid:
        return f"{p.name or p.comm or '?'}[{p.pid}]"
    return c.src_ip


def conn_to_wire(c: ConnEvent, at: int) -> list:
    """A connection record in a version-2 pack: ``at`` is the number of the pack's
    events that came before it, so a reader puts it back in order."""
    p = c.process
    row = [at, c.ts, c.transport, c.ip_version, c.src_ip, c.src_port, c.dst_ip, c.dst_port]
    if p is not None:
        row.append([getattr(p, n) for n in _record_fields(ProcessInfo)])
    return row


def _conn_from_wire(r: list) -> ConnEvent:
    p = ProcessInfo(*r[8]) if len(r) > 8 and r[8] else None
    return ConnEvent(r[1], r[2], r[3], r[4], r[5], r[6], r[7], p)


def events_from_record(d: Any) -> list:
    """Every event in one dns-events record (version 1 or 2): DnsEvents, with the
    pack's ConnEvents (optional ``conns``, read by readers that know them and
    ignored by older ones) back in their place."""
    if not isinstance(d, dict):
        raise TypeError("a dns-events record is a JSON object")
    v = d.get("v")
    if v == 2:
        evs = [from_wire_fields(x) for x in d["evs"]]
        conns = d.get("conns")
        if conns:
            for r in reversed(conns):
                c = _conn_from_wire(r)
                if not isinstance(c.dst_port, int) or not isinstance(c.dst_ip, str):
                    raise TypeError("a connection record has a malformed address")
                evs.insert(min(int(r[0]), len(evs)), c)
        return evs
    if v == 1:
        return [from_wire_fields(d)]
    raise _version_error(v)


def _version_error(v: Any) -> WireVersionError:
    return WireVersionError(
        f"dns-events record has schema version {v!r}; this detector reads versions "
        f"{', '.join(map(str, READ_VERSIONS))} (upgrade the detector or the sensor so they match)")
