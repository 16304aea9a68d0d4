"""Names from packets reach the terminal as text, never as control sequences:
a DNS label can carry ESC, and `detector top` prints names."""

from __future__ import annotations

from detector.capture.pcapwrite import dns_query, dns_response, eth_ip, udp, write_pcap
from detector.views.text import safe
from tests.conftest import run_detector


def test_safe_shows_every_control_character():
    assert safe("a\x1b[2Jb\x07c\x9bd\u202eef\n") == "a\\x1b[2Jb\\x07c\\x9bd\\u202eef\n"
    assert safe("plain.example.com\n") == "plain.example.com\n"


def test_top_prints_a_process_named_with_escapes_as_text(tmp_path):
    """A local user can name a process "\x1b[2J..." (prctl PR_SET_NAME); the sensor
    publishes that name, and `detector top --kafka` shows it escaped."""
    from detector.broker import EmbeddedBroker
    from detector.events import DnsEvent, ProcessInfo, Question
    from detector.kafkaconf import KafkaConfig
    from detector.sinks.kafka import EventSink

    comm = "\x1b[2J\x1b]0;owned\x07x"
    with EmbeddedBroker(topics={"dns-events": 1, "dns-alerts": 1}) as b:
        sink = EventSink(KafkaConfig(b.bootstrap, spool_dir=str(tmp_path / "spool")))
        for i in range(3):
            sink.write_event(DnsEvent(
                ts=1.0 + i, transport="udp", ip_version=4, src_ip="10.0.0.5", src_port=4000 + i,
                dst_ip="10.0.0.53", dst_port=53, id=i, flags=0x0100, rcode=0,
                questions=[Question(f"h{i}.example.com", 1)], process=ProcessInfo(77, 77, comm, "/x", name=comm),
                entity=f"{comm}[77]"))
        sink.close()
        r = run_detector("top", "--kafka", b.bootstrap, "--once", timeout=120)
    assert r.returncode == 0, r.stderr
    assert "\\x1b[2J\\x1b]0;owned\\x07x" in r.stdout, r.stdout  # shown, escaped
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout


def test_top_prints_an_escape_in_a_query_name_as_text(tmp_path):
    """A label holding ESC and BEL: the decoder presents such bytes as \\DDD (as dig
    does), and nothing raw reaches the terminal."""
    name = "\x1b[2J\x1b]0;pwned\x07.evil.com"
    frames = []
    for i in range(3):
        frames.append((1.0 + i, eth_ip("10.0.0.5", "10.0.0.53", 17, udp(4000 + i, 53, dns_query(i, name)))))
        frames.append((1.001 + i, eth_ip("10.0.0.53", "10.0.0.5", 17, udp(53, 4000 + i, dns_response(i, name)))))
    pcap = tmp_path / "esc.pcap"
    write_pcap(pcap, 1, frames)
    r = run_detector("top", str(pcap), "--rules", "rules/denylist.yaml")
    assert r.returncode == 0, r.stderr
    assert "evil.com" in r.stdout  # the name is shown
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout  # but cannot drive the terminal
