"""Community ID flow hashes (version 1), as Zeek, Suricata, Wireshark and
Packetbeat write them, so a SIEM can join our DNS events with their flows.

The spec (https://github.com/corelight/community-id-spec): SHA-1 over the
2-byte seed, source address, destination address (network byte order),
the IP protocol number, one zero byte, source port and destination port
(2 bytes each, big endian), with the endpoints ordered so both directions
of a flow hash the same: the smaller (address, port) goes first. The digest
is base64-encoded and prefixed with the version, ``1:``.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import struct

PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17, "icmp6": 58, "sctp": 132}

_pton = socket.inet_pton
_AF4, _AF6 = socket.AF_INET, socket.AF_INET6
_SEED_PAD = struct.Struct("!BBHH")

_CACHE: dict[tuple, str] = {}
_CACHE_MAX = 65_536


def community_id(src_ip: str, src_port: int, dst_ip: str, dst_port: int, transport: str,
                 seed: int = 0) -> str:
    """``1:<base64 sha1>`` for a UDP or TCP flow; "" when an address does not parse
    or the transport has no ports (the field is then left out)."""
    key = (src_ip, src_port, dst_ip, dst_port, transport, seed)
    r = _CACHE.get(key)
    if r is not None:
        return r
    proto = PROTOCOLS.get(transport)
    try:
        a = _pton(_AF6 if ":" in src_ip else _AF4, src_ip)
        b = _pton(_AF6 if ":" in dst_ip else _AF4, dst_ip)
    except (OSError, TypeError):  # not an address
        return ""
    if proto not in (6, 17, 132) or len(a) != len(b) or not (0 <= src_port < 65536 and 0 <= dst_port < 65536):
        return ""
    if (b, dst_port) < (a, src_port):
        a, b, src_port, dst_port = b, a, dst_port, src_port
    data = seed.to_bytes(2, "big") + a + b + _SEED_PAD.pack(proto, 0, src_port, dst_port)
    r = "1:" + base64.b64encode(hashlib.sha1(data, usedforsecurity=False).digest()).decode()
    if len(_CACHE) >= _CACHE_MAX:
        _CACHE.clear()
    _CACHE[key] = r
    return r
