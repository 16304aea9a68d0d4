"""Hostile and broken capture files: every one ends in a one-line message and a
documented exit code (2 refused, 3 truncated), a multi-file replay goes on with
the next file and lists the bad one, and malformed blocks inside a readable
file are counted skips. Crafted pcapng files beside a real one."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from detector.capture.pcapwrite import dns_query, eth_ip, udp
from tests.conftest import run_detector

FRAME = eth_ip("10.0.0.1", "10.0.0.53", 17, udp(1000, 53, dns_query(1, "a.example.com")))


def shb(bom: int = 0x1A2B3C4D) -> bytes:
    body = struct.pack("<IHHq", bom, 1, 0, -1)
    return struct.pack("<II", 0x0A0D0D0A, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))


def idb(linktype: int = 1) -> bytes:
    body = struct.pack("<HHI", linktype, 0, 65535)
    return struct.pack("<II", 1, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))


def epb(data: bytes, hi: int = 0, lo: int = 1_000_000) -> bytes:
    body = struct.pack("<IIIII", 0, hi, lo, len(data), len(data)) + data + b"\0" * (-len(data) % 4)
    return struct.pack("<II", 6, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))


CASES = {
    "bad_bom.pcapng": (shb(0x11223344) + idb() + epb(FRAME), "has a bad byte-order magic", 2),
    "second_section_bad.pcapng": (shb() + idb() + epb(FRAME) + shb(0x55667788) + idb() + epb(FRAME),
                                  "has a bad byte-order magic", 2),
    "unknown_linktype.pcapng": (shb() + idb(4242) + epb(FRAME), "unknown link type 4242", 2),
    "unknown_linktype.pcap": (struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 4242)
                              + struct.pack("<IIII", 1, 0, len(FRAME), len(FRAME)) + FRAME,
                              "unknown link type 4242", 2),
    "cut_block.pcapng": (shb() + idb() + epb(FRAME) + epb(FRAME)[:30], "truncated", 3),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_broken_capture_is_one_line_and_its_exit_code(tmp_path, name):
    data, words, code = CASES[name]
    f = tmp_path / name
    f.write_bytes(data)
    r = run_detector("replay", "pcap", str(f), "-q", "--rules", "rules/denylist.yaml")
    assert r.returncode == code, r.stderr
    assert words in r.stderr and "Traceback" not in r.stderr


def test_a_multi_file_replay_reads_every_good_file_and_lists_the_bad(tmp_path, data):
    good = data / "tunnel" / "iodine_elastic_examples.pcap"
    files = []
    for name in ("bad_bom.pcapng", "unknown_linktype.pcap", "second_section_bad.pcapng"):
        (tmp_path / name).write_bytes(CASES[name][0])
        files.append(str(tmp_path / name))
    alone = run_detector("replay", "pcap", str(good), "--events", "--format", "jsonl", "-q")
    mixed = run_detector("replay", "pcap", files[0], str(good), *files[1:], "--events", "--format", "jsonl",
                         "-q", "--summary-json", str(tmp_path / "s.json"))
    assert alone.returncode == 0 and mixed.returncode == 2, mixed.stderr
    assert "Traceback" not in mixed.stderr
    want = [json.loads(x) for x in alone.stdout.splitlines()]
    got = [json.loads(x) for x in mixed.stdout.splitlines()]
    # every event of the good file, plus the one packet before the broken second section
    assert [d for d in got if d.get("qname") != "a.example.com"] == want
    assert sum(d.get("qname") == "a.example.com" for d in got) == 1
    summary = json.loads((tmp_path / "s.json").read_text())
    assert len(summary["refused"]) == 3 and all(any(f in w for w in summary["refused"]) for f in files)


def test_malformed_blocks_and_absurd_timestamps_are_counted_skips(tmp_path):
    tiny = struct.pack("<III", 6, 12, 12)  # an enhanced packet block too short for its fields, at the end
    f = tmp_path / "odd.pcapng"
    f.write_bytes(shb() + idb() + epb(FRAME) + epb(FRAME, hi=0xFFFFFFFF, lo=0xFFFFFFFF) + epb(FRAME) + tiny)
    r = run_detector("replay", "pcap", str(f), "--events", "--format", "jsonl",
                     "--rules", "rules/denylist.yaml", "--summary-json", str(tmp_path / "s.json"))
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["errors"]["pcapng_bad_blocks"] == 1 and s["errors"]["bad_timestamps"] == 1
    assert s["packets"] == 2
    assert all(json.loads(x)["ts"] < 1e11 for x in r.stdout.splitlines() if x.startswith("{"))


@pytest.fixture
def data():
    from detector.paths import shared_data

    d = shared_data()
    if not (d / "tunnel").is_dir():
        pytest.fail(f"shared data missing at {d}")
    return Path(d)


# --- compressed captures --------------------------------------------------------------

def _compressors():
    import bz2
    import gzip
    import lzma

    import lz4.frame
    import zstandard

    return {
        "gzip": gzip.compress, "xz": lzma.compress, "bzip2": bz2.compress,
        "zstd": lambda b: zstandard.ZstdCompressor(write_checksum=True).compress(b),
        "lz4": lz4.frame.compress,
        # several frames one after the other, as `cat a.gz b.gz` or pigz/pzstd write them
        "gzip_members": lambda b: gzip.compress(b[:7000]) + gzip.compress(b[7000:]),
        "zstd_frames": lambda b: b"".join(zstandard.ZstdCompressor().compress(b[i:i + 50000])
                                          for i in range(0, len(b), 50000)),
        "lz4_frames": lambda b: lz4.frame.compress(b[:9000]) + lz4.frame.compress(b[9000:]),
    }


def _run_stdin(*args: str, input_bytes: bytes):
    """The detector command with binary stdin (run_detector takes text)."""
    import os
    import subprocess

    from tests.conftest import DETECTOR, REPO

    r = subprocess.run(DETECTOR + list(args), input=input_bytes, capture_output=True,
                       timeout=300, cwd=REPO, env=dict(os.environ))
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(), r.stderr.decode())


def _read(path):
    from detector.capture.pcap import PcapReader

    r = PcapReader(str(path))
    frames = [(ts, lt, bytes(fr)) for ts, lt, fr in r]
    r.close()
    return frames, r


@pytest.mark.parametrize("kind", sorted(_compressors()))
@pytest.mark.parametrize("rel", ["tunnel/iodine_elastic_examples.pcap",
                                 "pcap/ndpi_tests/dns-google-nsid.pcapng"], ids=["pcap", "pcapng"])
def test_compressed_captures_read_as_the_plain_file_by_their_magic(tmp_path, data, kind, rel):
    """A capture compressed with each format, under a name that says nothing of it,
    gives the same frames as the plain file, and the same events from stdin."""
    plain = data / rel
    raw = plain.read_bytes()
    packed = tmp_path / "capture.bin"
    packed.write_bytes(_compressors()[kind](raw))
    want, _ = _read(plain)
    got, r = _read(packed)
    assert got == want and not r.truncated
    assert r.compression == kind.split("_")[0] and r.format == plain.suffix[1:]
    assert r.offset == packed.stat().st_size  # progress counts the file's own bytes
    if kind in ("gzip", "zstd_frames") and rel.endswith(".pcap"):
        args = ("replay", "pcap", "--events", "--format", "jsonl", "-q", "--rules", "rules/denylist.yaml")
        a = run_detector(*args, str(plain))
        b = _run_stdin(*args, "-", input_bytes=packed.read_bytes())
        assert a.returncode == b.returncode == 0, b.stderr
        assert a.stdout == b.stdout and len(a.stdout.splitlines()) > 150


@pytest.mark.parametrize("kind", ["gzip", "xz", "bzip2", "zstd", "lz4"])
def test_a_cut_or_corrupt_compressed_capture_gives_what_is_there_and_exit_3(tmp_path, data, kind):
    """Cut in the middle, the frames decompressed before the cut are read (bzip2
    and zstd give a block only once it is whole: a 2 MB capture has several) and
    the replay exits 3 as for a cut pcap; corrupt in the middle, the same."""
    plain = data / "tunnel/dns2tcp_netrack_2018-03-23.pcap"
    raw = plain.read_bytes()
    want, _ = _read(plain)
    packed = _compressors()[kind](raw)
    cut = tmp_path / f"cut.{kind}"
    cut.write_bytes(packed[:len(packed) // 2])
    got, r = _read(cut)
    assert r.truncated and f"{kind} stream ends mid-frame" in r.truncated_detail
    assert 1000 < len(got) < len(want) and got == want[:len(got)]
    res = run_detector("replay", "pcap", str(cut), "--events", "--format", "jsonl", "-q",
                       "--rules", "rules/denylist.yaml")
    assert res.returncode == 3 and "Traceback" not in res.stderr
    assert "truncated" in res.stderr and len(res.stdout.splitlines()) > 1000
    if kind in ("gzip", "xz", "bzip2", "zstd"):  # formats that check their data (lz4: no checksum here)
        bad = bytearray(packed)
        for i in range(len(bad) // 2, len(bad) // 2 + 8):
            bad[i] ^= 0xA5
        cut.write_bytes(bytes(bad))
        got, r = _read(cut)
        assert r.truncated and len(got) > 1000 and got[:1000] == want[:1000]
        res = _run_stdin("replay", "pcap", "-", "-q", "--rules", "rules/denylist.yaml",
                         input_bytes=bytes(bad))
        assert res.returncode == 3 and "Traceback" not in res.stderr and "truncated" in res.stderr


def test_a_compressed_file_that_holds_no_capture_is_refused_in_one_line(tmp_path):
    import gzip

    for name, body, words in (("notes.gz", gzip.compress(b"hello, not a capture\n"),
                               "gzip-compressed, but not a pcap or pcapng file"),
                              ("stub.gz", gzip.compress(FRAME * 20)[:12], "gzip stream ends mid-frame")):
        f = tmp_path / name
        f.write_bytes(body)
        r = run_detector("replay", "pcap", str(f), "-q", "--rules", "rules/denylist.yaml")
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr
