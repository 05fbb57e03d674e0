"""The simulator's side of the RCT wire protocol: building answers fast and splitting a client's byte stream.

rctclient's `make_frame` and `ReceiveFrame` work byte by byte in Python (CRC16 even bit by bit), which would cap the
simulator at a few thousand answers per second before it did anything else. The hot paths here do the same work
with C-level primitives instead: `binascii.crc_hqx` is the same CRC-CCITT (polynomial 0x1021, start 0xFFFF) that
rctclient computes, and escaping is two `bytes.replace` calls. A test holds both against rctclient byte for byte.

Requests take a fast path too: every READ frame a client can send for a registry object is built once with
rctclient's `make_frame` and looked up whole. Anything else (WRITE frames, unknown ids, garbage) goes through
rctclient's `ReceiveFrame`, which is slow but rare.
"""

from __future__ import annotations

import binascii
import struct
from typing import NamedTuple

from rctclient.exceptions import FrameCRCMismatch, FrameLengthExceeded, InvalidCommand
from rctclient.frame import ReceiveFrame, make_frame
from rctclient.registry import REGISTRY
from rctclient.types import Command

START = 0x2B  # "+"
ESCAPE = 0x2D  # "-"
#: Real inverters put one 0x00 byte in front of every answer (shared fixtures); clients must skip it.
ANSWER_PREFIX = b"\x00"
#: The length byte of a RESPONSE counts the 4-byte id plus the payload; beyond this LONG_RESPONSE is needed.
MAX_SHORT_PAYLOAD = 0xFF - 4
#: A client frame still incomplete after this many bytes is garbage that claimed an absurd length.
MAX_PENDING = 70_000

_SHORT_HEADER = struct.Struct(">BBI")
_LONG_HEADER = struct.Struct(">BHI")


def crc16(data: bytes) -> int:
    """Return the frame checksum exactly as rctclient's CRC16 computes it (odd lengths padded with 0x00)."""
    if len(data) & 1:
        data += b"\x00"
    return binascii.crc_hqx(data, 0xFFFF)


def escape(body: bytes) -> bytes:
    """Return `body` with every start and escape byte escaped, as it goes on the wire after the start byte."""
    return body.replace(b"-", b"--").replace(b"+", b"-+")


def response_frame(object_id: int, payload: bytes) -> bytes:
    """Return the RESPONSE (or, for payloads over 251 bytes, LONG_RESPONSE) frame that make_frame would build."""
    if len(payload) <= MAX_SHORT_PAYLOAD:
        body = _SHORT_HEADER.pack(Command.RESPONSE, 4 + len(payload), object_id) + payload
    else:
        body = _LONG_HEADER.pack(Command.LONG_RESPONSE, 4 + len(payload), object_id) + payload
    return b"+" + escape(body + crc16(body).to_bytes(2, "big"))


def _read_frames() -> dict[bytes, int]:
    return {make_frame(Command.READ, info.object_id): info.object_id for info in REGISTRY.all()}


#: Every READ frame for a registry object, as clients send it, mapped to its object id.
READ_FRAMES: dict[bytes, int] = _read_frames()
#: The lengths those frames have (9 bytes, more when the id or checksum contains bytes that need escaping).
_READ_LENGTHS: frozenset[int] = frozenset(len(frame) for frame in READ_FRAMES)
_SORTED_READ_LENGTHS = tuple(sorted(_READ_LENGTHS))


class Request(NamedTuple):
    """One frame a client sent: its command, object id, payload (empty for READ) and raw bytes."""

    command: int
    object_id: int
    payload: bytes
    raw: bytes


class RequestParser:
    """Split a client's byte stream into frames, skipping garbage and resynchronising at the next start byte.

    After any failure at a start byte (bad command, CRC mismatch, over-long frame) the search resumes one byte
    after that start byte, so a stray "+" cannot swallow a valid frame that follows it.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.garbage_bytes = 0
        self.bad_frames = 0

    def feed(self, data: bytes) -> list[Request]:
        """Add received bytes and return every complete frame now in the buffer, in order."""
        buf = self._buf
        buf += data
        requests: list[Request] = []
        pos = 0
        size = len(buf)
        while pos < size:
            start = buf.find(b"+", pos)
            if start < 0:
                self.garbage_bytes += size - pos
                pos = size
                break
            self.garbage_bytes += start - pos
            fast = self._fast_read(buf, start, size)
            if fast is not None:
                requests.append(fast)
                pos = start + len(fast.raw)
                continue
            end = self._slow_frame(buf, start, size, requests)
            if end is None:  # incomplete: wait for more bytes
                pos = start
                break
            pos = end
        del buf[:pos]
        return requests

    @staticmethod
    def _fast_read(buf: bytearray, start: int, size: int) -> Request | None:
        if start + 1 >= size or buf[start + 1] != Command.READ:
            return None
        for length in _SORTED_READ_LENGTHS:
            if start + length > size:
                return None
            raw = bytes(buf[start:start + length])
            object_id = READ_FRAMES.get(raw)
            if object_id is not None:
                return Request(Command.READ, object_id, b"", raw)
        return None

    def _slow_frame(self, buf: bytearray, start: int, size: int, requests: list[Request]) -> int | None:
        """Decode one frame at `start` with rctclient; return where the next search starts, None if incomplete."""
        frame = ReceiveFrame()
        try:
            consumed = frame.consume(bytes(buf[start:]))
        except (FrameCRCMismatch, InvalidCommand, FrameLengthExceeded):
            self.bad_frames += 1
            self.garbage_bytes += 1
            return start + 1
        if frame.complete():
            requests.append(Request(int(frame.command), frame.id, frame.data, bytes(buf[start:start + consumed])))
            return start + consumed
        # A valid frame never holds an unescaped start byte after its own: one there means this start was garbage
        # (a "--+" is misread as escaped, which only makes us wait longer).
        later = buf.find(b"+", start + 1)
        while later >= 0 and buf[later - 1] == ESCAPE:
            later = buf.find(b"+", later + 1)
        if later >= 0 or size - start > MAX_PENDING:
            self.bad_frames += 1
            self.garbage_bytes += 1
            return start + 1
        return None
