"""Split the inverter's byte stream into answers, and decode their values.

The stream is not clean. The inverter's network bridge copies every frame to every TCP client, so while the
vendor's app is connected rctmon also sees its requests echoed, its `AT+\\r` and extension commands, answers it never
asked for, plant frames, and bytes lost or corrupted on the way. Real inverters put a 0x00 byte in front of each
frame. The framer therefore never trusts a start byte: it checks each candidate frame completely (command, length,
escaping, CRC, object id) and, when a candidate fails, searches again from the byte after that candidate's start
byte, so a real frame that garbage hid is still found. Each kind of rejection is counted.

Wire format (rctclient `make_frame`): `+`, command, length (1 byte, 2 for long commands), [4-byte address for
plant frames], 4-byte object id, payload, CRC16 over command..payload. After the start byte every `+` and `-` is
escaped by a preceding `-`, so an unescaped `+` inside a frame means the frame was cut short.

Hot path: `bytes.find` locates start and escape bytes and `binascii.crc_hqx` (the same CRC-CCITT that rctclient's
bit-by-bit `CRC16` computes) checks the sum, so the per-byte work stays in C.
"""

from __future__ import annotations

import binascii
import heapq
import logging
import math
from dataclasses import dataclass
from typing import Callable, Union
from collections.abc import Container, Mapping

from rctclient.registry import REGISTRY
from rctclient.types import Command, DataType
from rctclient.utils import decode_value

from rctmon.catalog import ABSURD_MAGNITUDE

frame_log = logging.getLogger("rctmon.frames")

START = b"+"
ESCAPE = b"-"
_LOG_BYTES = 64  # bytes of a skipped frame shown with --frame-debug
_CRC_INIT = 0xFFFF
_ID_SIZE = 4
_ADDRESS_SIZE = 4
_CRC_SIZE = 2
#: Largest length field accepted. Long answers (logger time series) are a few hundred bytes; anything beyond this
#: is a corrupted length byte, and waiting for that many bytes would only delay the frames behind it.
MAX_LENGTH = 4096

#: Error kinds, as counted in `CollectorStats.decode_errors` and exported as `rctmon_decode_errors_total{kind}`.
GARBAGE = "garbage"  # bytes between frames that are no frame (NUL prefixes excepted)
CRC = "crc"  # checksum mismatch
TRUNCATED = "truncated"  # a frame cut short: the next frame started before this one ended
ABSURD_LENGTH = "absurd_length"  # a length field no real frame has
UNKNOWN_OBJECT = "unknown_object"  # valid frame for an object id rctclient does not know
PLANT_FRAME = "plant_frame"  # valid frame addressed to a plant member
NOT_RESPONSE = "not_response"  # valid frame that is no answer: echoed requests, writes, AT+, extension commands
BAD_PAYLOAD = "bad_payload"  # an answer whose payload does not decode as the object's type
ABSURD_VALUE = "absurd_value"  # NaN, infinity or an impossible magnitude
#: Every kind, in the order above: the exporter shows each at 0 from the first scrape, so rate() sees the first error.
DECODE_ERROR_KINDS: tuple[str, ...] = (GARBAGE, CRC, TRUNCATED, ABSURD_LENGTH, UNKNOWN_OBJECT, PLANT_FRAME,
                                       NOT_RESPONSE, BAD_PAYLOAD, ABSURD_VALUE)

#: Noise the vendor's app sends that has no frame structure at all, recognised around its start byte.
_NOISE_SIGNATURES: tuple[tuple[bytes, str], ...] = ((b"AT+\r", NOT_RESPONSE),)


@dataclass(frozen=True)
class _CommandInfo:
    long: bool  # two-byte length field
    plant: bool  # four-byte address before the object id
    reject: str | None  # error kind for a valid frame of this command; None: an answer we take
    parsable: bool = True  # False: no known layout after the command byte (extension commands)


def _command_table() -> dict[int, _CommandInfo]:
    """Describe every command byte rctclient knows; bytes absent from the table cannot start a frame."""
    answers = (Command.RESPONSE, Command.LONG_RESPONSE)
    table: dict[int, _CommandInfo] = {}
    for command in Command:
        if command is Command._NONE:
            continue
        plant = Command.is_plant(command) and command is not Command.EXTENSION
        reject = None if command in answers else (PLANT_FRAME if plant else NOT_RESPONSE)
        table[int(command)] = _CommandInfo(Command.is_long(command), plant, reject,
                                           parsable=command is not Command.EXTENSION)
    return table


_COMMANDS = _command_table()
#: Every object id rctclient knows, with the type its answers carry.
RESPONSE_TYPES: Mapping[int, DataType] = {info.object_id: info.response_data_type for info in REGISTRY.all()}


def crc16(data: bytes | bytearray) -> int:
    """Return rctclient's CRC16 of `data` (odd lengths padded with a zero byte), computed in C."""
    if len(data) & 1:
        return binascii.crc_hqx(bytes(data) + b"\x00", _CRC_INIT)
    return binascii.crc_hqx(data, _CRC_INIT)


_PARTIAL = "partial"


def _noise_at(buf: bytearray, start: int, floor: int) -> tuple[str, int, int] | None:
    """Return (kind, begin, end) when the start byte at `start` belongs to known non-frame noise such as `AT+\\r`.

    The kind is _PARTIAL when the buffer ends inside the noise: its bytes are kept until the rest arrives.
    """
    for signature, kind in _NOISE_SIGNATURES:
        begin = start - signature.index(START)
        if begin < floor:
            continue
        if buf.startswith(signature, begin):
            return kind, begin, begin + len(signature)
        if len(buf) - begin < len(signature) and signature.startswith(bytes(buf[begin:])):
            return _PARTIAL, begin, len(buf)
    return None


def _noise_head(buf: bytearray, floor: int) -> int:
    """Return how many bytes at the end of `buf` may begin noise whose start byte has not arrived yet."""
    for signature, _ in _NOISE_SIGNATURES:
        head = signature[:signature.index(START)]
        for size in range(len(head), 0, -1):
            if len(buf) - size >= floor and buf.endswith(head[:size]):
                return size
    return 0


#: Outcomes of parsing at one start byte.
_OK, _REJECT, _INCOMPLETE, _NO_FRAME = range(4)
Frame = tuple[int, bytes]  # (object id, payload)


class _Candidate:
    """The frame that may begin at one start byte, read as far as the bytes have come.

    Kept across `feed` calls and read on from where it stopped, so that a frame arriving a byte at a time costs what
    it costs in one piece (issue 11: re-reading an escaped 8 KB frame from its start on every byte took 21 s of CPU).
    Positions are offsets in the whole stream, not in the buffer, whose front is cut away as frames are taken.
    """

    __slots__ = ("start", "pos", "data", "need", "header", "outcome", "result", "end", "ready_at")

    def __init__(self, start: int) -> None:
        self.start = start
        self.pos = start + 1  # the next byte to read
        self.data = bytearray()  # unescaped bytes read: command, length, [address], object id, payload, CRC
        self.header = 0  # size of command + length field; 0 until the command byte is known
        self.need = 0  # unescaped bytes to read in all: the header's, then the whole frame's once the length is known
        self.outcome = _INCOMPLETE
        self.result: Frame | str | None = None  # the frame (_OK) or the error kind (_REJECT)
        self.end = start  # after the frame (or as far as the rejection needed to look)
        self.ready_at = start + 2  # the stream must be this long before reading on can finish the frame

    def _finish(self, outcome: int, result: Frame | str | None, end: int) -> None:
        self.outcome, self.result, self.end = outcome, result, end
        self.data = bytearray()

    def advance(self, buf: bytearray, base: int, known: Container[int]) -> int:
        """Read on in `buf` (whose first byte is at stream offset `base`); return how many bytes were examined."""
        size = len(buf)
        if not self.header:
            at = self.start + 1 - base
            if at >= size:
                return 0
            info = _COMMANDS.get(buf[at])
            if info is None:  # a "+" followed by no command: part of the garbage around it
                self._finish(_NO_FRAME, None, self.start)
            elif not info.parsable:
                self._finish(_REJECT, NOT_RESPONSE, self.start + 2)
            else:
                self.header = self.need = 3 if info.long else 2
            if not self.header:
                return 1
        data = self.data
        pos = begin = self.pos - base
        while True:
            # Unescape up to `need` bytes, as rctclient does: an escaped byte is taken literally, whatever it is.
            limit = min(pos + self.need - len(data), size)
            escape = buf.find(ESCAPE, pos, limit)
            if buf.find(START, pos, escape if escape >= 0 else limit) >= 0:
                self._finish(_REJECT, TRUNCATED, self.start + 1)
                return size - begin if escape < 0 else escape - begin
            if escape < 0:
                data += buf[pos:limit]
                pos = limit
            else:
                data += buf[pos:escape]
                if escape + 1 >= size:
                    pos = escape
                    break
                data.append(buf[escape + 1])
                pos = escape + 2
            if len(data) < self.need:
                if pos >= size:
                    break
                continue
            if self.need == self.header:
                length = int.from_bytes(data[1:], "big")
                info = _COMMANDS[data[0]]
                minimum = _ID_SIZE + (_ADDRESS_SIZE if info.plant else 0)
                if not minimum <= length <= MAX_LENGTH:
                    self._finish(_REJECT, ABSURD_LENGTH, base + pos)
                    return pos - begin
                self.need = self.header + length + _CRC_SIZE
                continue
            self._complete(base + pos, known)
            return pos - begin
        self.pos = base + pos
        self.ready_at = self.pos + self.need - len(data)
        return pos - begin

    def _complete(self, end: int, known: Container[int]) -> None:
        data, header = self.data, self.header
        length = len(data) - header - _CRC_SIZE
        if crc16(data[:header + length]) != int.from_bytes(data[header + length:], "big"):
            self._finish(_REJECT, CRC, end)
            return
        reject = _COMMANDS[data[0]].reject
        if reject is not None:
            self._finish(_REJECT, reject, end)
            return
        object_id = int.from_bytes(data[header:header + _ID_SIZE], "big")
        if object_id not in known:
            self._finish(_REJECT, UNKNOWN_OBJECT, end)
            return
        self._finish(_OK, (object_id, bytes(data[header + _ID_SIZE:header + length])), end)


class Framer:
    """Turn received bytes into (object id, payload) of valid answers; count everything skipped.

    `feed` never raises and never waits for bytes a valid frame behind the current one does not need: an incomplete
    candidate is given up as soon as a later start byte begins a complete valid answer.

    The work follows the bytes, not the way TCP cuts them: every candidate frame keeps what it has read
    (`_Candidate`), the candidates after an incomplete one wait in a heap until enough bytes have come to finish them,
    and start bytes are looked for only in bytes not searched yet. `examined` counts the bytes looked at, so tests can
    check that without timing anything.
    """

    def __init__(self, errors: dict[str, int] | None = None, known: Container[int] = RESPONSE_TYPES) -> None:
        self.errors: dict[str, int] = errors if errors is not None else {}
        self._known = known
        self._buf = bytearray()
        self._base = 0  # stream offset of self._buf[0]
        self._candidates: dict[int, _Candidate] = {}  # by stream offset of their start byte
        self._kept = 0  # candidates left after the last clean-up
        self._waiting: list[tuple[int, int]] = []  # heap of (ready_at, start) of incomplete candidates
        self._found: list[int] = []  # heap of starts of valid answers found after an incomplete candidate
        self._searched = 0  # stream offset up to which every start byte after the first candidate has a candidate
        self._quiet = False  # skipped bytes belong to a frame already counted as rejected
        self._in_garbage = False  # the current run of garbage has been counted
        self._debug = False  # log what is skipped (rctmon.frames at DEBUG, --frame-debug)
        self.frames = 0  # valid answers returned
        self.examined = 0  # bytes looked at while parsing (for tests: proportional to the bytes fed, however split)

    @property
    def buffered(self) -> int:
        """Bytes held back because they may be the start of an incomplete frame."""
        return len(self._buf)

    def _count(self, kind: str, buf: bytearray, begin: int, end: int) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if self._debug:
            shown = bytes(buf[begin:min(end, begin + _LOG_BYTES)])
            frame_log.debug("skipped %s: %s", kind, shown.hex())

    def feed(self, data: bytes) -> list[Frame]:
        """Add received bytes; return the answers completed by them, in stream order."""
        self._debug = frame_log.isEnabledFor(logging.DEBUG)
        buf = self._buf
        buf += data
        frames: list[Frame] = []
        pos = 0
        while True:
            start = buf.find(START, pos)
            self.examined += (len(buf) if start < 0 else start) - pos
            if start < 0:
                end = len(buf) - _noise_head(buf, pos)
                self._skip(buf, pos, end)
                pos = end
                break
            noise = _noise_at(buf, start, pos)
            if noise is not None:
                kind, noise_start, noise_end = noise
                self._skip(buf, pos, noise_start)
                if kind == _PARTIAL:
                    pos = noise_start
                    break
                self._count(kind, buf, noise_start, noise_end)
                self._quiet = self._in_garbage = False
                pos = noise_end
                continue
            self._skip(buf, pos, start)
            outcome, result, end = self._parse(buf, start)
            if outcome == _NO_FRAME:  # a "+" followed by no command: part of the garbage around it
                pos = start + 1
                continue
            if outcome == _INCOMPLETE:
                later = self._complete_later(buf, start)
                if later is None:
                    pos = start
                    break
                self._count(TRUNCATED, buf, start, later)
                self._quiet, self._in_garbage = True, False
                pos = later
                continue
            self._in_garbage = False
            if outcome == _OK:
                frames.append(result)  # type: ignore[arg-type]
                self._quiet = False
                pos = end
            else:
                self._count(result, buf, start, max(end, start + 16))  # type: ignore[arg-type]
                self._quiet = True
                pos = start + 1  # a real frame may hide inside the rejected one
        if pos:
            del buf[:pos]
            self._base += pos
            self._forget_passed()
        self.frames += len(frames)
        return frames

    def _skip(self, buf: bytearray, begin: int, end: int) -> None:
        """Account for bytes skipped between frames: NUL prefixes are normal, anything else is garbage."""
        if end <= begin or self._quiet or self._in_garbage:
            return
        self.examined += end - begin
        if buf.count(0, begin, end) != end - begin:
            self._count(GARBAGE, buf, begin, end)
            self._in_garbage = True

    def _candidate(self, buf: bytearray, start: int) -> _Candidate:
        """Return the candidate frame at buffer position `start`, read on as far as the buffer goes."""
        key = self._base + start
        candidate = self._candidates.get(key)
        if candidate is None:
            candidate = self._candidates[key] = _Candidate(key)
        if candidate.outcome == _INCOMPLETE:
            self.examined += candidate.advance(buf, self._base, self._known)
        return candidate

    def _parse(self, buf: bytearray, start: int) -> tuple[int, Frame | str | None, int]:
        """Try to read one frame at `start`: (outcome, frame or error kind, buffer position after the frame)."""
        candidate = self._candidate(buf, start)
        return candidate.outcome, candidate.result, candidate.end - self._base

    def _complete_later(self, buf: bytearray, start: int) -> int | None:
        """Return the first start of a complete valid answer after an incomplete candidate, if there is one.

        Without this, garbage that looks like the start of a long frame would hold back the real answers behind it
        until enough further bytes arrived. Each later candidate is read once, in pieces: a candidate that cannot be
        finished yet waits in `_waiting` until the stream is long enough, and only new bytes are searched for start
        bytes. Every valid answer found that way is in `_found` until it is taken.
        """
        base = self._base
        first, stream_end = base + start, base + len(buf)
        waiting, found = self._waiting, self._found
        while waiting and waiting[0][0] <= stream_end:
            ready_at, key = heapq.heappop(waiting)
            candidate = self._candidates.get(key)
            if (key <= first or candidate is None or candidate.outcome != _INCOMPLETE
                    or candidate.ready_at != ready_at):
                continue  # passed, finished, or waiting with a later ready_at
            self.examined += candidate.advance(buf, base, self._known)
            self._file(candidate)
        while found and found[0] <= first:
            heapq.heappop(found)
        if found:  # found before any start byte not searched yet, so before any answer there
            return found[0] - base
        later = buf.find(START, max(self._searched - base, start + 1))
        while later >= 0:
            self._searched = base + later + 1
            candidate = self._candidate(buf, later)
            if candidate.outcome == _OK:
                return later
            self._file(candidate)
            later = buf.find(START, later + 1)
        self._searched = stream_end
        return None

    def _file(self, candidate: _Candidate) -> None:
        """Put a later candidate where `_complete_later` looks for it: waiting, or found valid."""
        if candidate.outcome == _INCOMPLETE:
            heapq.heappush(self._waiting, (candidate.ready_at, candidate.start))
        elif candidate.outcome == _OK:
            heapq.heappush(self._found, candidate.start)

    def _forget_passed(self) -> None:
        """Drop candidates the stream has passed; the whole table only when it has doubled, so this stays cheap."""
        if len(self._candidates) <= 2 * self._kept + 16:
            return
        base = self._base
        self._candidates = {key: c for key, c in self._candidates.items() if key >= base}
        self._waiting = [(c.ready_at, key) for key, c in self._candidates.items() if c.outcome == _INCOMPLETE]
        heapq.heapify(self._waiting)
        self._found = [key for key in self._found if key >= base]
        heapq.heapify(self._found)
        self._kept = len(self._candidates)


class Invalid:
    """Marker for a payload that did not decode to a usable value (already counted)."""

    def __repr__(self) -> str:
        return "INVALID"


INVALID = Invalid()
#: rctclient's decoder, typed for a data type known only at run time (its overloads want a literal type).
_decode_value: Callable[[DataType, bytes], object] = decode_value  # type: ignore[assignment]
Value = Union[bool, int, float, str]


def _check_number(value: float) -> bool:
    return math.isfinite(value) and abs(value) <= ABSURD_MAGNITUDE


class Decoder:
    """Decode answer payloads by the object's registry type; count and drop payloads that make no sense."""

    def __init__(self, errors: dict[str, int] | None = None,
                 types: Mapping[int, DataType] = RESPONSE_TYPES) -> None:
        self.errors: dict[str, int] = errors if errors is not None else {}
        self._types = types

    def _count(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def decode(self, object_id: int, payload: bytes) -> object | Invalid:
        """Return the value, or INVALID (counted as bad_payload or absurd_value)."""
        data_type = self._types.get(object_id)
        if data_type is None:
            self._count(UNKNOWN_OBJECT)
            return INVALID
        try:
            value = _decode_value(data_type, payload)
        except Exception:  # noqa: BLE001 - struct.error, UnicodeDecodeError, asserts in rctclient's table decoders
            self._count(BAD_PAYLOAD)
            return INVALID
        if isinstance(value, float) and not _check_number(value):
            self._count(ABSURD_VALUE)
            return INVALID
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > ABSURD_MAGNITUDE:
            self._count(ABSURD_VALUE)
            return INVALID
        return value
