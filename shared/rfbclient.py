"""A small asyncio RFB (VNC) viewer: enough to look at a screen and touch it.

For tests, benchmarks and the engineer CLI: the RFB 3.8 handshake (3.7 and
3.3 too) with security type None, ServerInit (size, pixel format, name), a
full framebuffer update in Raw encoding read as 32-bit RGB pixels, and
PointerEvent, KeyEvent and ClientCutText to send. It works over any byte
streams with `readexactly` and `write` (asyncio streams, or the reader and
writer of an SSH channel), so it reads the same bytes a browser would.

    viewer = RfbClient(reader, writer)
    init = await viewer.handshake()
    screen = await viewer.screenshot()
    screen.pixel(10, 10)            # (255, 0, 0)
    viewer.pointer(100, 200)        # move the pointer there, no button
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, field
from typing import Protocol

from shared import rfb


class RfbClientError(Exception):
    """The server refused us or spoke something this viewer does not understand."""


class Reader(Protocol):
    async def readexactly(self, n: int, /) -> bytes: ...


class Writer(Protocol):
    def write(self, data: bytes, /) -> None: ...


# 32 bits per pixel, little-endian, red in the low byte: bytes R, G, B, X
RGBX = rfb.PixelFormat(32, 24, False, True, 255, 255, 255, 0, 8, 16)


@dataclass(frozen=True)
class ServerInit:
    width: int
    height: int
    pixel_format: rfb.PixelFormat
    name: str
    security: int  # the security type used
    version: str  # the ProtocolVersion the server sent


@dataclass
class Framebuffer:
    """The screen as last received: RGBX bytes, row by row."""

    width: int
    height: int
    data: bytearray = field(default_factory=bytearray)

    def __post_init__(self) -> None:
        if not self.data:
            self.data = bytearray(self.width * self.height * 4)

    def pixel(self, x: int, y: int) -> tuple[int, int, int]:
        at = (y * self.width + x) * 4
        r, g, b = self.data[at : at + 3]
        return r, g, b

    def paste(self, x: int, y: int, w: int, h: int, pixels: bytes) -> None:
        for row in range(h):
            if y + row >= self.height:
                break
            src = pixels[row * w * 4 : (row + 1) * w * 4]
            at = ((y + row) * self.width + x) * 4
            room = max(0, min(w, self.width - x)) * 4
            self.data[at : at + room] = src[:room]


class RfbClient:
    """One viewer on one RFB stream (see the module docstring)."""

    def __init__(self, reader: Reader, writer: Writer) -> None:
        self._reader = reader
        self._writer = writer
        self.init: ServerInit | None = None
        self.framebuffer: Framebuffer | None = None
        self.cut_texts: list[bytes] = []  # ServerCutText received
        self.bells = 0

    async def _read(self, n: int) -> bytes:
        try:
            return await self._reader.readexactly(n)
        except asyncio.IncompleteReadError as exc:
            raise RfbClientError(
                f"the stream ended after {len(exc.partial)} of {n} bytes"
            ) from None

    async def handshake(self, *, shared: bool = True, timeout: float = 15.0) -> ServerInit:
        """ProtocolVersion, security None, ClientInit; returns the ServerInit."""
        async with asyncio.timeout(timeout):
            return await self._handshake(shared)

    async def _reason(self) -> str:
        size = struct.unpack(">I", await self._read(4))[0]
        return (await self._read(min(size, rfb.MAX_REASON))).decode(errors="replace")

    async def _handshake(self, shared: bool) -> ServerInit:
        version = await self._read(12)
        if not version.startswith(b"RFB 003."):
            raise RfbClientError(f"not an RFB server: {version!r}")
        minor = int(version[8:11])
        minor = 8 if minor >= 8 else (7 if minor == 7 else 3)
        self._writer.write(b"RFB 003.%03d\n" % minor)
        if minor == 3:
            security = struct.unpack(">I", await self._read(4))[0]
            if security == 0:
                raise RfbClientError(f"the server refused: {await self._reason()}")
        else:
            count = (await self._read(1))[0]
            if count == 0:
                raise RfbClientError(f"the server refused: {await self._reason()}")
            offered = await self._read(count)
            if rfb.SECURITY_NONE not in offered:
                raise RfbClientError(f"the server wants a password (offers {list(offered)})")
            security = rfb.SECURITY_NONE
            self._writer.write(bytes([security]))
        if security != rfb.SECURITY_NONE:
            raise RfbClientError(f"the server wants security type {security}")
        if minor == 8:
            result = struct.unpack(">I", await self._read(4))[0]
            if result != 0:
                raise RfbClientError(f"the server refused: {await self._reason()}")
        self._writer.write(bytes([int(shared)]))
        head = await self._read(24)
        width, height = struct.unpack(">HH", head[:4])
        pixel_format = rfb.PixelFormat.parse(head[4:20])
        name_len = struct.unpack(">I", head[20:24])[0]
        name = (await self._read(name_len)).decode(errors="replace")
        self.init = ServerInit(
            width, height, pixel_format, name, security, version.decode().strip()
        )
        self.framebuffer = Framebuffer(width, height)
        # from now on: 32-bit RGBX pixels, Raw only (and size changes)
        self._writer.write(struct.pack(">Bxxx", rfb.SET_PIXEL_FORMAT) + RGBX.pack())
        encodings = (rfb.RAW, rfb.DESKTOP_SIZE)
        self._writer.write(struct.pack(f">BxH{len(encodings)}i", 2, len(encodings), *encodings))
        return self.init

    # --- looking --------------------------------------------------------------------------

    def request(self, *, incremental: bool = False) -> None:
        """FramebufferUpdateRequest for the whole screen."""
        fb = self.framebuffer
        assert fb is not None, "handshake first"
        self._writer.write(
            struct.pack(
                ">BBHHHH",
                rfb.FRAMEBUFFER_UPDATE_REQUEST,
                int(incremental),
                0,
                0,
                fb.width,
                fb.height,
            )
        )

    async def screenshot(self, timeout: float = 15.0) -> Framebuffer:
        """Ask for the whole screen and read updates until all of it came."""
        self.request()
        async with asyncio.timeout(timeout):
            covered = 0
            fb = self.framebuffer
            assert fb is not None
            while covered < fb.width * fb.height:
                covered += await self.next_update()
                fb = self.framebuffer
                assert fb is not None
        return fb

    async def next_update(self) -> int:
        """Read server messages up to and including the next FramebufferUpdate;
        returns how many pixels it covered."""
        while True:
            kind = (await self._read(1))[0]
            if kind == rfb.FRAMEBUFFER_UPDATE:
                return await self._update()
            if kind == rfb.SET_COLOUR_MAP_ENTRIES:
                head = await self._read(5)
                await self._read(6 * struct.unpack(">H", head[3:5])[0])
            elif kind == rfb.BELL:
                self.bells += 1
            elif kind == rfb.SERVER_CUT_TEXT:
                head = await self._read(7)
                self.cut_texts.append(await self._read(struct.unpack(">I", head[3:7])[0]))
            else:
                raise RfbClientError(f"unexpected message type {kind} from the server")

    async def _update(self) -> int:
        count = struct.unpack(">xH", await self._read(3))[0]
        covered = 0
        for _ in range(count):
            x, y, w, h, encoding = struct.unpack(">HHHHi", await self._read(12))
            if encoding == rfb.RAW:
                pixels = await self._read(w * h * 4)
                assert self.framebuffer is not None
                self.framebuffer.paste(x, y, w, h, pixels)
                covered += w * h
            elif encoding == rfb.DESKTOP_SIZE:
                self.framebuffer = Framebuffer(w, h)
                covered = 0
            elif encoding == rfb.LAST_RECT:
                break
            else:
                raise RfbClientError(f"unexpected encoding {encoding} from the server")
        return covered

    # --- touching ---------------------------------------------------------------------------

    def pointer(self, x: int, y: int, buttons: int = 0) -> None:
        self._writer.write(rfb.pointer_event(x, y, buttons))

    def key(self, keysym: int, down: bool) -> None:
        self._writer.write(rfb.key_event(keysym, down))

    def cut_text(self, text: bytes) -> None:
        self._writer.write(struct.pack(">BxxxI", rfb.CLIENT_CUT_TEXT, len(text)) + text)
