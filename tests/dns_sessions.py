"""Build DNS captures for the tunnel and exfiltration tests: exfiltration and
tunnel sessions shaped like the real tools, inside ordinary traffic whose
names come from the shared benign lists (../shared/data/benign).

    cap = Capture()
    for i, name in enumerate(benign_names(data, 200)):
        cap.query(T0 + i, "10.20.0.5", name)
    for i, (name, txt) in enumerate(dnsexfiltrator(b"...", "drop.example", "base32")):
        cap.query(T0 + i, "10.20.0.66", name, 16, txt=txt.encode())
    cap.write(tmp_path / "session.pcap")

Nothing here runs on the detection path; the pcap writer is detector/capture/pcapwrite.py.
"""

from __future__ import annotations

import base64
import random
from pathlib import Path

from detector.capture.pcapwrite import dns_query, dns_response, eth_ip, txt_rdata, udp, write_pcap

RESOLVER = "10.20.0.53"
T0 = 1_700_000_000.0


class Capture:
    """Queries and their answers as Ethernet/IPv4/UDP frames, in time order."""

    def __init__(self, resolver: str = RESOLVER) -> None:
        self.resolver = resolver
        self.frames: list[tuple[float, bytes]] = []
        self.qid = 0

    def query(self, ts: float, client: str, name: str, qtype: int = 1, *, txt: bytes | None = None,
              rcode: int = 0, rtt: float = 0.02) -> None:
        self.qid = (self.qid + 1) & 0xFFFF
        sport = 20000 + self.qid % 40000
        query = dns_query(self.qid, name, qtype)
        self.frames.append((ts, eth_ip(client, self.resolver, 17, udp(sport, 53, query))))
        if rcode:
            answers = []
        elif qtype == 16:
            answers = [(16, txt_rdata(txt if txt is not None else b"v=spf1 -all"))]
        else:
            answers = [(1, bytes([93, 184, self.qid >> 8, self.qid & 0xFF]))]
        resp = dns_response(self.qid, name, qtype, answers, rcode=rcode)
        self.frames.append((ts + rtt, eth_ip(self.resolver, client, 17, udp(53, sport, resp))))

    def write(self, path: Path) -> Path:
        write_pcap(path, 1, sorted(self.frames, key=lambda f: f[0]))
        return path


# --- ordinary traffic ------------------------------------------------------------------

def benign_names(data: Path, n: int, seed: int = 1) -> list[str]:
    """``n`` names people resolve: registered domains of the Alexa, OpenDNS and Tranco
    lists (some as www.), and the host names of nDPI's service list (CDN edges,
    cloud endpoints, with their odd-looking labels)."""
    rnd = random.Random(seed)
    pool: list[str] = []
    with open(data / "benign" / "alexa_top100k_2015.csv") as f:
        pool += [line.strip().split(",")[1] for line in f if line.count(",") == 1][:5000]
    pool += (data / "benign" / "opendns-top-domains.txt").read_text().split()[:5000]
    pool += (data / "benign" / "tranco_top50k_2026-08-01.txt").read_text().split()[:5000]
    hosts = [line.split("\t")[0].strip(".") for line in
             (data / "benign" / "ndpi_host_match_domains.tsv").read_text().splitlines()[1:]]
    hosts = [h for h in hosts if h.count(".") >= 2 and not h.startswith(("-", "*"))]
    out = []
    for _ in range(n):
        if rnd.random() < 0.25:
            out.append(rnd.choice(hosts))
        else:
            d = rnd.choice(pool)
            out.append("www." + d if rnd.random() < 0.4 else d)
    return out


def odd_but_ordinary(rnd: random.Random) -> dict[str, list[tuple[str, int]]]:
    """Lookups that look encoded but are ordinary, by kind: (name, qtype) lists, each
    kind as heavy as one busy host makes it in a minute."""
    def hexs(bits: int) -> str:
        return f"{rnd.getrandbits(bits):0{bits // 4}x}"

    def token(n: int) -> str:  # Amazon SES-style DKIM selector: 32 random [a-z0-9]
        return "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(n))

    def ip() -> str:
        return ".".join(str(rnd.randrange(1, 255)) for _ in range(4))

    words = ["build", "server", "staging", "frontend", "payments", "analytics", "gateway",
             "internal", "europe", "west", "primary", "replica", "cluster", "worker"]
    return {
        # DNSBL and reputation lookups of reversed addresses (a mail server)
        "dnsbl": [(f"{ip()}.{z}", 1) for z in ("zen.spamhaus.org", "dnsbl.sorbs.net", "multi.surbl.org")
                  for _ in range(60)],
        # anti-virus cloud lookups: file hashes in labels
        "antivirus": [(f"{hexs(128)}.{hexs(64)}.sophosxl.net", 1) for _ in range(80)]
        + [(f"{hexs(160)}.avqs.mcafee.com", 16) for _ in range(80)],
        # CDN edges with random-looking labels
        "cdn": [(f"d{token(13)}.cloudfront.net", 1) for _ in range(60)]
        + [(f"e{rnd.randrange(1000, 99999)}.{rnd.choice('abcdg')}.akamaiedge.net", 1) for _ in range(60)]
        + [(f"{hexs(64)}.r.akamaihd.net", 1) for _ in range(30)]
        + [(f"lhr{rnd.randrange(10, 99)}s{rnd.randrange(10, 50)}-in-f{rnd.randrange(1, 20)}.1e100.net", 12)
           for _ in range(60)],
        # DKIM: one selector per sender, SES-style tokens (TXT); ACME DNS-01 challenges
        "dkim_acme": [(f"{token(32)}._domainkey.mailer-{i % 3}.example-shop.com", 16) for i in range(60)]
        + [(f"_acme-challenge.{rnd.choice(words)}{i}.example-shop.com", 16) for i in range(40)],
        # long ordinary host names under one corporate domain
        "long_hosts": [("-".join(rnd.sample(words, 5)) + f"-{i}.{rnd.choice(words)}.corp-example.com", 1)
                       for i in range(60)]
        + [("".join(rnd.sample(words, 4)) + f".{rnd.choice(words)}.corp-example.com", 1)
           for _ in range(60)],
    }


# --- DNSExfiltrator-style exfiltration ---------------------------------------------------

def rc4(key: bytes, data: bytes) -> bytes:
    s = list(range(256))
    j = 0
    for i in range(256):
        j = (j + s[i] + key[i % len(key)]) & 255
        s[i], s[j] = s[j], s[i]
    out = bytearray()
    i = j = 0
    for b in data:
        i = (i + 1) & 255
        j = (j + s[i]) & 255
        s[i], s[j] = s[j], s[i]
        out.append(b ^ s[(s[i] + s[j]) & 255])
    return bytes(out)


def encode(data: bytes, encoding: str) -> str:
    """DNSExfiltrator's encodings: base64url without padding (mixed case), or base32
    without padding in lower case."""
    if encoding == "base64":
        return base64.urlsafe_b64encode(data).decode().rstrip("=")
    return base64.b32encode(data).decode().rstrip("=").lower()


def dnsexfiltrator(content: bytes, domain: str, encoding: str = "base64", *, filename: str = "creds.txt",
                   password: bytes = b"s3cr3t", request_max: int = 255, label_max: int = 63
                   ) -> list[tuple[str, str]]:
    """The (TXT query name, TXT answer) sequence of a DNSExfiltrator-style transfer:
    ``init.<encoded filename|chunks>[.base32].<domain>`` answered "OK", then
    ``<chunk number>.<data labels>.<domain>`` answered with the chunk number. The file
    is RC4-encrypted with the password as the tool does (its ZIP step is left out, so
    the payload is the file's own size) and chunked the way the tool sizes requests."""
    data = encode(rc4(password, content), encoding)
    room = request_max - 10 - (len(domain) + 2)  # 10 bytes kept for the chunk number
    chunk_max = (room // (label_max + 1)) * label_max + max(0, room % (label_max + 1) - 1)
    chunks = [data[i:i + chunk_max] for i in range(0, len(data), chunk_max)]
    marker = ".base32" if encoding == "base32" else ""
    out = [(f"init.{encode(f'{filename}|{len(chunks)}'.encode(), encoding)}{marker}.{domain}", "OK")]
    for n, chunk in enumerate(chunks):
        labels = ".".join(chunk[j:j + label_max] for j in range(0, len(chunk), label_max))
        out.append((f"{n}.{labels}.{domain}", str(n)))
    return out


# --- dnstt-style Noise tunnel --------------------------------------------------------------

def dnstt(domain: str, seconds: float, rnd: random.Random,
          gap: float = 0.2) -> list[tuple[float, str, bytes]]:
    """(offset, TXT query name, TXT answer) of a dnstt-style session: every query is
    base32 (lower case, no padding) of an 8-byte client id, random padding and
    Noise-encrypted packets (random bytes), in labels of up to 63 characters; answers
    carry encrypted data in TXT. A burst of data (handshake, then an SSH session)
    for the first seconds, then polls."""
    client_id = rnd.randbytes(8)
    out = []
    t = 0.0
    while t < seconds:
        body = rnd.randrange(60, 100) if t < 4 else rnd.randrange(3, 40)  # data, then polls
        raw = encode(client_id + rnd.randbytes(body), "base32")
        labels = ".".join(raw[i:i + 63] for i in range(0, len(raw), 63))
        out.append((t, f"{labels}.{domain}", rnd.randbytes(rnd.randrange(20, 200))))
        t += gap * rnd.uniform(0.7, 1.3)
    return out
