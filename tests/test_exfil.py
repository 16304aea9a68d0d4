"""Small exfiltration: a file of 100-144 bytes leaving in a few DNS names.

A DNSExfiltrator-style session (base64url and base32 chunks in TXT queries under
one domain) inside ordinary traffic from the shared benign lists, written to a
pcap and replayed with `detector replay pcap`: dns-exfiltration must name the
exfiltrating client and domain, and nobody else. A cut of the real dns2tcp
capture (28 queries of a file transfer) must raise it too.
"""

from __future__ import annotations

import random
from pathlib import Path

from detector.capture.pcap import PcapReader
from detector.capture.pcapwrite import write_pcap
from detector.events import DnsEvent, Question
from detector.paths import REPO
from tests.conftest import json_lines, run_detector
from tests.dns_sessions import T0, Capture, benign_names, dnsexfiltrator, encode, odd_but_ordinary
from tests.test_tunnel import TUNNEL_RULES, _run

# the tunnel and exfiltration rules with the shared allowlist (DGA has its own tests)
RULES = [str(REPO / "rules" / f) for f in ("tunnel.yaml", "exfil.yaml", "allowlist.yaml")]


def _replay(pcap: Path) -> list[dict]:
    args = ["replay", "pcap", str(pcap), "--format", "jsonl", "-q"]
    for r in RULES:
        args += ["--rules", r]
    res = run_detector(*args)
    assert res.returncode == 0, res.stderr
    return [d for d in json_lines(res.stdout) if "rule_id" in d]


# a 100-byte and a 144-byte file (credentials, a key): what a small exfiltration takes
SMALL_FILES = {
    "base64": (b"vpn-user: j.doe@example-corp.com\npassword: Winter2024!Secure\n"
               b"otp-seed: JBSWY3DPEHPK3PXP\nhost: vpn.corp\n")[:100],
    "base32": (b"-----BEGIN OPENSSH PRIVATE KEY-----\n"
               b"b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
               b"QyNTUxOQAAACDx1u9PAd3XcmV5\n-----END-----\n")[:144],
}
EXFIL = {  # client -> (domain, encoding, DNSExfiltrator request/label size options)
    "10.20.0.66": ("cdn-metrics.net", "base64", {}),
    "10.20.0.67": ("sync-telemetry.org", "base32", {"request_max": 120, "label_max": 30}),
}


def build_small_exfil_capture(data: Path, path: Path) -> dict:
    """Two minutes of an office: eight people browsing (names from the benign lists),
    a mail server (DNSBL, DKIM), an anti-virus client, a CDN-heavy client, a build
    farm with long host names, twenty IoT devices reporting their 32-hex ids; and two
    clients that send a small file out, DNSExfiltrator-style, one TXT query a second,
    while they browse too. Returns what was sent: client -> (domain, encoded bytes,
    first and last query time, queries)."""
    rnd = random.Random(7)
    cap = Capture()
    browsers = [f"10.20.0.{i}" for i in range(10, 18)] + list(EXFIL)
    names = benign_names(data, 12 * len(browsers) * 10, seed=7)
    for i, name in enumerate(names):  # one lookup every ~0.1 s spread over 120 s
        cap.query(T0 + i * 120 / len(names), browsers[i % len(browsers)], name)
    odd = odd_but_ordinary(rnd)
    for kind, client in (("dnsbl", "10.20.0.25"), ("dkim_acme", "10.20.0.25"), ("antivirus", "10.20.0.30"),
                         ("cdn", "10.20.0.31"), ("long_hosts", "10.20.0.32")):
        for i, (name, qt) in enumerate(odd[kind]):  # each kind within one minute
            cap.query(T0 + 30 + i * 60 / len(odd[kind]), client, name, qt,
                      rcode=3 if kind == "dnsbl" else 0)
    for d in range(20):
        dev_id = f"{rnd.getrandbits(128):032x}"
        for k in range(3):
            cap.query(T0 + d + 40 * k, f"10.21.0.{d + 1}", f"{dev_id}.devices.example-iot.com")
    sent = {}
    for n, (client, (domain, enc, opts)) in enumerate(EXFIL.items()):
        queries = dnsexfiltrator(SMALL_FILES[enc], domain, enc, **opts)
        start = T0 + 45 + 20 * n
        for k, (name, txt) in enumerate(queries):
            cap.query(start + k, client, name, 16, txt=txt.encode())
        encoded = len(encode(SMALL_FILES[enc], enc))
        sent[client] = (domain, encoded, start, start + len(queries) - 1, len(queries))
    cap.write(path)
    return sent


def test_small_dnsexfiltrator_session_raises_exfiltration_and_nothing_else(tmp_path, data):
    assert len(SMALL_FILES["base64"]) == 100 and len(SMALL_FILES["base32"]) == 144
    sent = build_small_exfil_capture(data, tmp_path / "small-exfil.pcap")
    alerts = _replay(tmp_path / "small-exfil.pcap")
    exfil = [a for a in alerts if a["rule_id"] == "dns-exfiltration"]
    assert {(a["entity"], a["domain"]) for a in exfil} == {(c, s[0]) for c, s in sent.items()}, \
        [a["reason"] for a in exfil]
    for a in exfil:
        domain, encoded, first, last, n_queries = sent[a["entity"]]
        f = a["features"]
        assert 100 <= f["payload_bytes_out"] <= encoded + 40  # the file's chunks (+ the init label)
        assert first <= a["ts"] <= last  # caught while the file was leaving
    assert sent["10.20.0.67"][4] >= 4  # the base32 transfer takes several queries
    # nobody else: not the browsers, the mail server, the anti-virus, the CDN client,
    # the build farm or the devices (no tunnel or exfiltration alert)
    others = [(a["rule_id"], a["entity"], a["domain"]) for a in alerts if a["entity"] not in sent]
    assert others == []


def _ev(ts: float, client: str, name: str, qtype: int = 16) -> DnsEvent:
    return DnsEvent(ts, "udp", 4, client, 40000, "10.0.0.53", 53, 1, 0x0100, 0, [Question(name, qtype, 1)],
                    size=12 + len(name) + 6)


def test_the_small_gate_counts_encoded_bytes_within_a_minute():
    """100 encoded bytes within 60 s alert, whatever the record type; 90 do not, nor
    do 100 spread over more than a minute, nor a repeated name."""
    rnd = random.Random(11)

    def names(total: int, parts: int, dom: str) -> list[str]:  # hex chunks of random bytes
        raw = rnd.randbytes(total).hex()[:total]
        step = -(-len(raw) // parts)
        return [f"{i}.{raw[j:j + step]}.{dom}" for i, j in enumerate(range(0, len(raw), step))]

    def exfil_alerts(evs) -> list[dict]:
        return [d for d in _run(evs) if d["rule_id"] == "dns-exfiltration"]

    over = names(104, 4, "drop-a.net")  # 4 names of 26 hex characters
    alerts = exfil_alerts(_ev(T0 + 5 * i, "10.5.0.1", n, qtype=1) for i, n in enumerate(over))
    assert len(alerts) == 1 and alerts[0]["domain"] == "drop-a.net"
    assert alerts[0]["features"]["payload_bytes_out"] == 104 and alerts[0]["features"]["payload_names"] == 4
    under = names(90, 3, "drop-b.net")
    assert exfil_alerts(_ev(T0 + 5 * i, "10.5.0.2", n) for i, n in enumerate(under)) == []
    slow = names(104, 4, "drop-c.net")  # one name every 40 s: never 100 bytes in a minute
    assert exfil_alerts(_ev(T0 + 40 * i, "10.5.0.3", n) for i, n in enumerate(slow)) == []
    same = names(30, 1, "drop-d.net") * 8  # one 30-byte name asked 8 times
    assert exfil_alerts(_ev(T0 + i, "10.5.0.4", n) for i, n in enumerate(same)) == []


def test_ordinary_names_carry_no_payload():
    from detector.detect.tunnel import label_kind, shape

    for label in ("www", "mail2012server", "windows10update", "latestnews24", "ip-10-0-0-1",
                  "r3---sn-ab5l6nzr", "johnsburghistoricalsociety", "internationalbusinessmachines",
                  "WiNdOwS10uPdAtE", "1234567890123", "e13555", "deadbeefcafe"):
        assert label_kind(label) is None, label
    assert shape("k7x2mq9w4fzp3b8ht6vc1rnj._domainkey")[3] == 0  # a DKIM selector is an identifier
    assert shape("_acme-challenge.www")[3] == 0
    for label, kind in (("c2VjcmV0LnR4dHwx", "base64"), ("onxw2zjamfzxi2ltfzrg64ldn5xhi", "base32"),
                        ("4f2a9c1e7b3d5a8f", "hex"), ("zi1aaA0123456789\\188\\189\\190", "binary"),
                        ("q+Z8BnweCORdAGL4", "base64")):
        assert label_kind(label) == kind, label


def test_a_28_query_dns2tcp_file_transfer_is_caught(tmp_path, data):
    """The first 28 queries (and their answers) of the real dns2tcp session in the
    shared capture, re-timed to one query every 0.5 s: dns2tcp's base64 data
    queries and its short polls. Exfiltration must be raised for the client and the
    tunnel domain within the 28 queries, and the tunnel rule too."""
    frames, queries = [], 0
    for ts, _lt, fr in PcapReader(str(data / "tunnel" / "dns2tcp_netrack_2018-03-23.pcap")):
        to_server = fr[30:34] == bytes([172, 17, 0, 2])  # Ethernet + IPv4 destination
        if to_server:
            queries += 1
            if queries > 28:
                break
        frames.append((T0 + 0.5 * queries + (0.01 if not to_server else 0), fr))
    assert queries == 29
    path = tmp_path / "dns2tcp-28.pcap"
    write_pcap(path, 1, frames)
    alerts = _replay(path)
    got = {(a["rule_id"], a["entity"], a["domain"]) for a in alerts if a["rule_id"] in TUNNEL_RULES}
    assert ("dns-exfiltration", "172.17.0.3", "hidemyself.org") in got, got
    assert ("dns-tunnel", "172.17.0.3", "hidemyself.org") in got, got
    exfil = next(a for a in alerts if a["rule_id"] == "dns-exfiltration")
    assert exfil["features"]["payload_bytes_out"] >= 100
