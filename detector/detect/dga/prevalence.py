"""How widely a registered domain resolves: the prevalence table.

A name that many distinct clients resolve NOERROR, or that has resolved on
many days, is not a DGA rendezvous point, however random it looks (CDN,
tracker and device-telemetry names are). This table remembers, per
registered domain:

* a 64-bit sketch of the clients that got a NOERROR answer for it (one bit per
  client hash: the number of set bits estimates distinct clients, exactly
  for a few, saturating near 64; enough to tell "one host" from "hundreds");
* the first and last day (UTC, capture time) it resolved, and on how many
  distinct days (counted once two clients resolved it, so one infected host
  resolving its C2 every day does not make the C2 prevalent);
* in a separate table, bounded apart (``max_nx``, memory only), a sketch of
  the clients that got NXDOMAIN for a name: one that fails for many hosts is a
  blocked or broken name, not one host's generator. Kept apart so that a flood
  of random names that do not exist cannot evict what resolves.

Bounded: at most ``max_entries`` domains, least recently seen evicted first
(counted in ``evicted``). Persisted as one JSON file (written atomically:
temporary file, fsync, rename), so a sensor keeps what it learnt across
restarts and a replay of yesterday's capture can warm today's live sensor::

    detector replay pcap monday.pcap --prevalence state/prevalence.json
    detector live --prevalence state/prevalence.json
"""

from __future__ import annotations

import json
import os
import zlib
from collections import OrderedDict
from pathlib import Path

from detector import errors
from detector.errors import DetectorError

FORMAT_VERSION = 1
_SHARED: dict[str, "Prevalence"] = {}
DAY = 86400.0


class Prevalence:
    def __init__(self, max_entries: int = 200_000, max_nx: int = 50_000) -> None:
        self.max_entries = max_entries
        self.max_nx = max_nx
        self.nx: OrderedDict[str, int] = OrderedDict()  # domain -> NXDOMAIN client bits
        # domain -> [client bits, first day, last day, distinct days]
        self.table: OrderedDict[str, list[int]] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self.table)

    def observe(self, domain: str, client: str, ts: float, min_clients: int = 0, min_days: int = 0) -> bool:
        """``client`` got a NOERROR answer with data for ``domain`` at ``ts``.
        Returns whether ``domain`` is now :meth:`prevalent` (by ``min_clients``
        and ``min_days``; False when both are 0)."""
        day = int(ts // DAY)
        bit = _BITS.get(client) or _bit(client)
        table = self.table
        e = table.get(domain)
        if e is None:
            e = table[domain] = [bit, day, day, 1]
            if len(table) > self.max_entries:
                table.popitem(last=False)
                self.evicted += 1
        else:
            table.move_to_end(domain)
            e[0] |= bit
            if day > e[2]:
                e[2] = day
                if e[0].bit_count() >= 2:
                    e[3] += 1
        return (min_clients > 0 and e[0].bit_count() >= min_clients) or (min_days > 0 and e[3] >= min_days)

    def observe_nx(self, domain: str, client: str, ts: float) -> None:
        """``client`` got NXDOMAIN for ``domain``."""
        nx = self.nx
        bits = nx.pop(domain, 0)
        nx[domain] = bits | _bit(client)
        if len(nx) > self.max_nx:
            nx.popitem(last=False)

    def nx_clients(self, domain: str) -> int:
        return self.nx.get(domain, 0).bit_count()

    def clients(self, domain: str) -> int:
        """Estimated distinct clients that resolved ``domain`` (0 when unknown)."""
        e = self.table.get(domain)
        return e[0].bit_count() if e is not None else 0

    def days(self, domain: str) -> int:
        e = self.table.get(domain)
        return e[3] if e is not None else 0

    def prevalent(self, domain: str, min_clients: int, min_days: int) -> bool:
        e = self.table.get(domain)
        if e is None:
            return False
        return (min_clients > 0 and e[0].bit_count() >= min_clients) or (min_days > 0 and e[3] >= min_days)

    def prevalent_each(self, domains: list[str], min_clients: int, min_days: int) -> list[bool]:
        """:meth:`prevalent` for each of ``domains``."""
        get = self.table.get
        out = []
        for d in domains:
            e = get(d)
            out.append(e is not None and ((min_clients > 0 and e[0].bit_count() >= min_clients)
                                          or (min_days > 0 and e[3] >= min_days)))
        return out

    # --- persistence ------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        path = Path(path)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{id(self):x}.tmp")
        doc = {"version": FORMAT_VERSION, "entries": self.table}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(doc, fh, separators=(",", ":"))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as e:
            try:
                tmp.unlink()
            except OSError:
                pass
            raise DetectorError(f"{path}: cannot write the prevalence table ({e.strerror or e})",
                                errors.SINK) from None

    @classmethod
    def load(cls, path: str | os.PathLike[str], max_entries: int = 200_000) -> "Prevalence":
        """The table saved at ``path``; an empty one when the file does not exist yet."""
        p = cls(max_entries)
        path = Path(path)
        if not path.exists():
            return p
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise DetectorError(f"{path}: not a readable prevalence table ({e})", errors.USAGE,
                                "delete it to start afresh, or point --prevalence elsewhere") from None
        if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION or \
                not isinstance(doc.get("entries"), dict):
            raise DetectorError(f"{path}: not a prevalence table of format version {FORMAT_VERSION}",
                                errors.USAGE, "delete it to start afresh") from None
        for dom, e in doc["entries"].items():
            if isinstance(e, list) and len(e) == 4 and all(isinstance(x, int) for x in e):
                p.table[dom] = e
        while len(p.table) > max_entries:
            p.table.popitem(last=False)
            p.evicted += 1
        return p


def shared(path: str, max_entries: int = 200_000) -> Prevalence:
    """One table per file in a process: the detectors of every partition a
    consumer owns share it, so none overwrites what another learnt."""
    key = os.path.abspath(path)
    p = _SHARED.get(key)
    if p is None:
        p = _SHARED[key] = Prevalence.load(path, max_entries)
    return p


_BITS: dict[str, int] = {}


def _bit(client: str) -> int:
    """The client's bit in a 64-bit sketch (cached per address: a few thousand clients)."""
    b = _BITS.get(client)
    if b is None:
        if len(_BITS) >= 1 << 16:
            _BITS.clear()
        b = _BITS[client] = 1 << (zlib.crc32(client.encode("utf-8", "surrogateescape")) & 63)
    return b
