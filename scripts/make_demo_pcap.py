#!/usr/bin/env python3
"""Build detector/data/demo.pcap: the bundled capture `detector demo` replays
when live capture is not possible. Every packet is synthetic and made here
(no third-party data), from a fixed seed, so the file is reproducible:

  10.0.0.0/24 clients, resolvers 10.0.0.53 (fast) and 10.0.0.54 (slow, failing)
  - ordinary browsing: popular names, A/AAAA answers
  - 10.0.0.23: a random-character DGA (NXDOMAIN storm), then a wordlist DGA
  - 10.0.0.42: data exfiltrated in base32 labels, commands back in TXT (a tunnel)
  - 10.0.0.77: asks 8.8.8.8 directly (unauthorized resolver) and opens DoT to 1.1.1.1:853
  - 10.0.0.31 through 10.0.0.54: p99 latency ~700 ms and SERVFAILs (DNS health)

    python scripts/make_demo_pcap.py [OUT]
"""

from __future__ import annotations

import base64
import random
import socket
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detector.capture.pcapwrite import (  # noqa: E402
    PcapWriter, dns_query, dns_response, eth_ip, tcp, txt_rdata, udp)

POPULAR = """google.com www.google.com youtube.com www.wikipedia.org en.wikipedia.org github.com
api.github.com www.amazon.com mail.google.com www.microsoft.com login.microsoftonline.com
outlook.office365.com www.apple.com icloud.com www.linkedin.com slack.com app.slack.com
zoom.us www.reddit.com stackoverflow.com pypi.org files.pythonhosted.org deb.debian.org
security.debian.org www.cloudflare.com cdn.jsdelivr.net fonts.googleapis.com fonts.gstatic.com
update.googleapis.com www.bbc.co.uk www.nytimes.com docs.python.org registry.npmjs.org
ntp.ubuntu.com time.google.com www.office.com teams.microsoft.com s3.amazonaws.com
d1.awsstatic.com www.netflix.com www.spotify.com web.whatsapp.com www.dropbox.com""".split()

WORDS = """river stone market silver garden window orange planet butter castle yellow
morning paper simple table travel winter office bridge forest summer pocket""".split()


def random_dga(rnd: random.Random, n: int) -> list[str]:
    tlds = ["com", "net", "org", "info", "biz", "ru"]
    out = []
    for _ in range(n):
        ln = rnd.randint(10, 18)
        label = "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(ln))
        out.append(f"{label}.{rnd.choice(tlds)}")
    return out


def word_dga(rnd: random.Random, n: int) -> list[str]:
    return [f"{rnd.choice(WORDS)}{rnd.choice(WORDS)}{rnd.choice(WORDS)}.net" for _ in range(n)]


def build(out: Path) -> int:
    rnd = random.Random(20261122)
    t0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    pkts: list[tuple[float, bytes]] = []
    qid = [1000]

    def exchange(t: float, client: str, server: str, name: str, qtype: int = 1,
                 answers=None, rcode: int = 0, latency: float = 0.012, respond: bool = True,
                 sport: int | None = None) -> None:
        qid[0] = (qid[0] + 7) & 0xFFFF
        sp = sport or rnd.randint(20000, 60000)
        pkts.append((t, eth_ip(client, server, 17, udp(sp, 53, dns_query(qid[0], name, qtype)))))
        if respond:
            if answers is None:
                answers = [] if rcode else [(1, socket.inet_aton(f"93.184.{rnd.randint(0, 255)}.{rnd.randint(1, 254)}"))]
            r = dns_response(qid[0], name, qtype, answers, rcode)
            pkts.append((t + latency, eth_ip(server, client, 17, udp(53, sp, r))))

    # ordinary browsing from 12 clients over 2 minutes
    for i in range(600):
        t = t0 + i * 0.2
        c = f"10.0.0.{100 + i % 12}"
        name = rnd.choice(POPULAR)
        exchange(t, c, "10.0.0.53", name, 1, latency=rnd.uniform(0.002, 0.03))
        if i % 3 == 0:
            exchange(t + 0.001, c, "10.0.0.53", name, 28, answers=[(28, socket.inet_pton(
                socket.AF_INET6, f"2606:2800:220:1::{rnd.randint(1, 999)}"))], latency=rnd.uniform(0.002, 0.03))

    # a random-character DGA: NXDOMAIN storm, then a wordlist DGA
    for i, name in enumerate(random_dga(rnd, 60)):
        exchange(t0 + 10 + i * 0.5, "10.0.0.23", "10.0.0.53", name, rcode=3, latency=0.04)
    for i, name in enumerate(word_dga(rnd, 30)):
        exchange(t0 + 45 + i * 0.7, "10.0.0.23", "10.0.0.53", name, rcode=3, latency=0.04)

    # a tunnel: base32 data in labels out, base64 commands in TXT back
    secret = bytes(rnd.randrange(256) for _ in range(12000))
    for i in range(0, len(secret), 60):
        chunk = base64.b32encode(secret[i:i + 60]).decode().rstrip("=").lower()
        labels = ".".join(chunk[j:j + 50] for j in range(0, len(chunk), 50))
        name = f"{labels}.s{i // 60}.t.exfil-demo.net"
        reply = base64.b64encode(bytes(rnd.randrange(256) for _ in range(90)))
        exchange(t0 + 20 + i / 60 * 0.25, "10.0.0.42", "10.0.0.53", name, 16,
                 answers=[(16, txt_rdata(reply))], latency=0.05)

    # unauthorized resolver and DoT bypass
    for i, name in enumerate(["update.example.org", "cdn.example.org", "api.example.org"]):
        exchange(t0 + 30 + i, "10.0.0.77", "8.8.8.8", name, latency=0.02)
    pkts.append((t0 + 40, eth_ip("10.0.0.77", "1.1.1.1", 6, tcp(51111, 853, 1, 0, 0x02))))
    pkts.append((t0 + 40.02, eth_ip("1.1.1.1", "10.0.0.77", 6, tcp(853, 51111, 9, 2, 0x12))))

    # a sick resolver: slow answers, SERVFAIL, timeouts
    for i in range(200):
        t = t0 + 5 + i * 0.5
        name = rnd.choice(POPULAR)
        roll = rnd.random()
        if roll < 0.08:
            exchange(t, "10.0.0.31", "10.0.0.54", name, rcode=2, latency=0.9)
        elif roll < 0.12:
            exchange(t, "10.0.0.31", "10.0.0.54", name, respond=False)
        else:
            exchange(t, "10.0.0.31", "10.0.0.54", name, latency=rnd.choice([0.02, 0.04, 0.7, 0.75]))

    pkts.sort(key=lambda p: p[0])
    with open(out, "wb") as f:
        w = PcapWriter(f)
        for t, fr in pkts:
            w.write(t, fr)
    return len(pkts)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else (
        Path(__file__).resolve().parent.parent / "detector" / "data" / "demo.pcap")
    target.parent.mkdir(parents=True, exist_ok=True)
    n = build(target)
    print(f"wrote {target}: {n} packets")
