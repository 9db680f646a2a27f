"""The RFB stream filter (shared/rfb.py), pure: hand-built byte strings fed
whole, split at every byte, and hostile; what passes each way, what is
dropped, what closes the stream."""

from __future__ import annotations

import struct

import pytest

from shared import rfb
from shared.rfb import Output, RfbError, RfbFilter
from shared.rfbclient import RGBX

V38 = b"RFB 003.008\n"
V37 = b"RFB 003.007\n"
V33 = b"RFB 003.003\n"
PF = RGBX.pack()
SERVER_INIT = struct.pack(">HH", 1280, 800) + PF + struct.pack(">I", 5) + b"vm:90"
OK = struct.pack(">I", 0)


def key(sym: int, down: bool) -> bytes:
    return rfb.key_event(sym, down)


def pointer(x: int, y: int, buttons: int = 0) -> bytes:
    return rfb.pointer_event(x, y, buttons)


def client_cut(text: bytes) -> bytes:
    return struct.pack(">BxxxI", 6, len(text)) + text


def server_cut(text: bytes) -> bytes:
    return struct.pack(">BxxxI", 3, len(text)) + text


def fbur(incremental: int = 0) -> bytes:
    return struct.pack(">BBHHHH", 3, incremental, 0, 0, 1280, 800)


def encodings(*encs: int) -> bytes:
    return struct.pack(f">BxH{len(encs)}i", 2, len(encs), *encs)


def rect(x: int, y: int, w: int, h: int, enc: int) -> bytes:
    return struct.pack(">HHHHi", x, y, w, h, enc)


def update(*rects: bytes, count: int | None = None) -> bytes:
    n = len(rects) if count is None else count
    return struct.pack(">BxH", 0, n) + b"".join(rects)


def ready(flt: RfbFilter | None = None, **kw: bool) -> RfbFilter:
    """A filter past a 3.8 handshake with security None."""
    flt = flt or RfbFilter(**kw)
    out = flt.from_server(V38)
    assert out.to_client == V38
    out = flt.from_client(V38)
    assert out.to_server == V38
    assert flt.from_server(b"\x01\x01").to_client == b"\x01\x01"
    assert flt.from_client(b"\x01").to_server == b"\x01"
    assert flt.from_server(OK).to_client == OK
    assert flt.from_client(b"\x01").to_server == b"\x01"  # ClientInit, shared
    out = flt.from_server(SERVER_INIT)
    assert out.to_client == SERVER_INIT
    assert [e.kind for e in out.events] == ["ready"]
    assert flt.ready and (flt.width, flt.height) == (1280, 800)
    return flt


def kinds(out: Output) -> list[str]:
    return [e.kind for e in out.events]


# --- input ------------------------------------------------------------------------------


def test_view_only_drops_keys_and_pointer_and_passes_the_rest():
    """Without control, KeyEvent and PointerEvent never reach the server;
    update requests and pixel formats do, byte for byte."""
    flt = ready()
    stream = fbur() + key(0x61, True) + pointer(10, 20, 1) + key(0x61, False) + fbur(1)
    out = flt.from_client(stream)
    assert out.to_server == fbur() + fbur(1)
    assert kinds(out) == ["key_dropped", "pointer_dropped", "key_dropped"]
    assert out.to_client == b"" and out.close is None


def test_control_passes_input_and_taking_it_back_releases_what_is_held():
    """With control, input passes; taking control back sends the releases of
    the keys and buttons held down, then drops input again."""
    flt = ready(control=True)
    out = flt.from_client(key(0xFFE1, True) + key(0x61, True) + pointer(5, 6, 1))
    assert out.to_server == key(0xFFE1, True) + key(0x61, True) + pointer(5, 6, 1)
    out = flt.set_control(False)
    assert out.to_server == key(0x61, False) + key(0xFFE1, False) + pointer(5, 6, 0)
    assert kinds(flt.from_client(key(0x62, True))) == ["key_dropped"]
    assert flt.set_control(True).to_server == b""
    assert flt.from_client(pointer(1, 1)).to_server == pointer(1, 1)
    # nothing held: taking control back sends nothing
    assert flt.set_control(False).to_server == b""


def test_releases_wait_for_a_message_boundary():
    """Control taken back while a message is half-way through: the releases
    go after it, never inside it."""
    flt = ready(control=True, clipboard=True)
    flt.from_client(key(0x61, True))
    cut = client_cut(b"hello world")
    out = flt.from_client(cut[:6])
    assert out.to_server == b""  # the header is not complete yet
    assert flt.set_control(False).to_server == b""
    out = flt.from_client(cut[6:] + fbur())
    assert out.to_server == cut + key(0x61, False) + fbur()
    assert "released" in kinds(out)


def test_set_desktop_size_needs_control():
    """SetDesktopSize changes the machine's screen: control only."""
    msg = struct.pack(">BxHHBx", 251, 800, 600, 1) + bytes(16)
    flt = ready()
    out = flt.from_client(msg + fbur())
    assert out.to_server == fbur() and kinds(out) == ["desktop_size_dropped"]
    flt.set_control(True)
    assert flt.from_client(msg).to_server == msg


# --- clipboard ----------------------------------------------------------------------------


def test_clipboard_both_ways_only_when_allowed():
    """Cut text passes neither way without `clipboard`; with it, both ways,
    up to MAX_CUT_TEXT. Dropped text leaves the framing intact."""
    flt = ready(control=True)
    out = flt.from_client(client_cut(b"secret") + fbur())
    assert out.to_server == fbur() and kinds(out) == ["client_cut_dropped"]
    out = flt.from_server(server_cut(b"password") + b"\x02")  # then a Bell
    assert out.to_client == b"\x02" and kinds(out) == ["server_cut_dropped"]
    flt.set_clipboard(True)
    assert flt.from_client(client_cut(b"ok")).to_server == client_cut(b"ok")
    assert flt.from_server(server_cut(b"ok")).to_client == server_cut(b"ok")
    big = b"x" * (rfb.MAX_CUT_TEXT + 1)
    out = flt.from_server(server_cut(big) + b"\x02")
    assert out.to_client == b"\x02" and kinds(out) == ["server_cut_dropped"]
    # the extended clipboard format (negative length) was never asked for: dropped
    ext = struct.pack(">Bxxxi", 6, -4) + b"abcd"
    out = flt.from_client(ext + fbur())
    assert out.to_server == fbur() and kinds(out) == ["client_cut_dropped"]


def test_a_dropped_message_streams_away_without_being_held():
    """A large cut text is dropped as it arrives, not buffered whole."""
    flt = ready()
    text = b"y" * (3 * rfb.MAX_PENDING)
    msg = server_cut(text)
    for at in range(0, len(msg), 65536):
        assert flt.from_server(msg[at : at + 65536]).to_client == b""
    assert flt.from_server(b"\x02").to_client == b"\x02"


# --- framing ------------------------------------------------------------------------------


def _updates() -> bytes:
    """One framebuffer update with a rectangle of every measurable encoding."""
    hextile = (
        b"\x01"  # raw tile: 16x16 pixels
        + bytes(16 * 16 * 4)
        + b"\x0e"  # background, foreground, subrects (not coloured)
        + bytes(8)
        + b"\x02"
        + bytes(4)
        + b"\x18"  # subrects, coloured
        + b"\x01"
        + bytes(4 + 2)
        + b"\x00"  # nothing new: same background
    )
    tight = [
        rect(0, 0, 8, 8, rfb.TIGHT) + b"\x80" + b"\xff\x00\x00",  # fill, 3-byte TPIXEL
        rect(0, 0, 8, 8, rfb.TIGHT) + b"\x90" + b"\x85\x01" + bytes(133),  # JPEG, 2-byte length
        rect(0, 0, 2, 1, rfb.TIGHT) + b"\x40\x00" + bytes(6),  # copy filter, 6 < 12 bytes raw
        rect(0, 0, 16, 16, rfb.TIGHT)
        + b"\x40\x01\x01"  # palette of 2
        + bytes(6)
        + b"\x20"  # 32 bytes of bitmap (>= 12): compressed, 1-byte length
        + bytes(32),
        rect(0, 0, 64, 64, rfb.TIGHT) + b"\x00" + b"\x80\x80\x01" + bytes(16384),  # 3 bytes
    ]
    rects = [
        rect(0, 0, 4, 2, rfb.RAW) + bytes(4 * 2 * 4),
        rect(0, 0, 4, 4, rfb.COPY_RECT) + struct.pack(">HH", 10, 10),
        rect(0, 0, 8, 8, rfb.RRE) + struct.pack(">I", 2) + bytes(4) + bytes(2 * 12),
        rect(0, 0, 8, 8, rfb.CORRE) + struct.pack(">I", 1) + bytes(4) + bytes(8),
        rect(0, 0, 64, 16, rfb.HEXTILE) + hextile,
        rect(0, 0, 8, 8, rfb.ZRLE) + struct.pack(">I", 5) + b"zzzzz",
        rect(0, 0, 8, 8, rfb.ZLIB) + struct.pack(">I", 3) + b"zzz",
        *tight,
        rect(0, 0, 9, 2, rfb.CURSOR) + bytes(9 * 2 * 4 + 2 * 2),
        rect(0, 0, 9, 2, rfb.X_CURSOR) + bytes(6 + 2 * 2 * 2),
        rect(0, 0, 0, 0, rfb.X_CURSOR),
        rect(3, 4, 0, 0, rfb.POINTER_POS),
        rect(0, 0, 1024, 768, rfb.EXTENDED_DESKTOP_SIZE) + b"\x01\x00\x00\x00" + bytes(16),
        rect(0, 0, 1280, 800, rfb.DESKTOP_SIZE),
    ]
    colour_map = struct.pack(">BxHH", 1, 0, 2) + bytes(12)
    last = update(
        rect(0, 0, 1, 1, rfb.RAW) + bytes(4), rect(0, 0, 0, 0, rfb.LAST_RECT), count=0xFFFF
    )
    return update(*rects) + colour_map + b"\x02" + last


def test_every_measurable_encoding_passes_intact():
    """An update with a rectangle of every measurable encoding, a colour map, a
    bell and a LastRect update pass exactly; a cut text behind them is still
    found (and dropped), so every length was read right."""
    flt = ready()
    stream = _updates() + server_cut(b"behind") + b"\x02"
    out = flt.from_server(stream)
    assert out.to_client == _updates() + b"\x02"
    assert kinds(out) == ["server_cut_dropped"]
    assert (flt.width, flt.height) == (1280, 800)


def test_every_split_gives_the_same_bytes():
    """Fed one byte at a time, or in odd pieces, both directions give exactly
    what they give fed whole."""
    server = (
        V38
        + b"\x03\x10\x01\x13"  # offers Tight security, None, VeNCrypt
        + OK
        + SERVER_INIT
        + _updates()
        + server_cut(b"dropped")
        + b"\x02"
    )
    client = (
        V38
        + b"\x01"
        + b"\x01"
        + encodings(rfb.TIGHT, rfb.RAW, -314, -258, 0x574D5664, -24)
        + struct.pack(">Bxxx", 0)
        + PF
        + fbur()
        + key(0x61, True)
        + pointer(1, 2, 1)
        + client_cut(b"x" * 100)
        + fbur(1)
    )

    def run(step: int) -> tuple[bytes, bytes, list[str]]:
        flt = RfbFilter(control=True)
        to_server, to_client, events = b"", b"", []
        # the server speaks first; the viewer's bytes follow each server step
        chunks = max(len(server), len(client)) // step + 1
        for i in range(chunks):
            for data, feed in ((server, flt.from_server), (client, flt.from_client)):
                piece = data[i * step : (i + 1) * step]
                if piece:
                    out = feed(piece)
                    to_server += out.to_server
                    to_client += out.to_client
                    events += kinds(out)
        return to_server, to_client, events

    whole = run(10**9)
    assert whole[1].startswith(V38 + b"\x01\x01" + OK)  # only None offered
    assert b"\xff\xff\xfe\xc6" not in whole[0]  # -314 left out of SetEncodings
    assert whole[0].endswith(key(0x61, True) + pointer(1, 2, 1) + fbur(1))
    expected = ["security_removed", "ready", "encodings_removed", "client_cut_dropped"]
    assert sorted(whole[2]) == sorted([*expected, "server_cut_dropped"])
    for step in (1, 2, 3, 7, 13, 64, 1000):
        got = run(step)
        assert got[0] == whole[0] and got[1] == whole[1], step
        assert sorted(got[2]) == sorted(whole[2]), step


@pytest.mark.parametrize("kind", [1, 7, 8, 150, 248, 250, 252, 253, 255])
def test_an_unknown_client_message_closes_the_stream(kind):
    """A message type the filter cannot measure is refused, not guessed at;
    the filter stays refused."""
    flt = ready(control=True)
    with pytest.raises(RfbError, match=f"unknown message type {kind} from the viewer"):
        flt.from_client(fbur() + bytes([kind]) + bytes(20))
    with pytest.raises(RfbError):
        flt.from_client(fbur())
    with pytest.raises(RfbError):
        flt.from_server(b"\x02")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x04", "unknown message type 4 from the VNC server"),
        (b"\xfc", "unknown message type 252 from the VNC server"),
        (update(rect(0, 0, 1, 1, -314)), "encoding -314"),
        (update(rect(0, 0, 1, 1, 15)), "encoding 15"),
        (update(rect(0, 0, 1, 1, rfb.TIGHT) + b"\xa0"), "Tight compression method 10"),
        (update(rect(0, 0, 1, 1, rfb.TIGHT) + b"\x40\x03"), "Tight filter 3"),
    ],
)
def test_what_the_server_may_not_send_closes_the_stream(data, message):
    flt = ready()
    with pytest.raises(RfbError, match=message):
        flt.from_server(data)


def test_set_encodings_is_narrowed_to_what_can_be_measured():
    """Encodings the filter cannot frame never reach the server; quality and
    compression hints do."""
    flt = ready()
    asked = (rfb.TIGHT, 21, rfb.ZRLE, -260, -314, -258, -312, -313, -309, -24, -250, -500, -1)
    out = flt.from_client(encodings(*asked))
    kept = (rfb.TIGHT, rfb.ZRLE, -24, -250, -500)
    assert out.to_server == encodings(*kept)
    assert flt.encodings == kept
    assert out.events == [
        rfb.Event("encodings_removed", "21, -260, -314, -258, -312, -313, -309, -1")
    ]


def test_a_new_pixel_format_sizes_later_rectangles():
    """SetPixelFormat to 16 bits: a Raw rectangle is then 2 bytes a pixel."""
    flt = ready()
    pf16 = rfb.PixelFormat(16, 16, False, True, 31, 63, 31, 11, 5, 0)
    flt.from_client(struct.pack(">Bxxx", 0) + pf16.pack())
    data = update(rect(0, 0, 3, 3, rfb.RAW) + bytes(18)) + b"\x02"
    assert flt.from_server(data).to_client == data


def test_bad_pixel_format_is_refused():
    flt = ready()
    bad = struct.pack(">BBBBHHHBBB3x", 24, 24, 0, 1, 255, 255, 255, 16, 8, 0)
    with pytest.raises(RfbError, match="24 bits per pixel"):
        flt.from_client(struct.pack(">Bxxx", 0) + bad)


# --- the handshake ------------------------------------------------------------------------


def test_security_types_are_narrowed_and_the_choice_checked():
    """The viewer sees only None and VNC password; choosing another is refused."""
    flt = RfbFilter()
    flt.from_server(V38)
    flt.from_client(V38)
    out = flt.from_server(b"\x04\x13\x02\x10\x01")
    assert out.to_client == b"\x02\x02\x01"
    assert out.events == [rfb.Event("security_removed", "19, 16")]
    with pytest.raises(RfbError, match="chose security type 19"):
        flt.from_client(b"\x13")


def test_vnc_password_challenge_and_failure_pass_through():
    """VNC authentication: challenge and answer pass; a failed result with its
    reason reaches the viewer and ends the stream."""
    flt = RfbFilter()
    flt.from_server(V38)
    flt.from_client(V38)
    flt.from_server(b"\x01\x02")
    assert flt.from_client(b"\x02").to_server == b"\x02"
    challenge = bytes(range(16))
    assert flt.from_server(challenge).to_client == challenge
    assert flt.from_client(bytes(16)).to_server == bytes(16)
    failed = struct.pack(">II", 1, 14) + b"wrong password"
    out = flt.from_server(failed)
    assert out.to_client == failed
    assert out.close == "the VNC server refused the viewer's authentication"
    with pytest.raises(RfbError, match="after the stream ended"):
        flt.from_server(b"\x00")


def test_no_passable_security_type_tells_the_viewer_why():
    """A server that offers only encrypted types: the viewer gets RFB's own
    failure with the reason, and the stream ends."""
    flt = RfbFilter()
    flt.from_server(V38)
    flt.from_client(V38)
    out = flt.from_server(b"\x01\x13")
    assert out.to_client[:1] == b"\x00"
    reason = out.to_client[5:].decode()
    assert "no security type Fieldlink can pass" in reason and "offered: 19" in reason
    assert out.close is not None and kinds(out) == ["refused"]


def test_server_refusal_with_reason_passes_and_ends():
    flt = RfbFilter()
    flt.from_server(V38)
    flt.from_client(V38)
    refusal = b"\x00" + struct.pack(">I", 8) + b"too many"
    out = flt.from_server(refusal)
    assert out.to_client == refusal and out.close == "the VNC server refused the connection"


@pytest.mark.parametrize("version", [V33, V37])
def test_older_versions(version):
    """3.3 (the server picks the type, a u32) and 3.7 (no SecurityResult for
    None) frame right up to the first messages."""
    flt = RfbFilter()
    assert flt.from_server(V38).to_client == V38
    assert flt.from_client(version).to_server == version
    if version == V33:
        assert flt.from_server(struct.pack(">I", 1)).to_client == struct.pack(">I", 1)
    else:
        assert flt.from_server(b"\x01\x01").to_client == b"\x01\x01"
        assert flt.from_client(b"\x01").to_server == b"\x01"
    assert flt.from_client(b"\x01").to_server == b"\x01"
    out = flt.from_server(SERVER_INIT + b"\x02")
    assert out.to_client == SERVER_INIT + b"\x02" and flt.ready
    assert flt.from_client(pointer(1, 1)).to_server == b""


def test_a_33_server_demanding_another_type_is_refused_with_a_reason():
    flt = RfbFilter()
    flt.from_server(V33)
    flt.from_client(V33)
    out = flt.from_server(struct.pack(">I", 16))
    assert out.to_client[:4] == struct.pack(">I", 0) and b"security type 16" in out.to_client
    assert out.close is not None


@pytest.mark.parametrize(
    ("server", "client", "message"),
    [
        (b"HTTP/1.1 200", b"", "did not start with an RFB ProtocolVersion"),
        (b"RFB 004.000\n", b"", "speaks RFB 4.0"),
        (V37, V38, "asked for RFB 3.8, above the server's"),
        (V38, b"RFB 00x.008\n", "malformed ProtocolVersion"),
    ],
)
def test_bad_versions_are_refused(server, client, message):
    flt = RfbFilter()

    def both() -> None:
        flt.from_server(server)
        flt.from_client(client)

    with pytest.raises(RfbError, match=message):
        both()


def test_a_viewer_racing_ahead_is_held_and_bounded():
    """Viewer bytes sent before the server got there wait (in order); a viewer
    that sends megabytes ahead is refused."""
    flt = RfbFilter(control=True)
    early = V38 + b"\x01\x01" + key(0x61, True)
    assert flt.from_client(early).to_server == b""
    out = flt.from_server(V38 + b"\x01\x01")
    assert out.to_server == V38 + b"\x01\x01"  # choice and ClientInit, once offered
    out = flt.from_server(OK + SERVER_INIT)
    assert out.to_server == key(0x61, True)  # messages once the server is ready
    flood = RfbFilter()
    flood.from_client(V38)  # then waits for the server, holding what comes
    for _ in range(rfb.MAX_PENDING // 65536):
        flood.from_client(b"\x00" * 65536)
    with pytest.raises(RfbError, match="more than"):
        flood.from_client(b"\x00" * 65536)
