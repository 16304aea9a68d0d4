#!/usr/bin/env bash
# Set up everything this project needs on a fresh Debian/Ubuntu machine (as root),
# then run one job:
#
#   ./setup.sh demo    # live capture if root+BCC allow, else the bundled capture;
#                      # alerts to stdout and to an embedded Kafka broker
#   ./setup.sh test    # the whole test suite (what .ci/run calls)
#   ./setup.sh image   # build the container image here (buildah, no Docker engine, no
#                      # registry) and smoke-test it: detector --version, a replay
#   ./setup.sh         # set up only
#
# Idempotent: a second run installs nothing new. Needs network access to the
# Debian and PyPI package mirrors on the first run only.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
VENV="$ROOT/.venv"
PY=${PYTHON:-python3}

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
warn() { printf '\033[33mwarning: %s\033[0m\n' "$*" >&2; }

APT_PKGS=(python3-bpfcc libbpfcc tshark tcpdump bind9-dnsutils unbound dnsmasq-base
          bind9 dnsperf iodine dns2tcp iproute2 util-linux docker-compose)

install_system() {
    if [ "$(id -u)" != 0 ]; then
        warn "not root: skipping system packages (live capture and resolver tests need root)"
        return
    fi
    if ! command -v apt-get >/dev/null; then
        warn "no apt-get: install by hand: ${APT_PKGS[*]} and kernel headers"
        return
    fi
    local missing=()
    for p in "${APT_PKGS[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    local kver hdr
    kver=$(uname -r)
    if [ ! -e "/lib/modules/$kver/build/include" ]; then
        if apt-cache show "linux-headers-$kver" >/dev/null 2>&1; then
            hdr="linux-headers-$kver"
        else
            hdr="linux-headers-$(dpkg --print-architecture)"
        fi
        dpkg-query -W -f='${Status}' "$hdr" 2>/dev/null | grep -q "install ok installed" || missing+=("$hdr")
    fi
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing Debian packages: ${missing[*]}"
        # Packages like unbound and bind9 must not start system services here.
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
            chmod +x /usr/sbin/policy-rc.d
            trap 'rm -f /usr/sbin/policy-rc.d' EXIT
        fi
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    fi
    link_headers "$kver"
}

link_headers() {
    # BCC looks for /lib/modules/$(uname -r)/build. When the distro has no headers
    # for this exact kernel, link Debian's generic ones: good for UAPI structs and
    # tracepoint formats, which is all bpf/ uses.
    local kver=$1 mod=/lib/modules/$1
    [ -e "$mod/build/include" ] && return
    local common arch
    common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1 || true)
    arch=$(ls -d /usr/src/linux-headers-*-"$(dpkg --print-architecture)" 2>/dev/null | sort -V | tail -n1 || true)
    if [ -z "$arch" ]; then
        warn "no kernel headers found under /usr/src: live capture will not work"
        return
    fi
    warn "no headers for kernel $kver: linking generic $(basename "$arch") (UAPI only)"
    mkdir -p "$mod"
    ln -sfn "$arch" "$mod/build"
    ln -sfn "${common:-$arch}" "$mod/source"
}

install_python() {
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating virtualenv $VENV"
        "$PY" -m venv "$VENV"
    fi
    local stamp="$VENV/.installed-$(cat pyproject.toml setup.py detector/dns/_cwire.c detector/detect/dga/_cdga.c | sha1sum | cut -c1-12)"
    if [ ! -e "$stamp" ]; then
        say "installing Python packages"
        # [broker]: the embedded test broker for the demo and the tests (not in the image)
        "$VENV/bin/pip" install -q --disable-pip-version-check -e ".[test,broker]"
        touch "$stamp"
    fi
    # Byte-compile the checkout once: with PYTHONDONTWRITEBYTECODE set (as in many CI
    # images) Python never writes .pyc files itself, and every `detector` start would
    # compile its sources again (a tenth of a second). Stale files are rewritten.
    "$VENV/bin/python" -m compileall -q -j 0 detector bench tests >/dev/null || warn "byte-compiling failed (only start-up is slower)"
    # Make Debian's pure-Python bcc module importable, and only that module.
    local site
    site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    if [ -d /usr/lib/python3/dist-packages/bcc ] && [ ! -e "$site/bcc" ]; then
        ln -s /usr/lib/python3/dist-packages/bcc "$site/bcc"
    fi
}

IMAGE_PKGS=(buildah podman debootstrap)

install_image_tools() {
    # Only for `./setup.sh image`: build images without a Docker engine or a registry.
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "setup.sh image: needs root and apt-get (to install ${IMAGE_PKGS[*]})" >&2
        exit 1
    fi
    local missing=()
    for p in "${IMAGE_PKGS[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing Debian packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

install_system
install_python
export PATH="$VENV/bin:$PATH"

case "${1:-}" in
    demo) shift; exec "$VENV/bin/detector" demo "$@" ;;
    test) shift; exec "$VENV/bin/python" -m pytest -q -rs "$@" ;;
    image) shift; install_image_tools; docker/base-image.sh; exec docker/build-image.sh "$@" ;;
    "") say "set up; run .venv/bin/detector --help" ;;
    *) echo "usage: $0 [demo|test|image] [args...]" >&2; exit 2 ;;
esac
