#!/bin/sh
# Container entrypoint: mount debugfs/tracefs when the sensor runs privileged and they
# are not mounted yet (BCC needs them), then hand over to `detector ARGS...`.
set -e
if [ "$1" = "live" ] || [ "$1" = "demo" ]; then
    [ -d /sys/kernel/debug ] && ! mountpoint -q /sys/kernel/debug 2>/dev/null \
        && mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null || true
    [ -d /sys/kernel/tracing ] && ! mountpoint -q /sys/kernel/tracing 2>/dev/null \
        && mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || true
fi
exec detector "$@"
