"""Our DNS decoding against tshark's field dumps, field by field, over every
shared capture (pcap/*/*, tunnel/*.pcap, tunnel/ndpi/*): agreement of at
least 99.5% per field family (header, questions, answers, authority,
additional, rdata, EDNS). tests/tshark_fields.py reads tshark's JSON and
normalises both sides; a failure names each disagreeing capture, frame and
field. The per-family figures are printed at the end of the run.

DETECTOR_TSHARK_REPORT=FILE also writes the whole disagreement list there,
grouped by cause (or: python tests/tshark_fields.py FILE).
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

from conftest import IN_CI, REPORT
from tshark_fields import (DAMAGED, FAMILIES, all_captures, compare_all, compare_capture, dig_bytes,
                           our_rdata, report, tokens, totals, tshark_bytes, tshark_name, tshark_option,
                           tshark_rdata)

MIN_AGREEMENT = 0.995
SHOWN = 40


@pytest.fixture(scope="module")
def results(data):
    if shutil.which("tshark") is None:
        if IN_CI:
            pytest.fail("tshark is missing in CI")
        pytest.skip("tshark is not installed")
    caps = [str(p) for p in all_captures(data)]
    assert len(caps) > 150, caps
    res = compare_all(caps, workers=2)
    for fam, (c, a) in totals(res).items():
        REPORT.append(f"tshark agreement {fam}: {100 * a / c if c else 100:.3f}% of {c:,} fields "
                      f"({c - a:,} disagree)")
    out = os.environ.get("DETECTOR_TSHARK_REPORT")
    if out:
        Path(out).write_text(report(res))
    return res


def test_enough_messages_compared(results):
    """The comparison is not vacuous: every family has fields to compare."""
    assert sum(r.messages for r in results) > 13000
    tot = totals(results)
    assert all(tot[f][0] > 1000 for f in FAMILIES), tot


@pytest.mark.parametrize("family", FAMILIES)
def test_family_agrees_with_tshark(results, family):
    c, a = totals(results)[family]
    bad = [b for r in results for b in r.bad if b[2] == family]
    per_capture = Counter(b[0] for b in bad)
    lines = [f"{cap} {frame} {fam}.{fld} ours={o} tshark={t}" for cap, frame, fam, fld, o, t, _ in bad[:SHOWN]]
    assert a / c >= MIN_AGREEMENT, (
        f"{family}: {a:,}/{c:,} fields agree ({100 * a / c:.3f}% < {100 * MIN_AGREEMENT}%)\n"
        + "\n".join(lines) + f"\nper capture: {dict(per_capture.most_common())}")


# --- the normalisation itself, on values seen in the shared captures ---------------------

def test_names_map_to_the_same_bytes():
    # tshark: C escapes with octal; ours: dig's decimal escapes and \. inside a label
    assert tshark_bytes("\\033[2J\\033]0;pwned\\a.evil.com") == dig_bytes("\\027[2J\\027]0\\;pwned\\007.evil.com")
    assert tshark_name("<Root>") == b"." and tshark_name("<Name too long>") is DAMAGED
    assert dig_bytes("a\\.b.c") == tshark_bytes("a.b.c")
    assert tshark_bytes("fl\ufffdte") == dig_bytes("fl\\251te") == b"flte"  # bytes over 0x7f left out


def test_rdata_of_both_sides_normalise_alike():
    rrsig = [("dns.resp.type", "46"), ("dns.resp.len", "30"), ("dns.rrsig.type_covered", "6"),
             ("dns.rrsig.algorithm", "8"), ("dns.rrsig.labels", "0"), ("dns.rrsig.original_ttl", "86400"),
             ("dns.rrsig.signature_expiration", "Mar 20, 2025 05:00:00.000000000 UTC"),
             ("dns.rrsig.signature_inception", "Mar  7, 2025 04:00:00.000000000 UTC"),
             ("dns.rrsig.key_tag", "26470"), ("dns.rrsig.signers_name", "<Root>"),
             ("dns.rrsig.signature", "5d:94:33")]
    assert tshark_rdata(46, rrsig) == our_rdata(46, "SOA 8 0 86400 20250320050000 20250307040000 26470 . XZQz", False)
    assert tshark_rdata(46, rrsig) != our_rdata(46, "SOA 8 0 86400 20250320050000 20250307040000 26470 . XZQZ", False)
    txt = [("dns.resp.type", "16"), ("dns.resp.len", "9"), ("dns.txt", "a b"), ("dns.txt", "c\"")]
    assert tshark_rdata(16, txt) == our_rdata(16, '"a b" "c\\""', False)
    assert tshark_rdata(16, txt) != our_rdata(16, "a b c\"", False)  # space-joined is not the presentation
    ds = [("dns.resp.type", "43"), ("dns.resp.len", "8"), ("dns.ds.key_id", "0x3322"), ("dns.ds.algorithm", "8"),
          ("dns.ds.digest_type", "2"), ("dns.ds.digest", "b4:f2")]
    assert tshark_rdata(43, ds) == our_rdata(43, "13090 8 2 B4F2", False)
    assert tokens('1 . alpn="h2,h3" ipv4hint=1.2.3.4') == ["1", ".", "alpn=h2,h3", "ipv4hint=1.2.3.4"]


def test_edns_options_rebuilt_from_their_bytes():
    assert tshark_option([("dns.opt.code", "10"), ("dns.opt.data", "66:f2:b3:09:b8:4f:c5:d0:01:02")]) == (
        10, "COOKIE", "66f2b309b84fc5d0 0102")
    assert tshark_option([("dns.opt.code", "12"), ("dns.opt.data", "00:00:00")]) == (12, "PADDING", "3")
    assert tshark_option([("dns.opt.code", "5"), ("dns.opt.data", "08:0d")]) == (5, "DAU", "8 13")
    assert tshark_option([("dns.opt.code", "8"), ("dns.opt.data", "00:01:18:00:ac:11:00"),
                          ("dns.opt.client.netmask", "24"), ("dns.opt.client.scope", "0"),
                          ("dns.opt.client.addr4", "172.17.0.0")]) == (8, "ECS", "172.17.0.0/24/0")


def test_a_disagreement_is_named(data, monkeypatch):
    """Break our side on purpose (every A record's address): the comparison
    names the capture, frame and field, and the rdata family drops."""
    import tshark_fields

    path = str(data / "pcap/dnscap_tests/edns.pcap")
    good = compare_capture(path)
    assert good.counts["rdata"][0] == good.counts["rdata"][1] > 0
    real = tshark_fields.our_msg

    def broken(ev):
        m = real(ev)
        for recs in m.sections.values():
            for r in recs:
                if r["rtype"] == 1:
                    r["data"] = "192.0.2.1"
        return m

    monkeypatch.setattr(tshark_fields, "our_msg", broken)
    bad = compare_capture(path)
    assert bad.counts["rdata"][1] < bad.counts["rdata"][0]
    assert any(b[0] == "edns.pcap" and b[2] == "rdata" and b[3] == "answers.A" and b[4] == "('192.0.2.1',)"
               for b in bad.bad), bad.bad[:5]
