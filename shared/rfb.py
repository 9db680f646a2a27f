"""What may pass between a VNC viewer and a VNC server: an RFB stream filter.

Pure and incremental, no I/O (like aiohttp's HTTP parser): `RfbFilter`
takes the bytes of either direction as they arrive, in pieces of any size,
and returns what to forward each way, plus events saying what it did.
The agent runs one between HQ's desktop channel and the screen's VNC server;
HQ can run one between the browser and the agent.

    flt = RfbFilter(control=False, clipboard=False)
    out = flt.from_server(data)    # out.to_client, out.to_server, out.events, out.close
    out = flt.from_client(data)
    out = flt.set_control(True)    # granted during the session; False releases held keys

What it holds, whatever either side sends:

- input: KeyEvent, PointerEvent and SetDesktopSize from the viewer pass only
  while `control` is on. Taking control back releases the keys and mouse
  buttons the viewer was holding (so no Shift stays down on the machine).
- clipboard: ClientCutText and ServerCutText pass only while `clipboard` is
  on, and at most `MAX_CUT_TEXT` bytes; otherwise they are dropped whole.
- framing: the filter measures every message, so it can never be made to
  read pixel data as a message or the other way round. What it cannot
  measure it refuses (`RfbError`, the stream must be closed): an unknown
  client or server message type, a rectangle in an encoding it does not
  know, a security type other than None (1) or VNC password (2).
- so that a server never uses one, the viewer's SetEncodings is narrowed to
  the encodings the filter can measure (Raw, CopyRect, RRE, CoRRE, Hextile,
  Zlib, Tight, ZRLE and harmless pseudo-encodings), and the security types the
  server offers to None and VNC password (encrypted types would hide the
  messages from the filter). With none left, the viewer gets RFB's own
  failure message with the reason and the stream ends (`Output.close`).

Protocol versions 3.3, 3.7 and 3.8 (and Apple's 3.889, read as 3.8).

Inside, each direction is a generator that yields what it needs next
(`_Need` n bytes, `_Stream` n bytes through or away without buffering them,
`_Wait` for the other direction, `_Emit` bytes, `_Note` an event); `_Direction`
drives it over the bytes received so far.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

MAX_CUT_TEXT = 1024 * 1024  # bytes of clipboard text one message may carry
MAX_PENDING = 4 * 1024 * 1024  # bytes a direction may hold while it waits
MAX_ENCODINGS = 1024  # entries in one SetEncodings
MAX_REASON = 64 * 1024  # bytes of a failure reason or desktop name

SECURITY_NONE = 1
SECURITY_VNC = 2
SECURITY_PASSABLE = (SECURITY_NONE, SECURITY_VNC)

# client -> server message types
SET_PIXEL_FORMAT = 0
SET_ENCODINGS = 2
FRAMEBUFFER_UPDATE_REQUEST = 3
KEY_EVENT = 4
POINTER_EVENT = 5
CLIENT_CUT_TEXT = 6
SET_DESKTOP_SIZE = 251
# server -> client message types
FRAMEBUFFER_UPDATE = 0
SET_COLOUR_MAP_ENTRIES = 1
BELL = 2
SERVER_CUT_TEXT = 3

# encodings (rectangles) and pseudo-encodings the filter can measure
RAW = 0
COPY_RECT = 1
RRE = 2
CORRE = 4
HEXTILE = 5
ZLIB = 6
TIGHT = 7
ZRLE = 16
DESKTOP_SIZE = -223
LAST_RECT = -224
POINTER_POS = -232
CURSOR = -239
X_CURSOR = -240
EXTENDED_DESKTOP_SIZE = -308
MEASURABLE = frozenset(
    {
        RAW,
        COPY_RECT,
        RRE,
        CORRE,
        HEXTILE,
        ZLIB,
        TIGHT,
        ZRLE,
        DESKTOP_SIZE,
        LAST_RECT,
        POINTER_POS,
        CURSOR,
        X_CURSOR,
        EXTENDED_DESKTOP_SIZE,
    }
)
# hints that never make the server send anything new (quality, compression, subsampling)
_HINTS = ((-32, -23), (-256, -247), (-512, -412), (-768, -763))


def measurable(encoding: int) -> bool:
    """Whether the filter can frame what the server sends for `encoding`."""
    return encoding in MEASURABLE or any(lo <= encoding <= hi for lo, hi in _HINTS)


class RfbError(Exception):
    """The stream cannot be filtered safely any more; close it. The message says why."""


@dataclass(frozen=True)
class Event:
    """Something the filter did or saw: `kind` is a snake_case word
    (`key_dropped`, `server_cut_dropped`, `ready`, ...), `detail` says more."""

    kind: str
    detail: str = ""


@dataclass
class Output:
    """What one call produced: bytes for each side, events, and, when the
    stream is over (the server refused the viewer), why."""

    to_server: bytes = b""
    to_client: bytes = b""
    events: list[Event] = field(default_factory=list)
    close: str | None = None

    def __iadd__(self, other: Output) -> Output:
        self.to_server += other.to_server
        self.to_client += other.to_client
        self.events += other.events
        self.close = self.close or other.close
        return self


@dataclass(frozen=True)
class PixelFormat:
    bits_per_pixel: int
    depth: int
    big_endian: bool
    true_colour: bool
    red_max: int
    green_max: int
    blue_max: int
    red_shift: int
    green_shift: int
    blue_shift: int

    @classmethod
    def parse(cls, data: bytes) -> PixelFormat:
        bpp, depth, big, true, rmax, gmax, bmax, rs, gs, bs = struct.unpack(">BBBBHHHBBB3x", data)
        if bpp not in (8, 16, 32):
            raise RfbError(f"a pixel format of {bpp} bits per pixel is not RFB")
        return cls(bpp, depth, bool(big), bool(true), rmax, gmax, bmax, rs, gs, bs)

    def pack(self) -> bytes:
        return struct.pack(
            ">BBBBHHHBBB3x",
            self.bits_per_pixel,
            self.depth,
            int(self.big_endian),
            int(self.true_colour),
            self.red_max,
            self.green_max,
            self.blue_max,
            self.red_shift,
            self.green_shift,
            self.blue_shift,
        )

    @property
    def bytes_per_pixel(self) -> int:
        return self.bits_per_pixel // 8

    @property
    def tight_pixel(self) -> int:
        """Bytes of one pixel in Tight's own data (TPIXEL): 3 for 24-bit colour in 32."""
        if (
            self.bits_per_pixel == 32
            and self.depth == 24
            and self.true_colour
            and (self.red_max, self.green_max, self.blue_max) == (255, 255, 255)
        ):
            return 3
        return self.bytes_per_pixel


# --- what a direction's parser asks for ------------------------------------------------


@dataclass(frozen=True)
class _Need:
    """Exactly n bytes, handed to the parser (forwarded only if it emits them)."""

    n: int


@dataclass(frozen=True)
class _Stream:
    """n bytes straight through (`keep`) or away, without holding them."""

    n: int
    keep: bool = True


@dataclass(frozen=True)
class _Wait:
    """Until the other direction has got far enough."""

    ready: Callable[[], bool]


@dataclass(frozen=True)
class _Emit:
    data: bytes


@dataclass(frozen=True)
class _Note:
    event: Event


@dataclass(frozen=True)
class _Close:
    """The stream is over after what was emitted (a refusal the peer was told)."""

    reason: str


_Op = _Need | _Stream | _Wait | _Emit | _Note | _Close
_Parser = Generator[_Op, bytes, None]


class _Direction:
    """Drives one direction's parser over the bytes received so far."""

    def __init__(self, name: str, parser: _Parser) -> None:
        self.name = name
        self._parser = parser
        self._buf = bytearray()
        self._pos = 0
        self._left = 0  # bytes still to stream, while streaming
        self._keep = True
        self._op: _Op | None = next(parser)
        self.closed: str | None = None

    def feed(self, data: bytes) -> None:
        if self._op is None and data:
            raise RfbError(f"the {self.name} sent data after the stream ended")
        self._buf += data

    def _send(self, value: bytes) -> None:
        try:
            self._op = self._parser.send(value)
        except StopIteration:
            self._op = None

    def run(self, out: bytearray, events: list[Event]) -> bool:
        """Go as far as the bytes allow; True if anything moved."""
        moved = False
        while self._op is not None:
            op = self._op
            if self._left:
                take = min(self._left, len(self._buf) - self._pos)
                if not take:
                    break
                if self._keep:
                    out += memoryview(self._buf)[self._pos : self._pos + take]
                self._pos += take
                self._left -= take
                moved = True
                if not self._left:
                    self._send(b"")
                continue
            if isinstance(op, _Need):
                if len(self._buf) - self._pos < op.n:
                    break
                chunk = bytes(self._buf[self._pos : self._pos + op.n])
                self._pos += op.n
                self._send(chunk)
            elif isinstance(op, _Stream):
                if op.n <= 0:
                    self._send(b"")
                else:
                    self._left, self._keep = op.n, op.keep
            elif isinstance(op, _Wait):
                if not op.ready():
                    break
                self._send(b"")
            elif isinstance(op, _Emit):
                out += op.data
                self._send(b"")
            elif isinstance(op, _Note):
                events.append(op.event)
                self._send(b"")
            else:
                self.closed = op.reason
                self._op = None
            moved = True
        del self._buf[: self._pos]
        self._pos = 0
        if len(self._buf) > MAX_PENDING:
            raise RfbError(f"the {self.name} sent more than {MAX_PENDING} bytes ahead")
        return moved


def _u16(data: bytes, at: int = 0) -> int:
    value: int = struct.unpack_from(">H", data, at)[0]
    return value


def _u32(data: bytes, at: int = 0) -> int:
    value: int = struct.unpack_from(">I", data, at)[0]
    return value


def _s32(data: bytes, at: int = 0) -> int:
    value: int = struct.unpack_from(">i", data, at)[0]
    return value


def _minor(raw: bytes, who: str) -> int:
    """The protocol version a ProtocolVersion message names, as 3, 7 or 8."""
    if len(raw) != 12 or not raw.startswith(b"RFB ") or raw[7:8] != b"." or raw[11:] != b"\n":
        raise RfbError(f"the {who} did not start with an RFB ProtocolVersion")
    try:
        major, minor = int(raw[4:7]), int(raw[8:11])
    except ValueError:
        raise RfbError(f"the {who} sent a malformed ProtocolVersion {raw!r}") from None
    if major != 3:
        raise RfbError(f"the {who} speaks RFB {major}.{minor}, not 3.x")
    if minor >= 8:
        return 8  # 3.8, and Apple's 3.889
    return 7 if minor == 7 else 3


def failure_message(minor: int, reason: str) -> bytes:
    """RFB's own refusal, as a server sends it in place of its security types."""
    text = reason.encode()[:MAX_REASON]
    head = struct.pack(">I", 0) if minor == 3 else b"\x00"
    return head + struct.pack(">I", len(text)) + text


def key_event(keysym: int, down: bool) -> bytes:
    return struct.pack(">BBxxI", KEY_EVENT, int(down), keysym)


def pointer_event(x: int, y: int, buttons: int = 0) -> bytes:
    return struct.pack(">BBHH", POINTER_EVENT, buttons, x, y)


class RfbFilter:
    """One RFB connection's filter (see the module docstring)."""

    def __init__(self, *, control: bool = False, clipboard: bool = False) -> None:
        self._control = control
        self._clipboard = clipboard
        self.server_minor: int | None = None
        self.minor: int | None = None  # the version in use (the viewer's choice)
        self.offered: tuple[int, ...] | None = None  # security types the viewer sees
        self.security: int | None = None
        self.ready = False  # ServerInit seen: normal messages flow
        self.width = 0
        self.height = 0
        self.pixel_format: PixelFormat | None = None
        self.encodings: tuple[int, ...] = ()
        self._keys_down: set[int] = set()
        self._buttons = 0
        self._pointer = (0, 0)
        self._at_boundary = False  # the viewer's stream is between two messages
        self._release = b""  # releases waiting for that boundary
        self._broken: str | None = None
        self._client = _Direction("viewer", self._client_parser())
        self._server = _Direction("VNC server", self._server_parser())

    # --- the interface ------------------------------------------------------------------

    @property
    def control(self) -> bool:
        return self._control

    @property
    def clipboard(self) -> bool:
        return self._clipboard

    def from_client(self, data: bytes) -> Output:
        """Bytes from the viewer (HQ, the engineer)."""
        return self._pump(self._client, data)

    def from_server(self, data: bytes) -> Output:
        """Bytes from the VNC server (the screen)."""
        return self._pump(self._server, data)

    def set_clipboard(self, on: bool) -> None:
        self._clipboard = on

    def set_control(self, on: bool) -> Output:
        """Grant or take back control. Taking it back releases what the viewer
        holds down (keys, buttons), at the next message boundary: now, if the
        viewer's stream is between messages."""
        self._control = on
        if on or not (self._keys_down or self._buttons):
            return Output()
        release = b"".join(key_event(k, False) for k in sorted(self._keys_down))
        if self._buttons:
            release += pointer_event(*self._pointer, 0)
        self._keys_down.clear()
        self._buttons = 0
        if self._at_boundary:
            return Output(to_server=release, events=[Event("released", "held input released")])
        self._release += release
        return Output()

    # --- driving ------------------------------------------------------------------------

    def _pump(self, first: _Direction, data: bytes) -> Output:
        if self._broken is not None:
            raise RfbError(self._broken)
        out = Output()
        to_server, to_client = bytearray(), bytearray()
        try:
            first.feed(data)
            moved = True
            while moved:  # one direction may wait for the other
                moved = self._client.run(to_server, out.events)
                moved = self._server.run(to_client, out.events) or moved
        except RfbError as exc:
            self._broken = str(exc)
            raise
        out.to_server, out.to_client = bytes(to_server), bytes(to_client)
        out.close = self._client.closed or self._server.closed
        return out

    # --- the viewer's side --------------------------------------------------------------

    def _client_parser(self) -> _Parser:
        raw = yield _Need(12)
        minor = _minor(raw, "viewer")
        yield _Wait(lambda: self.server_minor is not None)
        assert self.server_minor is not None
        if minor > self.server_minor:
            raise RfbError(f"the viewer asked for RFB 3.{minor}, above the server's")
        self.minor = minor
        yield _Emit(raw)
        if minor == 3:
            yield _Wait(lambda: self.security is not None)
        else:
            yield _Wait(lambda: self.offered is not None)
            choice = (yield _Need(1))[0]
            if choice not in (self.offered or ()):
                raise RfbError(f"the viewer chose security type {choice}, which was not offered")
            self.security = choice
            yield _Emit(bytes([choice]))
        if self.security == SECURITY_VNC:
            yield _Emit((yield _Need(16)))  # the answer to the password challenge
        yield _Emit((yield _Need(1)))  # ClientInit
        yield _Wait(lambda: self.ready)
        while True:
            if self._release:
                release, self._release = self._release, b""
                yield _Emit(release)
                yield _Note(Event("released", "held input released"))
            self._at_boundary = True
            kind = (yield _Need(1))[0]
            self._at_boundary = False
            yield from self._client_message(kind)

    def _client_message(self, kind: int) -> _Parser:
        if kind == SET_PIXEL_FORMAT:
            body = yield _Need(19)
            self.pixel_format = PixelFormat.parse(body[3:])
            yield _Emit(bytes([kind]) + body)
        elif kind == SET_ENCODINGS:
            head = yield _Need(3)
            count = _u16(head, 1)
            if count > MAX_ENCODINGS:
                raise RfbError(f"SetEncodings with {count} entries")
            asked = struct.unpack(f">{count}i", (yield _Need(4 * count)))
            kept = tuple(e for e in asked if measurable(e))
            self.encodings = kept
            if len(kept) != len(asked):
                removed = ", ".join(str(e) for e in asked if not measurable(e))
                yield _Note(Event("encodings_removed", removed))
            yield _Emit(struct.pack(f">BxH{len(kept)}i", kind, len(kept), *kept))
        elif kind == FRAMEBUFFER_UPDATE_REQUEST:
            yield _Emit(bytes([kind]) + (yield _Need(9)))
        elif kind == KEY_EVENT:
            body = yield _Need(7)
            if self._control:
                keysym = _u32(body, 3)
                if body[0]:
                    self._keys_down.add(keysym)
                else:
                    self._keys_down.discard(keysym)
                yield _Emit(bytes([kind]) + body)
            else:
                yield _Note(Event("key_dropped", "view only"))
        elif kind == POINTER_EVENT:
            body = yield _Need(5)
            if self._control:
                self._buttons = body[0]
                self._pointer = (_u16(body, 1), _u16(body, 3))
                yield _Emit(bytes([kind]) + body)
            else:
                yield _Note(Event("pointer_dropped", "view only"))
        elif kind == CLIENT_CUT_TEXT:
            yield from self._cut_text(kind, "client_cut_dropped")
        elif kind == SET_DESKTOP_SIZE:
            head = yield _Need(7)
            screens = yield _Need(16 * head[5])
            if self._control:
                yield _Emit(bytes([kind]) + head + screens)
            else:
                yield _Note(Event("desktop_size_dropped", "view only"))
        else:
            raise RfbError(f"unknown message type {kind} from the viewer")

    def _cut_text(self, kind: int, dropped: str) -> _Parser:
        """ClientCutText or ServerCutText: through whole, or away whole."""
        head = yield _Need(7)
        length = _s32(head, 3)
        if length < 0:  # the extended clipboard format, never asked for here
            yield _Stream(-length, keep=False)
            yield _Note(Event(dropped, "extended clipboard format"))
        elif self._clipboard and length <= MAX_CUT_TEXT:
            yield _Emit(bytes([kind]) + head)
            yield _Stream(length)
        else:
            yield _Stream(length, keep=False)
            why = "clipboard not allowed" if not self._clipboard else f"{length} bytes"
            yield _Note(Event(dropped, why))

    # --- the server's side ----------------------------------------------------------------

    def _server_parser(self) -> _Parser:
        raw = yield _Need(12)
        self.server_minor = _minor(raw, "VNC server")
        yield _Emit(raw)
        yield _Wait(lambda: self.minor is not None)
        minor = self.minor
        assert minor is not None
        if minor == 3:
            chosen = _u32((yield _Need(4)))
            if chosen == 0:
                yield from self._refused(struct.pack(">I", 0))
                return
            if chosen not in SECURITY_PASSABLE:
                reason = (
                    f"the VNC server requires security type {chosen}; Fieldlink passes only "
                    "None or VNC password, so that it can see what the viewer sends"
                )
                yield _Emit(failure_message(minor, reason))
                yield _Note(Event("refused", reason))
                yield _Close(reason)
                return
            self.offered, self.security = (chosen,), chosen
            yield _Emit(struct.pack(">I", chosen))
        else:
            count = (yield _Need(1))[0]
            if count == 0:
                yield from self._refused(b"\x00")
                return
            types = tuple((yield _Need(count)))
            kept = tuple(t for t in types if t in SECURITY_PASSABLE)
            if not kept:
                reason = (
                    "the VNC server offers no security type Fieldlink can pass (offered: "
                    f"{', '.join(map(str, types))}; needs None (1) or VNC password (2))"
                )
                yield _Emit(failure_message(minor, reason))
                yield _Note(Event("refused", reason))
                yield _Close(reason)
                return
            if kept != types:
                removed = ", ".join(str(t) for t in types if t not in kept)
                yield _Note(Event("security_removed", removed))
            self.offered = kept
            yield _Emit(bytes([len(kept)]) + bytes(kept))
            yield _Wait(lambda: self.security is not None)
        if self.security == SECURITY_VNC:
            yield _Emit((yield _Need(16)))  # the challenge
        if self.security == SECURITY_VNC or minor == 8:
            result = yield _Need(4)
            yield _Emit(result)
            if _u32(result) != 0:
                if minor == 8:
                    yield from self._reason()
                yield _Note(Event("security_failed", "the VNC server refused the viewer"))
                yield _Close("the VNC server refused the viewer's authentication")
                return
        init = yield _Need(24)
        self.width, self.height = _u16(init), _u16(init, 2)
        self.pixel_format = PixelFormat.parse(init[4:20])
        name = _u32(init, 20)
        if name > MAX_REASON:
            raise RfbError(f"a desktop name of {name} bytes")
        yield _Emit(init)
        yield _Stream(name)
        self.ready = True
        yield _Note(Event("ready", f"{self.width}x{self.height}"))
        while True:
            kind = (yield _Need(1))[0]
            yield from self._server_message(kind)

    def _reason(self) -> _Parser:
        size = _u32((yield _Need(4)))
        if size > MAX_REASON:
            raise RfbError(f"a failure reason of {size} bytes")
        text = yield _Need(size)
        yield _Emit(struct.pack(">I", size) + text)
        yield _Note(Event("server_reason", text.decode(errors="replace")))

    def _refused(self, head: bytes) -> _Parser:
        """The server refuses the viewer outright, with a reason: pass it on, end."""
        yield _Emit(head)
        yield from self._reason()
        yield _Close("the VNC server refused the connection")

    def _server_message(self, kind: int) -> _Parser:
        if kind == FRAMEBUFFER_UPDATE:
            head = yield _Need(3)
            yield _Emit(bytes([kind]) + head)
            count = _u16(head, 1)
            done = 0
            while done < count:
                rect = yield _Need(12)
                yield _Emit(rect)
                width, height = _u16(rect, 4), _u16(rect, 6)
                encoding = _s32(rect, 8)
                if encoding == LAST_RECT:
                    break
                yield from self._rectangle(encoding, width, height)
                done += 1
        elif kind == SET_COLOUR_MAP_ENTRIES:
            head = yield _Need(5)
            yield _Emit(bytes([kind]) + head)
            yield _Stream(6 * _u16(head, 3))
        elif kind == BELL:
            yield _Emit(bytes([kind]))
        elif kind == SERVER_CUT_TEXT:
            yield from self._cut_text(kind, "server_cut_dropped")
        else:
            raise RfbError(f"unknown message type {kind} from the VNC server")

    def _rectangle(self, encoding: int, width: int, height: int) -> _Parser:
        pf = self.pixel_format
        assert pf is not None
        bpp = pf.bytes_per_pixel
        if encoding == RAW:
            yield _Stream(width * height * bpp)
        elif encoding == COPY_RECT:
            yield _Stream(4)
        elif encoding in (RRE, CORRE):
            head = yield _Need(4 + bpp)
            yield _Emit(head)
            yield _Stream(_u32(head) * (bpp + (8 if encoding == RRE else 4)))
        elif encoding == HEXTILE:
            yield from self._hextile(width, height, bpp)
        elif encoding in (ZLIB, ZRLE):
            head = yield _Need(4)
            yield _Emit(head)
            yield _Stream(_u32(head))
        elif encoding == TIGHT:
            yield from self._tight(width, height, pf.tight_pixel)
        elif encoding == CURSOR:
            yield _Stream(width * height * bpp + (width + 7) // 8 * height)
        elif encoding == X_CURSOR:
            yield _Stream(6 + 2 * ((width + 7) // 8) * height if width * height else 0)
        elif encoding == DESKTOP_SIZE:
            self.width, self.height = width, height
        elif encoding == EXTENDED_DESKTOP_SIZE:
            head = yield _Need(4)
            yield _Emit(head)
            yield _Stream(16 * head[0])
            self.width, self.height = width, height
        elif encoding == POINTER_POS:
            pass
        else:
            raise RfbError(
                f"the VNC server used encoding {encoding}, which the filter cannot measure"
            )

    def _hextile(self, width: int, height: int, bpp: int) -> _Parser:
        for ty in range(0, height, 16):
            th = min(16, height - ty)
            for tx in range(0, width, 16):
                tw = min(16, width - tx)
                sub = (yield _Need(1))[0]
                yield _Emit(bytes([sub]))
                if sub & 1:  # raw tile
                    yield _Stream(tw * th * bpp)
                    continue
                colours = bpp * (bool(sub & 2) + bool(sub & 4))
                if colours:
                    yield _Stream(colours)
                if sub & 8:  # subrectangles, coloured or not
                    count = (yield _Need(1))[0]
                    yield _Emit(bytes([count]))
                    yield _Stream(count * ((bpp if sub & 16 else 0) + 2))

    def _compact_length(self) -> Generator[_Op, bytes, int]:
        """Tight's 1-3 byte length, passed on as read."""
        value = 0
        for shift in (0, 7, 14):
            byte = (yield _Need(1))[0]
            yield _Emit(bytes([byte]))
            if shift == 14:
                return value | byte << 14
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
        return value

    def _tight(self, width: int, height: int, tpixel: int) -> _Parser:
        control = (yield _Need(1))[0]
        yield _Emit(bytes([control]))
        method = control >> 4
        if method == 8:  # fill
            yield _Stream(tpixel)
            return
        if method == 9:  # JPEG
            yield _Stream((yield from self._compact_length()))
            return
        if method > 9:
            raise RfbError(f"Tight compression method {method} is not measurable here")
        filter_id = 0
        if method & 4:
            filter_id = (yield _Need(1))[0]
            yield _Emit(bytes([filter_id]))
        if filter_id == 1:  # palette
            colours = (yield _Need(1))[0] + 1
            yield _Emit(bytes([colours - 1]))
            yield _Stream(colours * tpixel)
            size = (width + 7) // 8 * height if colours == 2 else width * height
        elif filter_id in (0, 2):  # copy, gradient
            size = width * height * tpixel
        else:
            raise RfbError(f"Tight filter {filter_id} is not RFB")
        if size < 12:  # too small to compress: sent as is
            yield _Stream(size)
        else:
            yield _Stream((yield from self._compact_length()))
