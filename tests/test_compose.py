"""Static validation of docker-compose.yml and docker/Dockerfile (no Docker engine
runs here): the compose-spec JSON schema (docker/compose_spec.json, from Debian's
docker-compose 1.29.2, Apache-2.0), the topology the docs promise, a consistent
KRaft configuration, every detector `command:` accepted by the real CLI parser,
least privilege (the sensor's capabilities, each with its reason; everything else
unprivileged), the siem volume made writable for apache/kafka's user, healthchecks
(ours run for real against the metrics server) and pinned images.
`docker compose config` / `docker-compose config` also run when installed."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from detector.paths import REPO

COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "docker" / "Dockerfile"
OURS = ("sensor", "detector", "top")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _env(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: str(v) for k, v in env.items()}


def _listeners(text: str) -> dict[str, tuple[str, int]]:
    out = {}
    for item in text.split(","):
        m = re.fullmatch(r"([A-Z_]+)://([^:]*):(\d+)", item.strip())
        assert m, f"bad listener {item!r}"
        out[m.group(1)] = (m.group(2), int(m.group(3)))
    return out


def test_compose_matches_the_compose_spec_schema(compose):
    import jsonschema

    schema = json.loads((REPO / "docker" / "compose_spec.json").read_text())
    schema.pop("$schema", None)
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}"
              for e in jsonschema.Draft7Validator(schema).iter_errors(compose)]
    assert not errors, errors


def test_docker_compose_config_when_available(tmp_path):
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) is None:
            continue
        probe = subprocess.run(cmd + ["version"], capture_output=True, text=True)
        if probe.returncode != 0:
            continue
        r = subprocess.run(cmd + ["-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True,
                           cwd=REPO, timeout=60)
        assert r.returncode == 0, r.stderr
        return
    # the schema test above is the check that always runs; this one adds the real tool
    pytest.skip("neither `docker compose` nor `docker-compose` is installed")


def test_topology(compose):
    s = compose["services"]
    assert {"kafka", "topics", "sensor", "detector", "siem"} <= set(s)
    sensor = s["sensor"]
    assert not sensor.get("privileged"), "the sensor gets capabilities, not privileged"
    assert sensor["pid"] == "host"
    assert sensor["network_mode"] == "host"
    mounts = {v.split(":")[1]: v.split(":")[2:] for v in sensor["volumes"] if v.startswith("/")}
    for path in ("/sys/fs/cgroup", "/sys/kernel/tracing", "/sys/kernel/debug", "/lib/modules", "/usr/src",
                 "/var/log/pods", "/var/log/containers"):
        assert mounts.get(path) == ["ro"], f"sensor must mount {path} read-only"
    det = s["detector"]
    assert det["deploy"]["replicas"] == 2
    cmd = det["command"]
    assert cmd[0] == "consume" and cmd[cmd.index("--group") + 1] == "detectors"
    # the SIEM consumer writes the alerts topic into a volume
    siem = " ".join(s["siem"]["command"])
    assert "--topic dns-alerts" in siem and "/alerts/" in siem
    assert any(v.endswith(":/alerts") for v in s["siem"]["volumes"])
    topics = " ".join(s["topics"]["command"])
    assert "dns-events:4" in topics and "dns-alerts" in topics
    for name in ("sensor", "detector", "siem"):
        assert s[name]["depends_on"]["topics"]["condition"] == "service_completed_successfully"


def test_kraft_settings_are_consistent(compose):
    k = compose["services"]["kafka"]
    env = _env(k)
    assert k["image"].startswith("apache/kafka:")
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    node = env["KAFKA_NODE_ID"]
    voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert len(voters) == 1
    vid, hostport = voters[0].split("@")
    vhost, vport = hostport.rsplit(":", 1)
    assert vid == node
    assert vhost in (k.get("hostname"), "kafka")
    listeners = _listeners(env["KAFKA_LISTENERS"])
    advertised = _listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    protomap = dict(x.split(":") for x in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    ctrl = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert ctrl in listeners and listeners[ctrl][1] == int(vport)
    assert ctrl not in advertised, "the controller listener must not be advertised to clients"
    assert set(listeners) <= set(protomap)
    assert set(advertised) <= set(listeners)
    for name, (_, port) in advertised.items():
        assert listeners[name][1] == port, f"{name}: advertised port differs from the listener's"
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"  # single node
    cid = env["CLUSTER_ID"]
    assert len(base64.urlsafe_b64decode(cid + "==")) == 16, "CLUSTER_ID must be a base64 UUID (kafka-storage.sh random-uuid)"
    # the sensor (host network) reaches Kafka through the port published on the host
    published = {p.rsplit(":", 1)[-1]: p for p in k["ports"]}
    host_side = {h: p for h, p in advertised.items() if h in ("localhost", "127.0.0.1") or p[0] in ("localhost", "127.0.0.1")}
    sensor_boot = _arg(compose["services"]["sensor"]["command"], "--kafka")
    sh, sp = sensor_boot.rsplit(":", 1)
    assert sh in ("localhost", "127.0.0.1")
    assert any(p == (sh, int(sp)) for p in advertised.values()), "sensor bootstrap must be an advertised listener"
    assert sp in published and published[sp].startswith("127.0.0.1:"), "publish the HOST listener on loopback"
    assert host_side
    # containers on the compose network use the internal listener
    for name in ("detector", "top"):
        boot = _arg(compose["services"][name]["command"], "--kafka")
        h, p = boot.rsplit(":", 1)
        assert (h, int(p)) in advertised.values() and h == "kafka"


def _arg(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


@pytest.mark.parametrize("service", OURS)
def test_detector_commands_parse_with_the_real_cli(compose, service):
    from detector.cli import build_parser
    from detector.kafkaconf import kafka_config_from_args

    cmd = compose["services"][service]["command"]
    parser = build_parser()
    subcommands = next(a for a in parser._actions if a.dest == "command").choices
    if cmd[0] not in subcommands:
        pytest.skip(f"`detector {cmd[0]}` is not built in this checkout yet")
    try:
        args = parser.parse_args(cmd)
    except SystemExit as e:
        pytest.fail(f"{service}: `detector {' '.join(cmd)}` is refused by the CLI parser ({e})")
    assert callable(getattr(args, "func", None))
    conf = kafka_config_from_args(args)  # validates the Kafka settings without connecting
    assert conf.servers


def test_dockerfile_references_existing_paths():
    text = DOCKERFILE.read_text()
    assert "python3-bpfcc" in text  # the base and the stages: tests/test_image.py
    for line in text.splitlines():
        m = re.match(r"COPY\s+(?!--)(.+)\s+(\S+)$", line.strip())
        if not m:
            continue
        for src in m.group(1).split():
            # build/image/: what docker/build-image.sh makes before the build
            assert src.startswith("build/image/") or (REPO / src).exists(), \
                f"Dockerfile COPYs {src}, which does not exist"
    ep = re.search(r'ENTRYPOINT \["([^"]+)"\]', text).group(1)
    assert "docker/entrypoint.sh" in text and ep == "/usr/local/bin/detector-entrypoint"
    script = (REPO / "docker" / "entrypoint.sh").read_text()
    assert script.startswith("#!/bin/sh") and 'exec detector "$@"' in script
    r = subprocess.run(["sh", "-n", str(REPO / "docker" / "entrypoint.sh")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # the compose file builds from this Dockerfile
    comp = yaml.safe_load(COMPOSE.read_text())
    for name in OURS:
        b = comp["services"][name]["build"]
        assert (REPO / b["context"] / b["dockerfile"]) == DOCKERFILE


# --- least privilege, health, pinning ---------------------------------------------------

# what the sensor needs, and nothing else (the reasons are comments in the file)
SENSOR_CAPS = {"BPF", "PERFMON", "NET_ADMIN", "SYS_RESOURCE", "SYS_PTRACE"}


def test_sensor_has_only_the_capabilities_it_needs_each_justified(compose):
    sensor = compose["services"]["sensor"]
    assert sensor["cap_drop"] == ["ALL"]
    assert set(sensor["cap_add"]) == SENSOR_CAPS
    assert "SYS_ADMIN" not in sensor["cap_add"]
    assert "no-new-privileges:true" in sensor["security_opt"]
    assert sensor["read_only"] is True
    # every added capability carries its reason on its line
    lines = COMPOSE.read_text().split("  sensor:", 1)[1].split("cap_add:", 1)[1].splitlines()[1:]
    items = [ln for ln in lines if re.match(r"\s+- ", ln)][:len(SENSOR_CAPS)]
    for ln in items:
        cap, _, why = ln.strip()[2:].partition("#")
        assert cap.strip() in SENSOR_CAPS and len(why.strip()) > 15, f"cap_add line without a reason: {ln!r}"


def test_only_the_sensor_and_the_volume_init_run_with_root_privileges(compose):
    s = compose["services"]
    for name in ("detector", "top", "siem"):
        svc = s[name]
        assert str(svc["user"]).split(":")[0] not in ("0", "root"), f"{name} must not run as root"
        assert svc["cap_drop"] == ["ALL"] and not svc.get("cap_add"), name
        assert "no-new-privileges:true" in svc["security_opt"], name
    for name in ("detector", "top"):
        assert s[name]["read_only"] is True
    # the image's unprivileged user is the one compose runs the detectors as
    uid = re.search(r"useradd .*--uid (\d+)", DOCKERFILE.read_text()).group(1)
    assert s["detector"]["user"] == f"{uid}:{uid}"


def test_siem_volume_is_made_writable_for_the_kafka_user_first(compose):
    s = compose["services"]
    siem = s["siem"]
    uid = str(siem["user"]).split(":")[0]
    vol = next(v.split(":")[0] for v in siem["volumes"] if v.endswith(":/alerts"))
    # a one-shot step owns the same volume for that uid before the consumer starts
    inits = [n for n, c in siem["depends_on"].items() if c["condition"] == "service_completed_successfully"
             and any(v.split(":")[0] == vol for v in s[n].get("volumes", []))]
    assert inits, "no step prepares the siem volume before the consumer writes it"
    init = s[inits[0]]
    assert str(init["user"]).split(":")[0] == "0" and init["restart"] == "no"
    mount = next(v.split(":")[1] for v in init["volumes"] if v.split(":")[0] == vol)
    assert re.search(rf"chown {uid}(:\d+)? {re.escape(mount)}\b", " ".join(init["command"])), init["command"]


def test_every_long_running_service_has_a_healthcheck(compose):
    for name, svc in compose["services"].items():
        if svc.get("restart", "no") == "no":
            continue  # one-shot steps (topics, siem-volume) and the interactive tool (top)
        hc = svc.get("healthcheck")
        assert hc and hc.get("test") and not hc.get("disable"), f"{name} has no healthcheck"
    # ours probe the metrics port their command serves on
    for name in ("sensor", "detector"):
        svc = compose["services"][name]
        port = _arg(svc["command"], "--metrics-port")
        assert f"127.0.0.1:{port}/metrics" in " ".join(svc["healthcheck"]["test"]), name


def test_metrics_healthcheck_passes_on_a_live_endpoint_and_fails_without_one(compose):
    """Run the healthcheck's own Python one-liner against the real metrics server."""
    import socket
    import sys

    from detector import metrics

    test = compose["services"]["detector"]["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1].endswith("/python") and test[2] == "-c"
    code = test[3]
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        free = sk.getsockname()[1]
    dead = subprocess.run([sys.executable, "-c", code.replace(":9464/", f":{free}/")], capture_output=True)
    assert dead.returncode != 0, "the healthcheck passes with nothing listening"
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    metrics.serve(port, "127.0.0.1")
    live = subprocess.run([sys.executable, "-c", code.replace(":9464/", f":{port}/")], capture_output=True,
                          text=True, timeout=30)
    assert live.returncode == 0, live.stderr


def test_every_image_is_pinned_and_ours_is_the_package_version(compose):
    import tomllib

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    for name, svc in compose["services"].items():
        image = svc["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and re.fullmatch(r"\d+\.\d+\.\d+[\w.-]*", tag), f"{name}: image {image} is not pinned to a version"
        if name in OURS:
            assert image == f"dns-detector:{version}", f"{name}: {image} is not the package version {version}"
    # the image build tags the same version
    assert 'IMAGE=${IMAGE:-localhost/dns-detector:$VERSION}' in (REPO / "docker" / "build-image.sh").read_text()
