"""The wire format: frames round-trip, unknown fields and oversized lines are refused."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from agent.sampler import Sampler, collect_facts
from shared import protocol as p
from shared.enrolltoken import EnrollToken, TokenFormatError, normalize_fingerprint


def test_health_frame_round_trips_with_load_aliases():
    """A real sample encodes to one JSON line and decodes to the same frame."""
    report = Sampler().sample()
    frame = p.Health(seq=7, sampled_at=datetime.now(UTC), spool_dropped=0, report=report)
    line = p.encode(frame)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert b'"1m"' in line
    assert p.decode_agent_frame(line.strip()) == frame


def test_hello_carries_facts():
    """The hello frame validates with real facts."""
    hello = p.Hello(
        protocol=1, agent_id="ag_x", version="1", facts=collect_facts(), spool_dropped=0
    )
    assert p.decode_agent_frame(p.encode(hello)).facts.hostname == hello.facts.hostname


@pytest.mark.parametrize(
    ("line", "match"),
    [
        (b"not json", "invalid frame"),
        (b'{"type": "health"}', "seq"),
        (b'{"type": "bogus"}', "invalid frame"),
        (b'{"type": "ack", "kind": "health", "seqs": [1]}', "invalid frame"),
    ],
)
def test_bad_agent_frames_are_refused(line, match):
    """Garbage, missing fields, unknown types and HQ-only frames are FrameErrors."""
    with pytest.raises(p.FrameError, match=match):
        p.decode_agent_frame(line)


def test_extra_fields_are_refused():
    """extra="forbid": a frame with an unknown field is rejected."""
    ack = b'{"type": "ack", "kind": "health", "seqs": [1], "evil": true}'
    with pytest.raises(p.FrameError):
        p.decode_hq_frame(ack)


def test_decoder_splits_lines_and_refuses_oversized_ones():
    """FrameDecoder yields complete lines across chunks and caps line length."""
    dec = p.FrameDecoder(limit=10)
    assert dec.feed(b"ab") == []
    assert dec.feed(b"c\nde\n\nf") == [b"abc", b"de"]
    assert dec.feed(b"g\n") == [b"fg"]
    with pytest.raises(p.FrameError):
        dec.feed(b"x" * 11)
    with pytest.raises(p.FrameError):
        p.FrameDecoder(limit=10).feed(b"y" * 20 + b"\n")


def test_enroll_token_round_trip_and_damage():
    """Tokens carry URL and fingerprint; damaged ones are refused clearly."""
    fp = "AB:" * 31 + "AB"
    token = EnrollToken.new("https://hq.example:8443/", fp)
    parsed = EnrollToken.parse(token.encode())
    assert parsed == token and parsed.url == "https://hq.example:8443"
    assert parsed.fingerprint == normalize_fingerprint(fp)
    for bad in ("fl1.x.y", "fl2.a.b", token.encode()[:-30], "nonsense"):
        with pytest.raises(TokenFormatError):
            EnrollToken.parse(bad)
    plain = EnrollToken("http://hq", "a" * 64, "s" * 43).encode()
    with pytest.raises(TokenFormatError, match="https"):
        EnrollToken.parse(plain)
