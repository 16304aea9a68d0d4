"""deploy/kubernetes/: the kustomization and its manifests, validated offline against
the Kubernetes OpenAPI schemas that the kubernetes-validate package bundles
(strict: unknown fields are errors), the sensor's least privilege, its mounts and
probes, every container command through the real CLI parser, the site rules through
the real rule loader, and, as root, the sensor run live with exactly the capability
set the DaemonSet grants."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from detector.paths import REPO
from tests.procs import Drained

K8S = REPO / "deploy" / "kubernetes"
# the oldest and the newest Kubernetes release we claim (both bundled by kubernetes-validate)
VERSIONS = ("1.29.0", "1.37.0")
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


@pytest.fixture(scope="module")
def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


@pytest.fixture(scope="module")
def objects(kustomization) -> list[dict]:
    """What `kustomize build` gives, for what these manifests use: the resources in the
    kustomization's namespace, the generated ConfigMaps, the image name and tag set."""
    out = []
    for res in kustomization["resources"]:
        out.extend(d for d in yaml.safe_load_all((K8S / res).read_text()) if d)
    for gen in kustomization.get("configMapGenerator", []):
        data = {}
        for env in gen.get("envs", []):
            data.update(_env_file(K8S / env))
        for f in gen.get("files", []):
            data[Path(f).name] = (K8S / f).read_text()
        out.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data})
    images = {i["name"]: i for i in kustomization.get("images", [])}
    for o in out:
        if o["kind"] != "Namespace":
            o["metadata"]["namespace"] = kustomization["namespace"]
        for c in _containers(o):
            img = images.get(c["image"])
            if img:
                c["image"] = f"{img.get('newName', c['image'])}:{img['newTag']}"
    return out


def _env_file(path: Path) -> dict[str, str]:
    return dict(ln.split("=", 1) for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#"))


def _containers(obj: dict) -> list[dict]:
    spec = obj.get("spec", {}).get("template", {}).get("spec", {})
    return spec.get("containers", []) + spec.get("initContainers", [])


def _one(objects, kind: str, component: str) -> dict:
    found = [o for o in objects if o["kind"] == kind
             and o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component]
    assert len(found) == 1, (kind, component, found)
    return found[0]


def test_kustomization_lists_files_that_exist_and_every_manifest_there(kustomization):
    listed = set(kustomization["resources"])
    for res in listed:
        assert (K8S / res).is_file(), f"kustomization lists {res}, which does not exist"
    for gen in kustomization.get("configMapGenerator", []):
        for f in gen.get("envs", []) + gen.get("files", []):
            assert (K8S / f).is_file(), f"configMapGenerator {gen['name']}: {f} does not exist"
    # a manifest in the folder that the kustomization forgets would silently not deploy
    for f in K8S.glob("*.yaml"):
        doc = yaml.safe_load(f.read_text())
        if f.name != "kustomization.yaml" and isinstance(doc, dict) and "apiVersion" in doc:
            assert f.name in listed, f"{f.name} is not in kustomization.yaml resources"
    assert kustomization["kind"] == "Kustomization"


def test_kubernetes_validate_bundles_the_schemas_it_validates_against():
    import kubernetes_validate

    bundled = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    for v in VERSIONS:
        assert (bundled / f"v{v}-local-strict").is_dir(), f"kubernetes-validate has no bundled schema for {v}"


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_is_valid_against_the_kubernetes_openapi_schema(objects, version):
    import kubernetes_validate

    errors = []
    for o in objects:
        try:
            kubernetes_validate.validate(o, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{o['kind']}/{o['metadata']['name']}: {'/'.join(map(str, e.path))}: {e.message}")
    assert not errors, errors


def test_the_validator_rejects_a_misspelt_field(objects):
    """The check above can fail: a typo in the DaemonSet is an error, not ignored."""
    import copy

    import kubernetes_validate

    ds = copy.deepcopy(_one(objects, "DaemonSet", "sensor"))
    ds["spec"]["template"]["spec"]["hostPid"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, VERSIONS[-1], strict=True)


def test_references_between_objects_resolve(objects):
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    ns = {o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"}
    for o in objects:
        if o["kind"] == "Namespace":
            continue
        assert o["metadata"]["namespace"] in ns
        spec = o.get("spec", {}).get("template", {}).get("spec")
        if spec is None:
            continue
        assert ("ServiceAccount", spec["serviceAccountName"]) in names
        for v in spec.get("volumes", []):
            if "configMap" in v:
                assert ("ConfigMap", v["configMap"]["name"]) in names, v
        for c in _containers(o):
            for e in c.get("envFrom", []):
                assert ("ConfigMap", e["configMapRef"]["name"]) in names
            mounted = {m["name"] for m in c.get("volumeMounts", [])}
            assert mounted <= {v["name"] for v in spec["volumes"]}, mounted
        labels = o["spec"]["template"]["metadata"]["labels"]
        assert o["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_images_are_ours_at_the_package_version(objects):
    for o in objects:
        for c in _containers(o):
            assert c["image"].endswith(f"dns-detector:{VERSION}"), c["image"]


def test_the_sensor_has_host_namespaces_and_the_least_privilege(objects):
    from tests.test_compose import SENSOR_CAPS

    ds = _one(objects, "DaemonSet", "sensor")
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostPID"] is True and spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["automountServiceAccountToken"] is False
    (c,) = spec["containers"]
    sc = c["securityContext"]
    assert sc.get("privileged", False) is False and sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) == SENSOR_CAPS, "the same set as docker-compose.yml's sensor"
    text = (K8S / "sensor-daemonset.yaml").read_text()
    for cap in SENSOR_CAPS:
        assert re.search(rf"- {cap}\s+# \S.{{15,}}", text), f"{cap}: no reason given on its line"
    assert c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"]


def test_the_sensor_mounts_what_bcc_and_attribution_read_read_only(objects):
    ds = _one(objects, "DaemonSet", "sensor")
    spec = ds["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    vols = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    for path in ("/sys/fs/cgroup", "/sys/kernel/tracing", "/lib/modules", "/usr/src",
                 "/var/log/pods", "/var/log/containers"):
        m = mounts.get(path)
        assert m and m.get("readOnly") is True, f"{path} must be mounted read-only"
        assert vols[m["name"]]["hostPath"]["path"] == path, f"{path} must be the node's own"
    # the writable ones: the spool (on the node, survives restarts) and a memory /tmp
    writable = {p for p, m in mounts.items() if not m.get("readOnly")}
    assert writable == {"/var/lib/detector/spool", "/tmp"}
    assert "emptyDir" in vols[mounts["/tmp"]["name"]]
    # the CRI socket is deliberately not mounted (control of every container on the node)
    for v in vols.values():
        assert not v.get("hostPath", {}).get("path", "").endswith(".sock"), v


def test_probes_hit_the_metrics_port_the_command_serves(objects):
    for kind, comp in (("DaemonSet", "sensor"), ("Deployment", "detector")):
        (c,) = _one(objects, kind, comp)["spec"]["template"]["spec"]["containers"]
        port = c["args"][c["args"].index("--metrics-port") + 1]
        assert {p["containerPort"] for p in c["ports"]} == {int(port)}
        for probe in ("livenessProbe", "readinessProbe"):
            p = c[probe]
            if "exec" in p:
                assert f"127.0.0.1:{port}/metrics" in " ".join(p["exec"]["command"])
            else:
                assert p["httpGet"]["port"] in ("metrics", int(port))
                addr = c["args"][c["args"].index("--metrics-addr") + 1]
                assert addr == "0.0.0.0", "an httpGet probe comes from the kubelet, not from 127.0.0.1"


@pytest.mark.parametrize("kind,component", [("DaemonSet", "sensor"), ("Deployment", "detector")])
def test_container_args_parse_with_the_real_cli(objects, kind, component):
    from detector.cli import build_parser
    from detector.kafkaconf import kafka_config_from_args

    obj = _one(objects, kind, component)
    (c,) = obj["spec"]["template"]["spec"]["containers"]
    env = {}
    for e in c.get("envFrom", []):
        cm = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == e["configMapRef"]["name"])
        env.update(cm["data"])
    # $(VAR) is expanded by the kubelet; an unknown one would be passed on literally
    args = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in c["args"]]
    try:
        parsed = build_parser().parse_args(args)
    except SystemExit as e:
        pytest.fail(f"`detector {' '.join(args)}` is refused by the CLI parser ({e})")
    assert kafka_config_from_args(parsed).servers
    if component == "detector":
        pod = obj["spec"]["template"]["spec"]["securityContext"]
        uid = re.search(r"useradd .*--uid (\d+)", (REPO / "docker" / "Dockerfile").read_text()).group(1)
        assert pod["runAsNonRoot"] is True and str(pod["runAsUser"]) == uid
        assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_site_rules_load_as_the_configmap_mounts_them(objects, tmp_path):
    """A ConfigMap volume holds ..data/ and a symlink per key; the sensor reads the
    image's rules and that folder (--rules twice) through the real rule loader."""
    from detector.detect.registry import load_rules

    cm = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "dns-detector-site-rules")
    mount = tmp_path / "rules"
    data = mount / "..2026_01_01_00_00_00.000000000"
    data.mkdir(parents=True)
    for key, text in cm["data"].items():
        (data / key).write_text(text)
        (mount / key).symlink_to(Path("..data") / key)
    (mount / "..data").symlink_to(data.name)
    base = load_rules([REPO / "rules"])
    both = load_rules([REPO / "rules", mount])
    assert [r.id for r in both.rules] == [r.id for r in base.rules]
    site = yaml.safe_load(cm["data"]["site-allowlist.yaml"])
    for d in site["domains"]:
        assert both.allowlist.covers_domain(f"svc.{d}") and not base.allowlist.covers_domain(f"svc.{d}")
    nets = {str(n) for n in both.allowlist.resolvers} - {str(n) for n in base.allowlist.resolvers}
    assert {str(ipaddress.ip_network(a)) for a in site["resolvers"]} <= nets


# --- live: the DaemonSet's capabilities are enough, and each one is needed ---------------

CLIENT = r"""
import os, socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
q = struct.pack("!HHHHHH", 9, 0x0100, 1, 0, 0, 0) + b"\x04caps\x07example\x03com\x00\x00\x01\x00\x01"
s.sendto(q, ("127.0.0.1", int(sys.argv[1])))
s.recvfrom(2048)
print(os.getpid(), flush=True)
time.sleep(2)  # until the sensor has read /proc
"""


def _live_with_caps(caps: set[str], port: int) -> tuple[subprocess.CompletedProcess, list[dict], int | None]:
    bounding = "-all," + ",".join(f"+{c.lower()}" for c in sorted(caps))
    cmd = ["setpriv", f"--bounding-set={bounding}", "--inh-caps=-all", "--",
           sys.executable, "-m", "detector", "live", "--duration", "8", "--ports", str(port),
           "--events", "--format", "jsonl"]
    live = Drained(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err_head = live.read_until("capturing DNS", 60)
    live.drain()  # its pipes read from now on: a full one would block it
    pid = None
    if "capturing DNS" in err_head:
        # a client of another user: its /proc/<pid>/exe needs SYS_PTRACE to read
        cl = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3",
                             "-c", CLIENT, str(port)], capture_output=True, text=True, timeout=20)
        assert cl.returncode == 0, cl.stderr
        pid = int(cl.stdout)
    out, err = live.communicate(timeout=60)
    r = subprocess.CompletedProcess(cmd, live.returncode, out, err_head + err)
    evs = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    return r, evs, pid


@pytest.mark.live
def test_the_sensor_runs_with_exactly_the_daemonsets_capabilities(objects):
    if os.geteuid() != 0:
        pytest.skip("live eBPF capture needs root")
    from detector.capture.live import live_capture_available
    from tests.test_live import free_port

    assert live_capture_available() and shutil.which("setpriv")
    (c,) = _one(objects, "DaemonSet", "sensor")["spec"]["template"]["spec"]["containers"]
    caps = set(c["securityContext"]["capabilities"]["add"])
    port = free_port()
    dm = subprocess.Popen(["/usr/sbin/dnsmasq", "-k", "--no-resolv", "--no-hosts", "--address=/#/1.2.3.4",
                           "--listen-address=127.0.0.1", f"--port={port}", "--bind-interfaces", "-z",
                           "--user=root", "--pid-file="], stderr=subprocess.PIPE)
    try:
        r, evs, pid = _live_with_caps(caps, port)
        assert r.returncode == 0, r.stderr[-2000:]
        ours = [e for e in evs if e["qname"] == "caps.example.com"]
        assert ours and all(e["process"]["pid"] == pid for e in ours), evs[-3:]
        assert ours[0]["process"]["exe"] == os.path.realpath("/usr/bin/python3")
        assert ours[0]["process"]["name"].startswith("python3")
        # one capability less: the programs are refused, with a one-line error
        r, _, _ = _live_with_caps(caps - {"NET_ADMIN"}, port)
        assert r.returncode != 0 and "Traceback" not in r.stderr
        assert re.search(r"refused BPF program|not permitted|CAP_NET_ADMIN", r.stderr), r.stderr[-1000:]
    finally:
        dm.terminate()
        dm.wait(5)
