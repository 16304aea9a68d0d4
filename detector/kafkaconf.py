"""Kafka connection settings: flags, environment and an optional YAML file.

Precedence: command-line flag > environment > ``--kafka-config`` file >
default. The SASL password is never a flag (it would show in ``ps``): it comes
from ``DETECTOR_KAFKA_PASSWORD`` or the config file. Example config file::

    bootstrap: kafka-1:9093,kafka-2:9093
    security_protocol: SASL_SSL
    sasl_mechanism: SCRAM-SHA-512
    sasl_username: detector
    sasl_password: s3cret          # or DETECTOR_KAFKA_PASSWORD
    ssl_cafile: /etc/detector/ca.pem
    alerts_topic: dns-alerts
    events_topic: dns-events
    spool_dir: /var/lib/detector/spool
    spool_max_mb: 256
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detector import errors
from detector.errors import DetectorError

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
ENV_BOOTSTRAP = "DETECTOR_KAFKA"
ENV_PASSWORD = "DETECTOR_KAFKA_PASSWORD"
_HOSTPORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")
FILE_KEYS = ("bootstrap", "security_protocol", "sasl_mechanism", "sasl_username", "sasl_password",
             "ssl_cafile", "ssl_certfile", "ssl_keyfile", "alerts_topic", "events_topic", "client_id",
             "spool_dir", "spool_max_mb")


def default_spool_dir() -> str:
    if os.geteuid() == 0:
        return "/var/lib/detector/spool"
    return str(Path.home() / ".cache" / "detector" / "spool")


@dataclass
class KafkaConfig:
    bootstrap: str
    alerts_topic: str = "dns-alerts"
    events_topic: str = "dns-events"
    client_id: str = "dns-detector"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    spool_dir: str = field(default_factory=default_spool_dir)
    spool_max_bytes: int = 256 * 1024 * 1024
    # bounds so that nothing ever hangs on a dead broker
    max_block_ms: int = 2000
    request_timeout_ms: int = 5000

    @property
    def servers(self) -> list[str]:
        return [s.strip() for s in self.bootstrap.split(",") if s.strip()]

    @property
    def cluster_key(self) -> str:
        """A folder name for this cluster's spool: the bootstrap addresses, sorted
        (``127.0.0.1_9092,kafka_19092``), so records kept for one cluster are only
        ever re-sent to that cluster."""
        key = ",".join(sorted(s.lower() for s in self.servers)) or "none"
        return "".join(c if c.isalnum() or c in ".,-" else "_" for c in key)[:200]

    def _common(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"bootstrap_servers": self.servers, "client_id": self.client_id,
                              "security_protocol": self.security_protocol,
                              "request_timeout_ms": self.request_timeout_ms}
        if self.security_protocol.startswith("SASL"):
            kw.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username,
                      sasl_plain_password=self.sasl_password)
        if self.security_protocol.endswith("SSL"):
            kw.update(ssl_cafile=self.ssl_cafile, ssl_certfile=self.ssl_certfile,
                      ssl_keyfile=self.ssl_keyfile, ssl_check_hostname=True)
        return kw

    def producer_kwargs(self) -> dict[str, Any]:
        kw = self._common()
        kw.update(acks="all", retries=5, enable_idempotence=True, max_in_flight_requests_per_connection=5,
                  linger_ms=5, max_block_ms=self.max_block_ms, delivery_timeout_ms=
                  max(self.request_timeout_ms + 5, 2 * self.request_timeout_ms),
                  retry_backoff_ms=100, reconnect_backoff_max_ms=1000)
        return kw

    def consumer_kwargs(self, group: str | None = None) -> dict[str, Any]:
        kw = self._common()
        # kafka-python requires request_timeout_ms > session_timeout_ms for consumers
        kw.update(group_id=group, enable_auto_commit=False, auto_offset_reset="earliest", fetch_max_wait_ms=100,
                  session_timeout_ms=10000, heartbeat_interval_ms=1000,
                  request_timeout_ms=max(self.request_timeout_ms, 30000), reconnect_backoff_max_ms=1000)
        return kw


def add_kafka_args(p: argparse.ArgumentParser) -> None:
    """Add the "kafka" option group (used by replay, live, consume, top)."""
    g = p.add_argument_group("kafka", "password: DETECTOR_KAFKA_PASSWORD or the config file, never a flag")
    g.add_argument("--kafka", metavar="HOST:PORT[,...]", default=os.environ.get(ENV_BOOTSTRAP),
                   help=f"bootstrap servers; also publish alerts there (env {ENV_BOOTSTRAP})")
    g.add_argument("--kafka-config", metavar="FILE", action=_ConfigFile,
                   help="YAML file with connection settings (its bootstrap enables Kafka like --kafka)")
    g.add_argument("--kafka-topic", metavar="TOPIC", help="alerts topic (default dns-alerts)")
    g.add_argument("--events-topic", metavar="TOPIC", help="events topic (default dns-events)")
    g.add_argument("--kafka-client-id", metavar="ID", help="client id (default dns-detector)")
    g.add_argument("--kafka-security-protocol", choices=PROTOCOLS, help="default PLAINTEXT")
    g.add_argument("--kafka-sasl-mechanism", choices=MECHANISMS)
    g.add_argument("--kafka-sasl-username", metavar="USER")
    g.add_argument("--kafka-ssl-cafile", metavar="PEM")
    g.add_argument("--kafka-ssl-certfile", metavar="PEM")
    g.add_argument("--kafka-ssl-keyfile", metavar="PEM")
    g.add_argument("--spool-dir", metavar="DIR",
                   help="where undeliverable alerts wait for the broker (default "
                   "/var/lib/detector/spool as root, else ~/.cache/detector/spool)")
    g.add_argument("--spool-max-mb", type=int, metavar="MB", help="spool size bound (default 256)")
    if not any("--publish-events" in a.option_strings for a in p._actions):
        g.add_argument("--publish-events", action="store_true",
                       help="publish every DNS event to the events topic (needs --kafka)")


class _ConfigFile(argparse.Action):
    """Load the file while parsing, so its ``bootstrap`` turns Kafka on like --kafka
    (a --kafka flag or DETECTOR_KAFKA still wins)."""

    def __call__(self, parser, namespace, value, option_string=None):
        try:
            d = _load_file(value)
        except DetectorError as e:
            parser.error(str(e))
        setattr(namespace, self.dest, value)
        if not getattr(namespace, "kafka", None) and d.get("bootstrap"):
            namespace.kafka = str(d["bootstrap"])


def _load_file(path: str) -> dict[str, Any]:
    import yaml

    try:
        with open(path) as f:
            d = yaml.safe_load(f) or {}
    except OSError as e:
        raise DetectorError(f"{path}: cannot read Kafka config: {e.strerror}", errors.USAGE) from None
    except yaml.YAMLError as e:
        raise DetectorError(f"{path}: not valid YAML: {e}", errors.USAGE) from None
    if not isinstance(d, dict):
        raise DetectorError(f"{path}: Kafka config must be a mapping of settings", errors.USAGE)
    unknown = sorted(set(d) - set(FILE_KEYS))
    if unknown:
        raise DetectorError(f"{path}: unknown Kafka setting(s) {', '.join(unknown)}; known: "
                            + ", ".join(FILE_KEYS), errors.USAGE)
    return d


def kafka_config_from_args(args: argparse.Namespace) -> KafkaConfig:
    """Build and validate a :class:`KafkaConfig`; a bad setting is a DetectorError."""
    f = _load_file(args.kafka_config) if getattr(args, "kafka_config", None) else {}

    def pick(attr: str, key: str, default=None):
        v = getattr(args, attr, None)
        return v if v is not None else f.get(key, default)

    bootstrap = pick("kafka", "bootstrap")
    if not bootstrap:
        raise DetectorError("no Kafka bootstrap servers", errors.USAGE,
                            f"pass --kafka HOST:PORT or set {ENV_BOOTSTRAP}")
    bootstrap = str(bootstrap)
    for s in bootstrap.split(","):
        m = _HOSTPORT.match(s.strip())
        if not m or not 0 < int(m.group(2)) < 65536:
            raise DetectorError(f"--kafka {bootstrap!r}: {s.strip()!r} is not HOST:PORT", errors.USAGE)
    proto = str(pick("kafka_security_protocol", "security_protocol", "PLAINTEXT")).upper()
    if proto not in PROTOCOLS:
        raise DetectorError(f"Kafka security protocol {proto!r}: expected one of {', '.join(PROTOCOLS)}",
                            errors.USAGE)
    mech = pick("kafka_sasl_mechanism", "sasl_mechanism")
    user = pick("kafka_sasl_username", "sasl_username")
    password = os.environ.get(ENV_PASSWORD) or f.get("sasl_password")
    if proto.startswith("SASL"):
        mech = str(mech or "PLAIN").upper()
        if mech not in MECHANISMS:
            raise DetectorError(f"SASL mechanism {mech!r}: expected one of {', '.join(MECHANISMS)}",
                                errors.USAGE)
        if not user:
            raise DetectorError(f"{proto} needs a user name", errors.USAGE, "pass --kafka-sasl-username")
        if not password:
            raise DetectorError(f"{proto} needs a password", errors.USAGE,
                                f"set {ENV_PASSWORD} (passwords are never taken from flags)")
    elif mech or user:
        raise DetectorError(f"SASL settings given but the security protocol is {proto}", errors.USAGE,
                            "add --kafka-security-protocol SASL_SSL (or SASL_PLAINTEXT)")
    ssl = {k: pick(f"kafka_{k}", k) for k in ("ssl_cafile", "ssl_certfile", "ssl_keyfile")}
    for k, v in ssl.items():
        if v and not os.path.isfile(v):
            raise DetectorError(f"--kafka-{k.replace('_', '-')} {v}: no such file", errors.USAGE)
        if v and not proto.endswith("SSL"):
            raise DetectorError(f"TLS file {v} given but the security protocol is {proto}", errors.USAGE,
                                "add --kafka-security-protocol SSL (or SASL_SSL)")
    if bool(ssl["ssl_certfile"]) != bool(ssl["ssl_keyfile"]):
        raise DetectorError("a TLS client certificate needs both --kafka-ssl-certfile and --kafka-ssl-keyfile",
                            errors.USAGE)
    max_mb = pick("spool_max_mb", "spool_max_mb", 256)
    try:
        max_mb = int(max_mb)
        if max_mb <= 0:
            raise ValueError
    except (TypeError, ValueError):
        raise DetectorError(f"spool size {max_mb!r}: expected a positive number of MiB", errors.USAGE) from None
    return KafkaConfig(
        bootstrap=bootstrap,
        alerts_topic=pick("kafka_topic", "alerts_topic", "dns-alerts"),
        events_topic=pick("events_topic", "events_topic", "dns-events"),
        client_id=pick("kafka_client_id", "client_id", "dns-detector"),
        security_protocol=proto,
        sasl_mechanism=mech if proto.startswith("SASL") else None,
        sasl_username=user,
        sasl_password=password if proto.startswith("SASL") else None,
        spool_dir=str(pick("spool_dir", "spool_dir") or default_spool_dir()),
        spool_max_bytes=max_mb * 1024 * 1024,
        **ssl,
    )
