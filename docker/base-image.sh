#!/usr/bin/env bash
# Build the image's base locally, without any image registry: a minimal Debian
# bookworm root made by debootstrap, imported into the local containers storage
# (what buildah and podman share) as $BASE_IMAGE.
#
#   docker/base-image.sh            # build once; a second run finds it and returns
#   docker/base-image.sh --force    # build it again (e.g. for newer Debian packages)
#
# Needs root, debootstrap and podman (./setup.sh image installs them), and the
# Debian mirror ($DEBIAN_MIRROR, default http://deb.debian.org/debian).
set -euo pipefail

BASE_IMAGE=${BASE_IMAGE:-localhost/dns-detector-base:bookworm}
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'base-image: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap and the containers storage need it)"
for tool in debootstrap podman; do
    command -v "$tool" >/dev/null || die "$tool is not installed (./setup.sh image installs it)"
done

if [ "${1:-}" != --force ] && podman image exists "$BASE_IMAGE"; then
    say "base image $BASE_IMAGE is already built (--force builds it again)"
    exit 0
fi

work=$(mktemp -d /var/tmp/dns-detector-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
root="$work/root"

say "debootstrap --variant=minbase $SUITE from $MIRROR"
# Leave documentation and translations out of every package installed later too
# (copyright files stay).
mkdir -p "$root/etc/dpkg/dpkg.cfg.d"
cat > "$root/etc/dpkg/dpkg.cfg.d/01-container-excludes" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" > "$work/debootstrap.log" 2>&1 \
    || { tail -n 20 "$work/debootstrap.log" >&2; die "debootstrap of $SUITE from $MIRROR failed"; }

# What a container base needs: security updates, no recommends, no services
# started by package scripts, and no package lists or .debs left behind.
cat > "$root/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY $SUITE-security main
EOF
cat > "$root/etc/apt/apt.conf.d/01-container" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
EOF
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
       "$root"/var/log/*.log "$root"/var/log/apt/* "$root"/tmp/* \
       "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*/
find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
: > "$root/etc/machine-id"

say "importing it as $BASE_IMAGE"
tar --numeric-owner --xattrs -C "$root" -c . \
    | podman import --quiet \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        --message "debootstrap --variant=minbase $SUITE $MIRROR" \
        - "$BASE_IMAGE" >/dev/null
say "base image $BASE_IMAGE: $(podman image inspect --format '{{.Size}}' "$BASE_IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
