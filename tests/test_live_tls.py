"""DoH and DoT read in clear text from OpenSSL (bpf/dns_tls.c, detector/capture/tls.py).

On the real kernel (root): a DoH server on 127.0.0.1 with a self-signed
certificate (a small Python server over the ssl module, HTTP/1.1 and, when
the client offers it by ALPN, HTTP/2; answers made with dnslib). Two clients
over the system libssl: Python's http.client (HTTP/1.1 POST and GET on one
connection) and curl --doh-url (HTTP/2, curl's own BIO: no socket fd known);
and DoT (length-prefixed messages) from a Python client to the same server.
`detector live --tls` reports each query and response once, with the
client's pid (the server links libssl too: its copies are dropped), and a
denylisted name asked over DoH raises the denylist alert with the pid.

Without root: the stream parser on HTTP/1.1, HTTP/2 and DoT bytes.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import subprocess
import sys
import time

import pytest
from dnslib import QTYPE, RR, A, DNSRecord

from detector.capture.tls import V_DNS, V_OTHER, TlsStreams, dns_like, socket_addresses
from tests.test_live import free_port, start_live

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="live eBPF capture needs root")
EVIL_RULE = """id: test-denylist-doh
title: Query for a test denylisted domain
detector: denylist
severity: high
technique:
  id: T1071.004
  name: "Application Layer Protocol: DNS"
params:
  domains: [evil-doh.test]
"""

SERVER = r"""
import socket, ssl, sys, threading
from dnslib import DNSRecord, RR, QTYPE, A
from urllib.parse import urlparse, parse_qs
import base64
port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
ctx.set_alpn_protocols(["h2", "http/1.1"])
def answer(q):
    d = DNSRecord.parse(q)
    r = d.reply()
    if d.q.qtype == QTYPE.A:
        r.add_answer(RR(str(d.q.qname), QTYPE.A, rdata=A("127.0.0.1"), ttl=60))
    return r.pack()
def recv_exact(c, n):
    b = b""
    while len(b) < n:
        d = c.recv(n - len(b))
        if not d: raise EOFError
        b += d
    return b
def frame(t, fl, sid, p):
    return len(p).to_bytes(3, "big") + bytes([t, fl]) + sid.to_bytes(4, "big") + p
def h2(c):
    recv_exact(c, 24)
    c.sendall(frame(4, 0, 0, b""))
    data = {}
    while True:
        h = recv_exact(c, 9)
        n, t, fl, sid = int.from_bytes(h[:3], "big"), h[3], h[4], int.from_bytes(h[5:], "big") & 0x7fffffff
        p = recv_exact(c, n)
        if t == 4 and not fl & 1:
            c.sendall(frame(4, 1, 0, b""))
        elif t == 0:
            data[sid] = data.get(sid, b"") + p
            if fl & 1:
                hdr = b"\x88" + b"\x0f\x10\x17application/dns-message"   # :status 200, content-type
                c.sendall(frame(1, 4, sid, hdr) + frame(0, 1, sid, answer(data.pop(sid))))
        elif t == 7:
            return
def h1(c):
    f = c.makefile("rb")
    while True:
        line = f.readline()
        if not line: return
        hdrs = {}
        while True:
            l = f.readline()
            if l in (b"\r\n", b""): break
            k, _, v = l.decode().partition(":")
            hdrs[k.strip().lower()] = v.strip()
        method, target = line.split()[:2]
        if method == b"POST":
            q = f.read(int(hdrs["content-length"]))
        else:
            v = parse_qs(urlparse(target.decode()).query)["dns"][0]
            q = base64.urlsafe_b64decode(v + "=" * (-len(v) % 4))
        r = answer(q)
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/dns-message\r\nContent-Length: %d\r\n\r\n" % len(r) + r)
def dot(c):
    while True:
        n = int.from_bytes(recv_exact(c, 2), "big")
        r = answer(recv_exact(c, n))
        c.sendall(len(r).to_bytes(2, "big") + r)
def serve(raw, handler):
    try:
        c = ctx.wrap_socket(raw, server_side=True)
        if handler is None:
            handler = h2 if c.selected_alpn_protocol() == "h2" else h1
        handler(c)
    except (EOFError, ConnectionError):
        pass
    except Exception as e:
        print("server:", e, file=sys.stderr, flush=True)
def listen(p, handler):
    s = socket.create_server(("127.0.0.1", p))
    while True:
        raw, _ = s.accept()
        threading.Thread(target=serve, args=(raw, handler), daemon=True).start()
threading.Thread(target=listen, args=(int(sys.argv[4]), dot), daemon=True).start()   # DoT
print("ready", flush=True)
listen(port, None)                                                                     # DoH
"""

DOT_CLIENT = r"""
import os, socket, ssl, sys, time
from dnslib import DNSRecord
t = ssl._create_unverified_context().wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1]))))
for name in sys.argv[2:]:
    q = DNSRecord.question(name).pack()
    t.sendall(len(q).to_bytes(2, "big") + q)
    n = int.from_bytes(t.recv(2), "big")
    r = b""
    while len(r) < n:
        r += t.recv(n - len(r))
    assert str(DNSRecord.parse(r).rr[0].rdata) == "127.0.0.1"
time.sleep(0.5)
print(os.getpid(), flush=True)
"""

CLIENT = r"""
import base64, http.client, os, ssl, sys, time
from dnslib import DNSRecord
port = int(sys.argv[1])
c = http.client.HTTPSConnection("127.0.0.1", port, context=ssl._create_unverified_context())
for name in sys.argv[2:]:
    q = DNSRecord.question(name).pack()
    if name.startswith("get."):
        c.request("GET", "/dns-query?dns=" + base64.urlsafe_b64encode(q).decode().rstrip("="),
                  headers={"accept": "application/dns-message"})
    else:
        c.request("POST", "/dns-query", body=q, headers={"content-type": "application/dns-message",
                                                          "accept": "application/dns-message"})
    r = DNSRecord.parse(c.getresponse().read())
    assert str(r.rr[0].rdata) == "127.0.0.1", r
time.sleep(0.5)   # the connection stays open a while, as a client's would
print(os.getpid(), flush=True)
"""


@pytest.fixture()
def doh_server(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-subj", "/CN=127.0.0.1", "-days", "1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    port, dot_port = free_port(), free_port()
    p = subprocess.Popen([sys.executable, "-c", SERVER, str(port), str(cert), str(key), str(dot_port)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready", p.stderr.read()
    yield port, dot_port
    p.terminate()
    p.wait(5)


@needs_root
def test_doh_and_dot_over_openssl_are_seen_with_the_clients_pid(doh_server, tmp_path):
    port, dot_port = doh_server
    curl = shutil.which("curl")
    assert curl, "curl is missing"
    (tmp_path / "evil.yaml").write_text(EVIL_RULE)
    summary = tmp_path / "summary.json"
    live = start_live(53, 8, "--tls", "--rules", str(tmp_path / "evil.yaml"), "--summary-json", str(summary))
    r = subprocess.run([sys.executable, "-c", CLIENT, str(port), "post.doh.test", "evil-doh.test",
                        "get.doh.test"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    py_pid = int(r.stdout.strip())
    # curl speaks HTTP/2 to it (ALPN) and asks A and AAAA; the connect after it may fail
    c = subprocess.Popen([curl, "-s", "-o", "/dev/null", "--max-time", "5", "--doh-insecure",
                          "--doh-url", f"https://127.0.0.1:{port}/dns-query",
                          f"http://h2.doh.test:{free_port()}/"], stderr=subprocess.PIPE)
    c.wait(20)
    curl_pid = c.pid
    r = subprocess.run([sys.executable, "-c", DOT_CLIENT, str(dot_port), "one.dot.test", "two.dot.test"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    dot_pid = int(r.stdout.strip())
    out, err = live.communicate(timeout=60)
    assert live.returncode == 0, err
    docs = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    evs = [d for d in docs if "qname" in d and "rule_id" not in d]
    by: dict[tuple, list] = {}
    for e in evs:
        by.setdefault((e["qname"], e["kind"]), []).append(e)
    for name in ("post.doh.test", "evil-doh.test", "get.doh.test"):
        q, resp = by.get((name, "query"), []), by.get((name, "response"), [])
        assert len(q) == 1 and len(resp) == 1, (name, q, resp, err[-2000:])  # once: the server's copy dropped
        for e in q + resp:
            assert e["process"]["pid"] == py_pid and e["transport"] == "tcp", e
        # SSL_set_fd gave the socket: the addresses are the TLS connection's
        assert q[0]["dst"] == "127.0.0.1" and q[0]["dport"] == port, q[0]
        assert resp[0]["sport"] == port and resp[0]["dport"] == q[0]["sport"], resp[0]
        assert resp[0]["answers"][0][3] == "127.0.0.1" and resp[0]["latency_ms"] is not None, resp[0]
    # curl over HTTP/2: A and AAAA, with curl's pid (no fd: no addresses)
    h2 = by.get(("h2.doh.test", "query"), []) + by.get(("h2.doh.test", "response"), [])
    assert len(h2) == 4, (h2, err[-2000:])
    assert {e["process"]["pid"] for e in h2} == {curl_pid}, h2
    assert {e["qtype"] for e in h2} == {"A", "AAAA"}, h2
    # DoT: length-prefixed messages on another port, two on one connection
    for name in ("one.dot.test", "two.dot.test"):
        q, resp = by.get((name, "query"), []), by.get((name, "response"), [])
        assert len(q) == 1 and len(resp) == 1, (name, q, resp)
        assert q[0]["process"]["pid"] == resp[0]["process"]["pid"] == dot_pid, (q, resp)
        assert q[0]["dport"] == dot_port and resp[0]["sport"] == dot_port, (q, resp)
    alerts = [d for d in docs if d.get("rule_id") == "test-denylist-doh"]
    assert alerts and all(a["pid"] == py_pid for a in alerts), alerts
    s = json.loads(summary.read_text())
    assert s["tls_messages"] >= 14 and s["tls_connections_dns"] >= 3, s
    assert s["tls_duplicate_copies"] >= 10 and s["tls_lost"] == 0, s  # the server's copies


HTTPS_SERVER = r"""
import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b"x" * 3000
        self.send_response(200); self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(sys.argv[2], sys.argv[3])
s = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
s.socket = ctx.wrap_socket(s.socket, server_side=True)
print("ready", flush=True)
s.serve_forever()
"""

HTTPS_CLIENT = r"""
import http.client, socket, ssl, sys
port = int(sys.argv[1])
c = http.client.HTTPSConnection("127.0.0.1", port, context=ssl._create_unverified_context())
for i in range(40):   # one keep-alive connection
    c.request("GET", "/page.html"); assert len(c.getresponse().read()) == 3000
for i in range(5):    # TLS that is not HTTP
    t = ssl._create_unverified_context().wrap_socket(socket.create_connection(("127.0.0.1", port)))
    t.sendall(b"EHLO test\r\n"); t.sendall(b"MAIL FROM:<a@b>\r\n"); t.close()
"""


@needs_root
def test_ordinary_https_is_given_up_after_the_first_request(tmp_path):
    """An HTTPS request that is no DoH: the connection's verdict is "not DNS" and
    the kernel copies nothing more of it (40 requests on one connection: a few
    calls copied, the rest skipped); nothing reaches the pipeline. A TLS
    connection whose first call is neither HTTP nor DNS ("EHLO") is given up in
    the kernel at once."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-subj", "/CN=127.0.0.1", "-days", "1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    port = free_port()
    srv = subprocess.Popen([sys.executable, "-c", HTTPS_SERVER, str(port), str(cert), str(key)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    (tmp_path / "evil.yaml").write_text(EVIL_RULE)
    summary = tmp_path / "summary.json"
    try:
        assert srv.stdout.readline().strip() == "ready", srv.stderr.read()
        live = start_live(53, 5, "--tls", "--rules", str(tmp_path / "evil.yaml"), "--summary-json", str(summary))
        r = subprocess.run([sys.executable, "-c", HTTPS_CLIENT, str(port)], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0, r.stderr
        out, err = live.communicate(timeout=60)
        assert live.returncode == 0, err
    finally:
        srv.terminate()
        srv.wait(5)
    s = json.loads(summary.read_text())
    ours = [d for d in map(json.loads, (x for x in out.splitlines() if x.startswith("{")))
            if port in (d.get("sport"), d.get("dport"))]
    assert s["tls_messages"] == 0 and ours == [], s
    # both ends of the keep-alive connection: 160 calls; user space said "not DNS" after
    # the first request, the kernel skipped the rest
    assert s["tls_calls"] >= 160 and s["tls_connections_other"] >= 2, s
    assert s["tls_copied"] <= 2 * 16 and s["tls_skipped"] >= 160 - 2 * 16, s
    assert s["tls_rejected_in_kernel"] >= 10, s  # the EHLO connections, both ends: nothing copied


# --- the stream parser alone --------------------------------------------------------

Q = DNSRecord.question("kq3vx9zzpl.example").pack()
_r = DNSRecord.question("kq3vx9zzpl.example").reply()
_r.add_answer(RR("kq3vx9zzpl.example", QTYPE.A, rdata=A("192.0.2.7"), ttl=60))
R = _r.pack()


def _frame(t: int, fl: int, sid: int, p: bytes) -> bytes:
    return len(p).to_bytes(3, "big") + bytes([t, fl]) + sid.to_bytes(4, "big") + p


def test_http1_post_get_and_response_split_across_calls():
    verdicts = []
    s = TlsStreams(lambda k, v: verdicts.append((k, v)))
    req = (b"POST /dns-query HTTP/1.1\r\nHost: x\r\nContent-Type: application/dns-message\r\n"
           b"Content-Length: %d\r\n\r\n" % len(Q))
    assert s.feed((1, 1), 0, req) == []
    assert s.feed((1, 1), 0, Q) == [(0, Q, "doh")]
    resp = b"HTTP/1.1 200 OK\r\ncontent-type: application/dns-message\r\ncontent-length: %d\r\n\r\n" % len(R) + R
    assert s.feed((1, 1), 1, resp[:40]) == []
    assert s.feed((1, 1), 1, resp[40:]) == [(1, R, "doh")]
    get = b"GET /dns-query?dns=" + base64.urlsafe_b64encode(Q).rstrip(b"=") + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert s.feed((1, 1), 0, get) == [(0, Q, "doh")]
    chunked = (b"HTTP/1.1 200 OK\r\nContent-Type: application/dns-message\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"%x\r\n" % 10 + R[:10] + b"\r\n" + b"%x\r\n" % (len(R) - 10) + R[10:] + b"\r\n0\r\n\r\n")
    assert s.feed((1, 1), 1, chunked) == [(1, R, "doh")]
    assert verdicts == [((1, 1), V_DNS)]


def test_an_ordinary_https_request_gets_the_verdict_other():
    verdicts = []
    s = TlsStreams(lambda k, v: verdicts.append((k, v)))
    assert s.feed((2, 9), 0, b"GET /index.html HTTP/1.1\r\nHost: example.com\r\n\r\n") == []
    assert verdicts == [((2, 9), V_OTHER)]
    # a binary protocol that is neither HTTP nor length-prefixed DNS
    assert s.feed((3, 9), 0, b"\x16\x03\x01 not dns at all") == [] and verdicts[-1] == ((3, 9), V_OTHER)
    # a DoH-looking body of another content type is not taken
    s2 = TlsStreams()
    body = b"POST /upload HTTP/1.1\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % len(Q)
    assert s2.feed((4, 9), 0, body + Q) == []


def test_http2_data_frames_of_a_stream_are_dns_messages():
    s = TlsStreams()
    w = (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0, b"\0\x03\0\0\0\x64") + _frame(8, 0, 0, b"\0\0\xff\xff")
         + _frame(1, 4, 1, b"\x83\x86\x84") + _frame(0, 0, 1, Q[:7]) + _frame(0, 1, 1, Q[7:]))
    got = []
    for i in range(0, len(w), 13):  # written in pieces that cut frames anywhere
        got += s.feed((5, 1), 0, w[i:i + 13])
    assert got == [(0, Q, "doh")]
    padded = bytes([4]) + R + b"\0" * 4
    rd = _frame(4, 0, 0, b"") + _frame(1, 4, 1, b"\x88") + _frame(0, 0x9, 1, padded)
    assert s.feed((5, 1), 1, rd) == [(1, R, "doh")]
    # DATA that is no DNS message (an ordinary h2 response) gives nothing
    assert s.feed((5, 1), 1, _frame(1, 4, 3, b"\x88") + _frame(0, 1, 3, b"<html>" * 10)) == []


def test_http2_bytes_the_kernel_did_not_copy():
    """A call longer than the copy: missing bytes inside a frame that is skipped
    anyway keep the stream in sync; missing framing bytes give it up (counted)."""
    s = TlsStreams()
    pre = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    big = _frame(1, 4, 1, b"\x83" * 20000)  # a HEADERS frame copied in part
    assert s.feed((6, 1), 0, pre + big[:16384], missing=len(pre) + len(big) - 16384 - len(pre)) == []
    assert s.feed((6, 1), 0, _frame(0, 1, 1, Q)) == [(0, Q, "doh")]
    s.feed((6, 1), 1, _frame(4, 0, 0, b"") + b"\0\0", missing=50)  # a frame header cut
    assert s.counters["tls_lost_sync"] == 1
    assert s.feed((6, 1), 1, _frame(0, 1, 1, R)) == []  # that direction is given up


def test_dot_length_prefixed_messages_and_the_header_check():
    s = TlsStreams()
    assert s.feed((7, 1), 0, struct.pack("!H", len(Q)) + Q) == [(0, Q, "dot")]
    assert s.feed((7, 1), 1, struct.pack("!H", len(R)) + R[:5]) == []
    assert s.feed((7, 1), 1, R[5:]) == [(1, R, "dot")]
    # the length prefix written on its own, then the message
    assert s.feed((8, 1), 0, struct.pack("!H", len(Q))) == []
    assert s.conns[(8, 1)].kind == "dot" and s.feed((8, 1), 0, Q) == [(0, Q, "dot")]
    assert s.feed((9, 1), 0, b"\0\x05hello") == [] and s.conns[(9, 1)].kind == "other"
    assert dns_like(Q) and dns_like(R) and not dns_like(b"\0" * 12) and not dns_like(b"<html>" * 4)


def test_socket_addresses_from_proc(tmp_path):
    import socket

    srv = socket.create_server(("127.0.0.1", 0))
    c = socket.create_connection(srv.getsockname())
    try:
        fam, lip, lport, rip, rport = socket_addresses(os.getpid(), c.fileno())
        assert (fam, lip, lport, rip, rport) == (4, "127.0.0.1", c.getsockname()[1], "127.0.0.1",
                                                 srv.getsockname()[1])
        assert socket_addresses(os.getpid(), 10_000) is None and socket_addresses(2**22 + 1, 0) is None
    finally:
        c.close()
        srv.close()


def _record(ssl: int, conn: int, pid: int, direction: int, data: bytes, fd: int = -1, ln: int | None = None) -> bytes:
    """One ring buffer record as bpf/dns_tls.c writes it (8-byte header, struct tls_event)."""
    from detector.capture.tls import TLS_EVENT

    owner = struct.pack("<IIIIQ16s", pid, pid, 0, 0, 1, b"client")
    body = TLS_EVENT.pack(10**9, ssl, owner, len(data) if ln is None else ln, len(data), direction, 0, fd, 0,
                          conn) + data
    rec = struct.pack("<II", len(body), 0) + body
    return rec + b"\0" * (-len(rec) % 8)


def test_records_become_events_with_the_process_once_per_message():
    """The ring records' layout, the direction (what the client wrote is the query),
    protocol "doh", and a message read at both ends of a connection on this host
    (a local DoH server over libssl) reported once, with the client."""
    from detector.capture.tls import BothEnds, TlsCapture
    from detector.events import ProcessInfo

    cap = TlsCapture.__new__(TlsCapture)  # the parsing half, no kernel
    cap.streams, cap.dedup, cap._addr, cap.parse_errors = TlsStreams(), BothEnds(), {}, 0
    req = (b"POST /dns-query HTTP/1.1\r\nContent-Type: application/dns-message\r\nContent-Length: %d\r\n\r\n"
           % len(Q) + Q)
    resp = b"HTTP/1.1 200 OK\r\nContent-Type: application/dns-message\r\nContent-Length: %d\r\n\r\n" % len(R) + R
    recs = [_record(0xA0, 1, 100, 0, req),      # the client writes the query
            _record(0xB0, 2, 200, 1, req),      # the server reads it
            _record(0xB0, 2, 200, 0, resp),     # the server writes the response
            _record(0xA0, 1, 100, 1, resp),     # the client reads it
            _record(0xA0, 1, 100, 2, b"")]      # SSL_free
    chunk = b"".join(recs)
    offs, o = [], 0
    for r in recs:
        offs.append(o)
        o += len(r)
    out: list = []
    procs = {}
    TlsCapture._parse(cap, chunk, offs, out, lambda k: procs.setdefault(k, ProcessInfo(
        struct.unpack_from("<I", k)[0], comm="client")), 0.0)
    assert [(e.qr, e.process.pid, e.protocol, e.transport) for e in out] == [(False, 100, "doh", "tcp"),
                                                                             (True, 100, "doh", "tcp")]
    assert out[0].qname == "kq3vx9zzpl.example" and out[1].answers[0].data == "192.0.2.7"
    assert cap.dedup.dropped == 2 and not cap.dedup.held  # the server's two copies
    assert (100, 0xA0, 1) not in cap.streams.conns  # forgotten at SSL_free
    # a server's copy with no client copy (a client outside OpenSSL's reach) waits, then is reported
    other = b"\x12\x34" + bytes(req[-len(Q) + 2:])
    req2 = req[:-len(Q)] + other
    out2: list = []
    cap.dedup.DUP_WINDOW = 0.05
    TlsCapture._parse(cap, _record(0xC0, 3, 300, 1, req2), [0], out2, lambda k: None, 0.0)
    assert out2 == [] and len(cap.dedup.held) == 1
    time.sleep(0.06)
    cap.dedup.release(out2)
    assert len(out2) == 1 and out2[0].id == 0x1234 and not out2[0].qr
