"""Two network namespaces joined by a veth pair, for running real DNS tools in tests.

    with NetnsPair() as net:                  # client 10.99.0.1 <-> server 10.99.0.2
        srv = net.popen("server", ["iodined", ...])
        with net.capture("client", pcap):    # tcpdump on the client's veth
            net.run("client", ["dig", "@10.99.0.2", "example.com"])

Everything is removed on exit, also after a failure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path


class NetnsPair:
    def __init__(self, prefix: str = "dd", subnet: str = "10.99.0") -> None:
        tag = f"{prefix}{os.getpid() % 100000}"
        self.ns = {"client": f"{tag}c", "server": f"{tag}s"}
        self.dev = {"client": f"{tag}vc", "server": f"{tag}vs"}
        self.ip = {"client": f"{subnet}.1", "server": f"{subnet}.2"}
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> "NetnsPair":
        sh = lambda *a: subprocess.run(list(a), check=True, capture_output=True)  # noqa: E731
        try:
            for side in ("client", "server"):
                sh("ip", "netns", "add", self.ns[side])
            sh("ip", "link", "add", self.dev["client"], "type", "veth", "peer", "name", self.dev["server"])
            for side in ("client", "server"):
                sh("ip", "link", "set", self.dev[side], "netns", self.ns[side])
                sh("ip", "-n", self.ns[side], "addr", "add", f"{self.ip[side]}/24", "dev", self.dev[side])
                sh("ip", "-n", self.ns[side], "link", "set", self.dev[side], "up")
                sh("ip", "-n", self.ns[side], "link", "set", "lo", "up")
        except Exception:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
        for side in ("client", "server"):
            subprocess.run(["ip", "netns", "del", self.ns[side]], capture_output=True)

    def cmd(self, side: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns[side], *argv]

    def popen(self, side: str, argv: list[str], **kw) -> subprocess.Popen:
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        p = subprocess.Popen(self.cmd(side, argv), **kw)
        self.procs.append(p)
        return p

    def run(self, side: str, argv: list[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self.cmd(side, argv), capture_output=True, text=True, timeout=timeout, **kw)

    @contextmanager
    def capture(self, side: str, pcap: Path, filt: str = "udp port 53 or tcp port 53"):
        p = subprocess.Popen(self.cmd(side, ["tcpdump", "-Z", "root", "--immediate-mode", "-i", self.dev[side], "-U", "-n", "-s", "0",
                                             "-w", str(pcap), *filt.split()]),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        t = time.monotonic()
        while time.monotonic() - t < 10:  # wait until tcpdump listens
            line = p.stderr.readline()
            if "listening" in line or not line:
                break
        time.sleep(1.0)  # "listening" comes before the capture is fully armed
        try:
            yield p
        finally:
            time.sleep(0.5)
            p.send_signal(signal.SIGINT)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
