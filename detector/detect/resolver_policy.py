"""The resolver policy applied in the kernel: ``detector live --audit`` / ``--enforce``.

:func:`build_policy` turns the same policy the ``resolvers`` rule applies
(its and the global allowlists' ``resolvers:``, ``--resolvers``, and this
host's resolv.conf nameservers unless ``--no-host-resolvers`` or
``use_host_config: false``), plus the ``resolver_bypass`` rule's allowlisted
resolvers and known DoH endpoint addresses, into what bpf/dns_enforce.c reads
from its maps (:class:`KernelPolicy`; loaded by LiveCapture). The kernel then
refuses (``--enforce``: the caller's connect()/sendmsg() fails with EPERM) or
only reports (``--audit``):

* DNS (port 53, UDP or TCP) to an address outside the approved resolvers;
* DNS over TLS (TCP 853) or QUIC (UDP 853, 784) to a server outside them;
* port 443 to a known DoH endpoint address that is not an approved resolver.

Loopback (local stubs), multicast, broadcast and unspecified addresses are
always allowed. Per cgroup: a cgroup v2 group may be exempt (nothing refused)
or have resolvers of its own, which replace the host's for processes in that
very group (``--policy-cgroup PATH=exempt`` or ``PATH=ADDR[,CIDR...]``, or the
rule's ``params.cgroups``). That is a container's policy keyed by its cgroup
id; a process in a child group of it gets the host's policy.

:class:`ResolverPolicy` turns each report (a ConnEvent with ``policy`` set
by live capture) into a ``resolver-policy-refused`` finding naming the
process, with ``action: refused`` or ``action: audit`` in its features.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field

from detector.detect.base import Detector, register
from detector.events import ConnEvent, DnsEvent, Finding, conn_entity

MODES = ("audit", "enforce")
#: bpf/dns_enforce.c's ENF_* bits per destination port
ENF_DNS, ENF_DOT, ENF_DOQ, ENF_DOH = 1, 2, 4, 8
PORTS = {53: ENF_DNS, 853: ENF_DOT | ENF_DOQ, 784: ENF_DOQ, 443: ENF_DOH}
EXEMPT, OWN = "exempt", "own"


class PolicyError(ValueError):
    """The policy cannot be enforced as given (no resolver at all, a cgroup that is
    not there, an address that is none)."""


@dataclass
class KernelPolicy:
    """What bpf/dns_enforce.c's maps hold."""

    mode: str  # "audit" | "enforce"
    #: (scope, network): scope 0 is the host's policy, a cgroup id that group's own
    approved: list[tuple[int, object]] = field(default_factory=list)
    doh: frozenset[str] = frozenset()  # known DoH endpoint addresses
    cgroups: dict[int, str] = field(default_factory=dict)  # cgroup id -> EXEMPT | OWN
    ports: dict[int, int] = field(default_factory=lambda: dict(PORTS))

    def host_networks(self) -> list[str]:
        return [str(n) for s, n in self.approved if s == 0]


def parse_networks(items, where: str) -> list:
    out = []
    for it in items:
        s = str(it).strip()
        if not s:
            continue
        try:
            out.append(ipaddress.ip_network(s, strict=False))
        except ValueError:
            raise PolicyError(f"{where}: {s!r} is no address or network") from None
    return out


def cgroup_id(path: str, root: str | None) -> int:
    """A cgroup v2 group's id (its inode number, what bpf_get_current_cgroup_id gives):
    ``path`` absolute, or relative to the cgroup v2 mount ``root``."""
    p = path if os.path.isabs(path) or root is None else os.path.join(root, path.lstrip("/"))
    try:
        st = os.stat(p)
    except OSError as e:
        raise PolicyError(f"cgroup {path}: {e.strerror}") from None
    if not os.path.exists(os.path.join(p, "cgroup.procs")):
        raise PolicyError(f"cgroup {path}: not a cgroup v2 group (no cgroup.procs)")
    return st.st_ino


def parse_cgroup_spec(spec: str) -> tuple[str, str | list]:
    """``PATH=exempt`` or ``PATH=ADDR[,CIDR...]`` -> (path, EXEMPT or networks)."""
    path, sep, what = spec.rpartition("=")
    if not sep or not path or not what:
        raise PolicyError(f"--policy-cgroup {spec!r}: expected PATH=exempt or PATH=ADDR[,CIDR...]")
    if what.strip() == EXEMPT:
        return path, EXEMPT
    return path, parse_networks(what.split(","), f"--policy-cgroup {path}")


def build_policy(rules, mode: str, *, resolvers=(), host_resolvers: bool = True,
                 cgroups=(), cgroup_root: str | None = None) -> KernelPolicy:
    """The kernel's policy from the rules (after resolvers.set_policy), the command's
    ``--resolvers`` and ``--policy-cgroup`` specs. Raises PolicyError when it would
    approve no resolver at all: refusing every non-loopback DNS query of the host
    is never what an operator meant."""
    from detector.detect.resolvers import ResolverBypass, Resolvers, host_resolvers as read_host, \
        load_doh_lists

    if mode not in MODES:
        raise PolicyError(f"unknown enforcement mode {mode!r}")
    nets = list(rules.allowlist.resolvers) + parse_networks(resolvers, "--resolvers")
    use_host = host_resolvers
    doh_lists: list[str] = []
    for r in rules.rules:
        if r.detector == Resolvers.name:
            nets += list(r.allowlist.resolvers)
            use_host = use_host and bool(r.thresholds.get("use_host_config", True))
        elif r.detector == ResolverBypass.name:
            nets += list(r.allowlist.resolvers)  # sanctioned DoT/DoH servers
            doh_lists += list(r.params.get("doh_lists") or [])
    if use_host:
        nets += parse_networks(read_host(), "resolv.conf")
    if not nets:
        raise PolicyError("no resolver policy: every DNS query off this host would be refused (list "
                          "the site's resolvers in rules/resolvers.yaml or pass --resolvers)")
    _, doh = load_doh_lists(doh_lists)
    pol = KernelPolicy(mode=mode, doh=doh)
    seen = set()
    for n in nets:
        if (0, n) not in seen:
            seen.add((0, n))
            pol.approved.append((0, n))
    specs = [parse_cgroup_spec(s) if isinstance(s, str) else s for s in cgroups]
    for r in rules.rules:
        if r.detector == ResolverPolicy.name:
            specs += [_rule_cgroup(c) for c in r.params.get("cgroups") or []]
    for path, what in specs:
        cg = cgroup_id(path, cgroup_root)
        if what == EXEMPT:
            pol.cgroups[cg] = EXEMPT
        else:
            pol.cgroups[cg] = OWN
            pol.approved += [(cg, n) for n in what]
    return pol


def _rule_cgroup(c) -> tuple[str, str | list]:
    if not isinstance(c, dict) or "path" not in c:
        raise PolicyError("resolver-policy params.cgroups: each entry needs a path")
    if c.get("exempt"):
        return str(c["path"]), EXEMPT
    return str(c["path"]), parse_networks(c.get("resolvers") or [], f"params.cgroups {c['path']}")


METHODS = {53: "dns", 853: "dot", 784: "doq", 443: "doh"}
WHAT = {"dns": "DNS", "dot": "DNS over TLS", "doq": "DNS over QUIC", "doh": "DNS over HTTPS"}


@register
class ResolverPolicy(Detector):
    name = "resolver_policy"
    params: dict = {}
    kinds = frozenset()  # no DNS events: the kernel's reports come as ConnEvents

    @staticmethod
    def check_rule(rule) -> str | None:
        cg = rule.params.get("cgroups", [])
        if cg is not None and not isinstance(cg, list):
            return "params.cgroups: expected a list of {path, exempt | resolvers}"
        return None

    def process(self, ev: DnsEvent) -> list[Finding]:
        return []

    def process_conn(self, c: ConnEvent) -> list[Finding]:
        action = getattr(c, "policy", "")
        if not action:
            return []
        method = METHODS.get(c.dst_port, "dns")
        if method == "dot" and c.transport == "udp":
            method = "doq"
        ent = conn_entity(c)
        # the alert's event: the attempt as a query-less DNS record, so the alert
        # carries the process (pid, comm, exe, container) like every other one
        ev = DnsEvent(ts=c.ts, transport=c.transport, ip_version=c.ip_version, src_ip=c.src_ip,
                      src_port=c.src_port, dst_ip=c.dst_ip, dst_port=c.dst_port, id=0, flags=0, rcode=0,
                      questions=[], process=c.process)
        verb = "was refused" if action == "refused" else "would have been refused (audit)"
        f = self.finding(
            ev, score=0.8, entity=ent, domain=c.dst_ip, ts=c.ts,
            features={"action": action, "method": method, "server": c.dst_ip, "port": c.dst_port,
                      "transport": c.transport,
                      "cgroup_id": c.process.cgroup_id if c.process is not None else 0},
            reason=f"{ent}: {WHAT[method]} to {c.dst_ip}:{c.dst_port}/{c.transport} {verb}: "
                   "the server is outside the resolver policy")
        f.ts = c.ts
        return [f]
