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

Work follows the bytes, however TCP cuts them (issue 11): the stream is unescaped once as it arrives (`_Unescaped`,
with `re` and `bytes.find`, in C), every candidate frame keeps how far it has read (`_Candidate`), and candidates
wait in a heap until enough bytes have come to finish them. `binascii.crc_hqx` (the CRC-CCITT that rctclient's
bit-by-bit `CRC16` computes) checks the sum. bench/framer.py feeds real and hostile streams in many splits.
"""

from __future__ import annotations

import binascii
import bisect
import heapq
import logging
import re
from dataclasses import dataclass
from typing import Callable
from collections.abc import Container, Mapping

from rctclient.registry import REGISTRY
from rctclient.types import Command, DataType
from rctclient.utils import decode_value

from rctmon.catalog import ELEMENTS, rejected

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
_ESCAPE_BYTE = ESCAPE[0]
_SPECIAL = re.compile(rb"-.|\+", re.DOTALL)  # an escape pair or an unescaped start byte, read left to right
_PAIR = re.compile(rb"-(.)", re.DOTALL)


class _Unescaped:
    """The stream with its escapes undone once, shared by every candidate frame.

    A unit is one byte of the unescaped stream: a plain byte, an escaped byte (`-` and the byte after it, taken
    literally whatever it is, as rctclient does) or an unescaped start byte, a break no frame reads across.
    Undoing escapes depends on where one starts only inside a run of `-`: after any other byte every reading is in
    step. A candidate's command byte is never `-`, so from the byte after it on every candidate reads exactly these
    units: the stream is unescaped once (C speed, `re`), and reading a candidate of any length is a few bisections
    and one slice. Without this, garbage whose start bytes each begin a long candidate reaching over the next ones
    costs each candidate a pass over the same bytes.
    """

    def __init__(self) -> None:
        self.units = bytearray()  # the units from unit index `first` on
        self.first = 0
        self.count = 0  # units complete so far (index of the next one)
        self.wire = 0  # stream offset up to which bytes have been read
        self._pending = False  # the last byte read is a `-` whose escaped byte has not come yet
        self._pair_units: list[int] = []  # unit index of every escaped byte, ascending
        self._pair_wire: list[int] = []  # stream offset of its `-`
        self._pairs_dropped = 0  # pairs forgotten from the front of both lists
        self._breaks: list[int] = []  # unit index of every unescaped start byte

    def extend(self, buf: bytearray, base: int) -> int:
        """Read the bytes of `buf` (whose first byte is at stream offset `base`) not read yet; return how many."""
        new = buf[self.wire - base:]
        if not new:
            return 0
        read = len(new)
        if self._pending:
            self._pair_units.append(self.count)
            self._pair_wire.append(self.wire - 1)
            self.units.append(new[0])
            self.count += 1
            self.wire += 1
            del new[:1]
        # an odd run of "-" at the end: its last one escapes a byte still to come
        self._pending = bool(new) and new[-1] == _ESCAPE_BYTE and bool((len(new) - len(new.rstrip(ESCAPE))) & 1)
        if self._pending:
            del new[-1:]
        if ESCAPE in new or START in new:
            pairs = 0
            for match in _SPECIAL.finditer(new):
                at = match.start()
                if new[at] == _ESCAPE_BYTE:
                    self._pair_units.append(self.count + at - pairs)
                    self._pair_wire.append(self.wire + at)
                    pairs += 1
                else:
                    self._breaks.append(self.count + at - pairs)
            self.units += _PAIR.sub(rb"\1", new)
        else:
            self.units += new
        self.count = self.first + len(self.units)
        self.wire = base + len(buf)
        return read

    def unit_at(self, offset: int) -> int:
        """Return the index of the unit that begins at stream offset `offset` (or that holds it)."""
        return offset - self._pairs_dropped - bisect.bisect_left(self._pair_wire, offset)

    def offset_of(self, unit: int) -> int:
        """Return the stream offset at which unit `unit` begins."""
        return unit + self._pairs_dropped + bisect.bisect_left(self._pair_units, unit)

    def first_break(self, unit: int) -> int:
        """Return the index of the first unescaped start byte at or after `unit`, or -1."""
        i = bisect.bisect_left(self._breaks, unit)
        return self._breaks[i] if i < len(self._breaks) else -1

    def take(self, unit: int, count: int) -> bytes:
        return bytes(self.units[unit - self.first:unit - self.first + count])

    def forget_before(self, offset: int) -> None:
        """Let go of units before stream offset `offset`; only once they are most of what is kept (amortised)."""
        unit = self.unit_at(offset) - 1
        if unit - self.first < max(4096, len(self.units) // 2):
            return
        del self.units[:unit - self.first]
        self.first = unit
        pairs = bisect.bisect_left(self._pair_units, unit)
        del self._pair_units[:pairs]
        del self._pair_wire[:pairs]
        self._pairs_dropped += pairs
        del self._breaks[:bisect.bisect_left(self._breaks, unit)]


class _Candidate:
    """The frame that may begin at one start byte, read as far as the bytes have come.

    Kept across `feed` calls and read on from where it stopped, so that a frame arriving a byte at a time costs what
    it costs in one piece (issue 11: parsed again from its start on every byte, an escaped 8 KB frame cost 21.5 s of
    CPU). Positions are stream offsets, not buffer positions: the buffer's front is cut away as frames are taken.
    """

    __slots__ = ("start", "command", "header", "unit", "need", "outcome", "result", "end", "ready_at")

    def __init__(self, start: int) -> None:
        self.start = start
        self.command = -1  # the command byte, once it has come
        self.header = 0  # units of the length field (after the command byte)
        self.unit = 0  # index of the unit after the command byte (see _Unescaped)
        self.need = 0  # units after the command byte: the length field's, then the whole frame's
        self.outcome = _INCOMPLETE
        self.result: Frame | str | None = None  # the frame (_OK) or the error kind (_REJECT)
        self.end = start  # after the frame (or as far as the rejection needed to look)
        self.ready_at = start + 2  # the stream must be this long before reading on can finish the frame

    def finish(self, outcome: int, result: Frame | str | None, end: int) -> None:
        self.outcome, self.result, self.end = outcome, result, end

    def advance(self, buf: bytearray, base: int, text: _Unescaped, known: Container[int]) -> int:
        """Read on as far as the stream goes (`buf` begins at stream offset `base`); return the bytes examined."""
        if self.command < 0:
            at = self.start + 1 - base
            if at >= len(buf):
                return 0
            info = _COMMANDS.get(buf[at])
            if info is None:  # a "+" followed by no command: part of the garbage around it
                self.finish(_NO_FRAME, None, self.start)
                return 1
            if not info.parsable:
                self.finish(_REJECT, NOT_RESPONSE, self.start + 2)
                return 1
            self.command = buf[at]
            self.header = self.need = 2 if info.long else 1
            self.unit = text.unit_at(self.start + 2)
        cut = text.first_break(self.unit)
        while True:
            stop = self.unit + self.need
            if 0 <= cut < stop:  # an unescaped start byte where the frame should go on
                self.finish(_REJECT, TRUNCATED, self.start + 1)
                return 1
            if stop > text.count:
                self.ready_at = text.wire + stop - text.count
                return 1
            if self.need > self.header:
                break
            length = int.from_bytes(text.take(self.unit, self.header), "big")
            minimum = _ID_SIZE + (_ADDRESS_SIZE if _COMMANDS[self.command].plant else 0)
            if not minimum <= length <= MAX_LENGTH:
                self.finish(_REJECT, ABSURD_LENGTH, text.offset_of(stop))
                return 1
            self.need += length + _CRC_SIZE
        self._complete(bytes((self.command,)) + text.take(self.unit, self.need), text.offset_of(stop), known)
        return self.need

    def _complete(self, data: bytes, end: int, known: Container[int]) -> None:
        header = 1 + self.header
        length = len(data) - header - _CRC_SIZE
        if crc16(data[:header + length]) != int.from_bytes(data[header + length:], "big"):
            self.finish(_REJECT, CRC, end)
            return
        reject = _COMMANDS[self.command].reject
        if reject is not None:
            self.finish(_REJECT, reject, end)
            return
        object_id = int.from_bytes(data[header:header + _ID_SIZE], "big")
        if object_id not in known:
            self.finish(_REJECT, UNKNOWN_OBJECT, end)
            return
        self.finish(_OK, (object_id, data[header + _ID_SIZE:header + length]), end)


class Framer:
    """Turn received bytes into (object id, payload) of valid answers; count everything skipped.

    `feed` never raises and never waits for bytes a valid frame behind the current one does not need: an incomplete
    candidate is given up as soon as a later start byte begins a complete valid answer.

    The work follows the bytes, not the way TCP cuts them: every candidate frame keeps how far it has read
    (`_Candidate`), the candidates after an incomplete one wait in a heap until enough bytes have come to finish them,
    and start bytes are looked for only in bytes not searched yet. `examined` counts the bytes read and the steps
    taken, so tests can check the work without timing anything.
    """

    def __init__(self, errors: dict[str, int] | None = None, known: Container[int] = RESPONSE_TYPES) -> None:
        self.errors: dict[str, int] = errors if errors is not None else {}
        self._known = known
        self._buf = bytearray()
        self._base = 0  # stream offset of self._buf[0]
        self._text = _Unescaped()
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
        self.examined += self._text.extend(buf, self._base)
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
            self._text.forget_before(self._base)
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
            self.examined += candidate.advance(buf, self._base, self._text, self._known)
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
            self.examined += candidate.advance(buf, base, self._text, self._known)
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


class Decoder:
    """Decode answer payloads by the object's registry type; count and drop payloads that make no sense.

    Objects with one record per element (a module's cells) become plain tuples (`catalog.Elements`). Whether a
    value makes sense is the catalog's decision (`catalog.rejected`): a single value it refuses is dropped; a
    reading of many values is kept for the values that make sense, and counted once if some do not.
    """

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
        elements = ELEMENTS.get(data_type)
        try:
            value = _decode_value(data_type, payload)
            if elements is not None:  # a payload of the wrong length raises ValueError in rctclient
                value = elements.records(value)  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - struct.error, UnicodeDecodeError, asserts in rctclient's table decoders
            self._count(BAD_PAYLOAD)
            return INVALID
        if rejected(object_id, value):
            self._count(ABSURD_VALUE)
            if elements is None:
                return INVALID
        return value
