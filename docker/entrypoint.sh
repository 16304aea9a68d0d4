#!/bin/sh
# Container entrypoint: `detector ARGS...`.
# For the sensor (live, demo): when tracefs or debugfs is not mounted yet and the
# container may mount (only a privileged one can), mount them; BCC reads tracepoint
# formats there. With capabilities only (docker-compose.yml, deploy/kubernetes/) the
# host's /sys/kernel/tracing is mounted in instead, and these mounts fail quietly:
# the sensor's cgroup programs need neither.
set -e
if [ "$1" = "live" ] || [ "$1" = "demo" ]; then
    [ -d /sys/kernel/debug ] && ! mountpoint -q /sys/kernel/debug 2>/dev/null \
        && mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null || true
    [ -d /sys/kernel/tracing ] && ! mountpoint -q /sys/kernel/tracing 2>/dev/null \
        && mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || true
fi
exec detector "$@"
