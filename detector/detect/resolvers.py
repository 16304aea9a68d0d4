"""Unauthorized resolvers and resolver bypass (DoT, DoH).

``resolvers`` (T1071.004): a DNS query sent to a server outside the
resolver policy. The policy is the rule's and the global allowlists'
``resolvers:`` networks, plus the addresses the command was given
(``--resolvers``), plus, in live capture only, this host's own configuration
(/etc/resolv.conf, and systemd-resolved's upstreams in
/run/systemd/resolve/resolv.conf when present): there the host is the one
being protected. A replayed capture comes from another network, so the
analyst's resolv.conf says nothing about it; replay and consume never read it.
The command states this with :func:`set_policy` before the pipeline is built.
With no policy at all the rule is off (``Resolvers.off`` says why, once on
stderr and in the summary) rather than flagging every server in the capture.
Loopback stubs and multicast, broadcast and mDNS/LLMNR traffic are never a
resolver.

``resolver_bypass`` (T1572): DNS that escapes the allowlisted resolvers by
encryption: a connection to port 853 (DNS over TLS/QUIC), an HTTPS connection
to a known public DoH endpoint address, or a lookup of a known DoH hostname
(the bootstrap query a browser makes before switching to DoH). Known
endpoints: a small built-in list, plus the lists named in ``params.doh_lists``
(paths relative to the shared data folder or absolute; missing files are
reported once and skipped).
"""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path

from detector.detect.base import NAME_CACHE, Detector, entity_of, register
from detector.dns.names import under
from detector.events import ConnEvent, DnsEvent, Finding, conn_entity
from detector.ruleset import Allowlist, RuleSet

log = logging.getLogger(__name__)

RESOLV_CONFS = ("/etc/resolv.conf", "/run/systemd/resolve/resolv.conf")
MULTICAST_DNS_PORTS = frozenset({5353, 5355})
BUILTIN_DOH_HOSTS = frozenset("""
dns.google dns.google.com cloudflare-dns.com mozilla.cloudflare-dns.com chrome.cloudflare-dns.com
1dot1dot1dot1.cloudflare-dns.com one.one.one.one security.cloudflare-dns.com family.cloudflare-dns.com
doh.opendns.com doh.familyshield.opendns.com dns.quad9.net dns9.quad9.net dns10.quad9.net
dns11.quad9.net doh.cleanbrowsing.org dns.adguard.com dns.adguard-dns.com dns.nextdns.io
doh.mullvad.net dns.mullvad.net doh.dns.sb dns.alidns.com doh.pub dns.twnic.tw
doh.libredns.gr ordns.he.net
""".split())
BUILTIN_DOH_IPS = frozenset("""
8.8.8.8 8.8.4.4 1.1.1.1 1.0.0.1 1.1.1.2 1.0.0.2 1.1.1.3 1.0.0.3 9.9.9.9 149.112.112.112
9.9.9.10 9.9.9.11 208.67.222.222 208.67.220.220 94.140.14.14 94.140.15.15 45.90.28.0
45.90.30.0 185.228.168.168 185.228.169.168 194.242.2.2 223.5.5.5 223.6.6.6
2001:4860:4860::8888 2001:4860:4860::8844 2606:4700:4700::1111 2606:4700:4700::1001
2620:fe::fe 2620:fe::9 2620:119:35::35 2620:119:53::53 2a10:50c0::ad1:ff 2a10:50c0::ad2:ff
""".split())


def host_resolvers(paths: tuple[str, ...] | None = None) -> list[str]:
    """Nameserver addresses from resolv.conf files that exist (errors ignored)."""
    out: list[str] = []
    for p in RESOLV_CONFS if paths is None else paths:
        try:
            text = Path(p).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                out.append(parts[1].split("%")[0])
    return out


def set_policy(rules: RuleSet, *, host_config: bool, resolvers: tuple = ()) -> None:
    """Give the ``resolvers`` rules the policy of the command that runs them.

    ``host_config``: the capture is this host's own traffic (``detector live``),
    so its resolv.conf nameservers are allowed, unless the rule sets
    ``use_host_config: false``. Replay and consume pass False: whatever a rule
    says, the analyst's host configuration is not the captured network's.
    ``resolvers``: networks from ``--resolvers``, allowed on top of the rules'.
    """
    for r in rules.rules:
        if r.detector != Resolvers.name:
            continue
        r.thresholds["use_host_config"] = bool(host_config and r.thresholds.get("use_host_config", True))
        if resolvers:
            r.allowlist = r.allowlist.merged(Allowlist(resolvers=tuple(resolvers)))


def not_a_resolver(ip: str) -> bool:
    """Multicast (mDNS 224.0.0.251 / ff02::fb, LLMNR 224.0.0.252 / ff02::1:3, any
    224.0.0.0/4 or ff00::/8 group), broadcast and unspecified addresses: name
    resolution sent there goes to every host on the link, not to a resolver."""
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return a.is_multicast or a.is_unspecified or a == _BROADCAST


_BROADCAST = ipaddress.ip_address("255.255.255.255")


@register
class Resolvers(Detector):
    name = "resolvers"
    # Set by the command (see set_policy), never on by default: only live capture
    # may read the host's resolv.conf. A rule may set false to opt out in live.
    params = {"use_host_config": False}
    kinds = frozenset({"query"})

    def __init__(self, rule, rules) -> None:
        super().__init__(rule, rules)
        nets = list(rule.allowlist.resolvers) + list(rules.allowlist.resolvers)
        self.host = host_resolvers() if self.p["use_host_config"] else []
        for ip in self.host:
            try:
                nets.append(ipaddress.ip_network(ip))
            except ValueError:
                continue
        self.nets = nets
        self._cache: dict[str, bool] = {}
        #: why the rule is off ("" when on): with no policy every server would be "unauthorized"
        self.off = "" if nets else (
            "no resolver policy (list the site's resolvers under allowlist.resolvers in "
            "rules/resolvers.yaml or an allowlist file, or pass --resolvers ADDR[,CIDR...])")
        if self.off:
            _say_off(rule.id, self.off)

    def allowed_resolver(self, ip: str) -> bool:
        r = self._cache.get(ip)
        if r is None:
            if len(self._cache) > 65536:
                self._cache.clear()
            try:
                a = ipaddress.ip_address(ip)
                r = a.is_loopback or not_a_resolver(ip) or any(
                    a.version == n.version and a in n for n in self.nets)
            except ValueError:
                r = False
            self._cache[ip] = r
        return r

    def process(self, ev: DnsEvent) -> list[Finding]:
        return self.process_batch((ev,))

    def process_batch(self, evs) -> list[Finding]:
        if self.off:
            return []
        out: list[Finding] = []
        cache = self._cache
        for ev in evs:
            if ev.protocol:  # DoH/DoT read from the TLS library: the bypass rule judges those
                continue
            if ev.dst_port in MULTICAST_DNS_PORTS or ev.src_port in MULTICAST_DNS_PORTS:
                continue
            srv = ev.dst_ip
            ok = cache.get(srv)
            if ok or (ok is None and self.allowed_resolver(srv)):
                continue
            if self.rule.allowlist.covers_process(ev) or self.rules.allowlist.covers_process(ev) \
                    or self.rule.allowlist.covers_resolver(ev.src_ip):
                continue
            ent = entity_of(ev)
            out.append(self.finding(
                ev, score=0.8, entity=ent, domain=srv,
                features={"resolver": srv, "resolver_port": ev.dst_port, "qname": ev.qname,
                          "allowed_resolvers": [str(n) for n in self.nets][:10]},
                reason=f"{ent} sent DNS to {srv}:{ev.dst_port}, which is not an allowed resolver"))
        return out


_said_off: set[str] = set()


def _say_off(rule_id: str, why: str) -> None:
    # Once per process: consume builds one pipeline per partition.
    if rule_id not in _said_off:
        _said_off.add(rule_id)
        log.warning("rule %s is off: %s", rule_id, why)


@register
class ResolverBypass(Detector):
    name = "resolver_bypass"
    params = {
        "dot_ports": [853],
        "doh_port": 443,
        # A lookup of a DoH hostname alone is no alert: browsers and OS resolvers
        # probe their DoH endpoints routinely. Its answers join the known DoH
        # addresses instead, so the connection that follows is the alert.
        "alert_on_lookup": False,
        "max_learned": 4096,  # DoH addresses learnt from answers (oldest dropped)
    }
    kinds = frozenset({"query", "response"})

    def __init__(self, rule, rules) -> None:
        super().__init__(rule, rules)
        self.hosts, self.ips = load_doh_lists(rule.params.get("doh_lists", []) or [])
        self.dot_ports = frozenset(int(p) for p in self.p["dot_ports"])
        self.learned: dict[str, str] = {}  # address -> the DoH hostname it answered for
        self._hits: dict[str, str | None] = {}  # name as sent -> DoH host it is under
        self._bit = 0  # the DoH hosts' bit in the pipeline's DomainIndex (bind)

    def bind(self, index) -> None:
        super().bind(index)
        self._bit = index.bit(self.hosts, min_dots=1)

    @staticmethod
    def check_rule(rule) -> str | None:
        lists = rule.params.get("doh_lists", [])
        if lists is not None and not isinstance(lists, list):
            return "params.doh_lists: expected a list of file paths"
        return None

    def process(self, ev: DnsEvent) -> list[Finding]:
        return self.process_batch((ev,))

    def process_batch(self, evs) -> list[Finding]:
        out: list[Finding] = []
        hits = self._hits
        hosts = self.hosts
        bit = self._bit if self._index is not None else 0
        for ev in evs:
            if not ev.questions or ev.kind == "response" and not ev.answers:
                continue
            if bit and ev.listed >= 0 and not ev.listed & bit:
                continue  # enrichment's walk: the name is no DoH host and under none
            q = ev.questions[0].name
            hit = hits.get(q, 0)
            if hit == 0:  # once per distinct name: the DoH host it is (or is under), or None
                # enrichment's walk says whether the name is a DoH host or under one at
                # all; which one is looked up only for a hit
                hit = under(q.lower().rstrip("."), hosts, min_dots=1) if (
                    not bit or ev.listed < 0 or ev.listed & bit) else None
                if len(hits) >= NAME_CACHE:
                    hits.clear()
                hits[q] = hit
            if hit is not None:
                out.extend(self._doh_name(ev, q, hit))
        return out

    def _doh_name(self, ev: DnsEvent, q: str, hit: str) -> list[Finding]:
        """A message about a known DoH host: its answers are learnt, its lookup may be a finding."""
        name = q.lower().rstrip(".")
        if ev.kind == "response":
            for a in ev.answers:
                if a.rtype in (1, 28) and a.data not in self.ips:
                    self.learned[a.data] = hit
                    if len(self.learned) > self.p["max_learned"]:
                        del self.learned[next(iter(self.learned))]
            return []
        if not self.p["alert_on_lookup"] or self.rule.allowlist.covers_domain(name) \
                or self.rule.allowlist.covers_process(ev) or self.rules.allowlist.covers_process(ev):
            return []
        ent = entity_of(ev)
        return [self.finding(
            ev, score=0.7, entity=ent, domain=hit,
            features={"method": "doh-bootstrap", "qname": name, "listed": hit},
            reason=f"{ent} looked up {name}, a known DNS-over-HTTPS endpoint: "
                   "its DNS is about to bypass the allowed resolvers")]

    def process_conn(self, c: ConnEvent) -> list[Finding]:
        if c.dst_port in self.dot_ports:
            method = "dot" if c.transport == "tcp" else "doq"
        elif c.dst_port == self.p["doh_port"] and (c.dst_ip in self.ips or c.dst_ip in self.learned):
            method = "doh"
        else:
            return []
        if self.rule.allowlist.covers_resolver(c.dst_ip) or self.rules.allowlist.covers_resolver(c.dst_ip):
            return []
        if self.rule.allowlist.covers_process(c):
            return []
        ent = conn_entity(c)
        what = {"dot": "DNS over TLS", "doq": "DNS over QUIC", "doh": "DNS over HTTPS"}[method]
        f = self.finding(
            None, score=0.8, entity=ent, domain=c.dst_ip, ts=c.ts,
            features={"method": method, "server": c.dst_ip, "port": c.dst_port,
                      "transport": c.transport, "source": f"{c.src_ip}:{c.src_port}",
                      **({"doh_host": self.learned[c.dst_ip]} if c.dst_ip in self.learned else {})},
            reason=f"{ent} opened {what} to {c.dst_ip}:{c.dst_port}, bypassing the allowed resolvers")
        f.ts = c.ts
        return [f]


def load_doh_lists(paths: list[str]) -> tuple[frozenset[str], frozenset[str]]:
    """Built-in DoH hosts and IPs plus the given list files (one per line, # comments)."""
    from detector.paths import shared_data

    hosts, ips = set(BUILTIN_DOH_HOSTS), set(BUILTIN_DOH_IPS)
    for p in paths:
        path = Path(p) if os.path.isabs(p) else shared_data() / p
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as e:
            log.warning("DoH list %s not loaded: %s", path, e.strerror or e)
            continue
        for line in lines:
            item = line.split("#", 1)[0].strip().lower().rstrip(".")
            if not item:
                continue
            try:
                ips.add(str(ipaddress.ip_address(item)))
            except ValueError:
                if "." in item:
                    hosts.add(item)
    return frozenset(hosts), frozenset(ips)
