"""DNS on a non-standard port (T1571): a DNS message whose server port is not 53.

Live capture recognizes DNS on any UDP port by its content (bpf/dns_skb.c), so
a resolver on 127.0.0.1:5354, a tunnel server on 1053 or C2 speaking DNS on
8053 reaches the pipeline like any DNS message. This detector raises one
finding per process (or client address) and server port: who talks DNS to a
port that is not the standard one. Expected: 53, mDNS (5353) and LLMNR (5355),
the ports in ``thresholds.expected_ports``, and in live capture the ports the
sensor was told carry DNS (``--ports``, see :func:`expect_ports`). The rule's
allowlist (processes, clients, domains) applies as for every rule.
"""

from __future__ import annotations

from detector.detect.base import Detector, entity_of, register
from detector.events import DnsEvent, Finding

STANDARD_PORTS = frozenset({53, 5353, 5355})
MAX_SEEN = 65_536  # (entity, port) pairs remembered; then it starts afresh


def expect_ports(rules, ports) -> None:
    """Ports a command was told carry DNS are expected, not findings (``detector
    live --ports 53,8053``): add them to every ``nonstandard_port`` rule."""
    for r in rules.rules:
        if r.detector == NonStandardPort.name:
            have = list(r.thresholds.get("expected_ports", NonStandardPort.params["expected_ports"]))
            r.thresholds["expected_ports"] = have + [int(p) for p in ports if int(p) not in have]


@register
class NonStandardPort(Detector):
    name = "nonstandard_port"
    params = {"expected_ports": [53, 5353, 5355]}
    kinds = frozenset({"query", "response"})

    def __init__(self, rule, rules) -> None:
        super().__init__(rule, rules)
        self.expected = STANDARD_PORTS | frozenset(int(p) for p in self.p["expected_ports"])
        self._seen: set[tuple[str, int]] = set()

    def process(self, ev: DnsEvent) -> list[Finding]:
        return self.process_batch((ev,))

    def process_batch(self, evs) -> list[Finding]:
        out: list[Finding] = []
        expected = self.expected
        for ev in evs:
            if ev.protocol:  # DoH/DoT read from the TLS library: its port is HTTPS's or DoT's
                continue
            # the server's port (the destination of a query, the source of a response)
            # and the client's: a message touching an expected port is not judged
            if ev.src_port in expected or ev.dst_port in expected:
                continue
            f = self._judge(ev)
            if f is not None:
                out.append(f)
        return out

    def _judge(self, ev: DnsEvent) -> Finding | None:
        """A message between two unexpected ports: a finding once per entity and port."""
        port = ev.src_port if ev.flags & 0x8000 else ev.dst_port
        ent = entity_of(ev)
        key = (ent, port)
        if key in self._seen or self.allowed(ev):
            return None
        if len(self._seen) >= MAX_SEEN:
            self._seen.clear()
        self._seen.add(key)
        server, client = ev.server, ev.client
        p = ev.process
        who = f"{p.name or p.comm}[{p.pid}]" if p is not None and p.pid else f"client {client[0]}"
        f = self.finding(
            ev, score=0.6, entity=ent, domain=ev.registered_domain or ev.qname,
            features={"port": port, "server": f"{server[0]}:{server[1]}", "transport": ev.transport,
                      "qname": ev.qname, "qtype": ev.qtype, "expected_ports": sorted(self.expected)},
            reason=f"{who} spoke DNS with {server[0]} on port {port}/{ev.transport}, "
                   "not a standard DNS port")
        f.key = f"port {port}"  # one alert per process and port, whatever the names asked
        return f
