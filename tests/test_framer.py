"""The framer and decoder: real inverter bytes, every kind of noise, and a property test over arbitrary garbage."""

from __future__ import annotations

import csv
import math
import os
import struct
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rctclient.frame import make_frame
from rctclient.registry import REGISTRY
from rctclient.types import Command, DataType, FrameType
from rctclient.utils import encode_value
from support import FIXTURES

from rctmon.collector import framer as framing
from rctmon.collector.framer import INVALID, Decoder, Framer, crc16

ID = {name: REGISTRY.get_by_name(name).object_id for name in (
    "battery.soc", "android_description", "g_sync.u_l_rms[2]", "energy.e_grid_feed_total",
    "battery.discharged_amp_hours", "db.temp1", "prim_sm.state")}


def response(name: str, value: object, command: Command = Command.RESPONSE) -> bytes:
    info = REGISTRY.get_by_name(name)
    return make_frame(command, info.object_id, encode_value(info.response_data_type, value))


def feed_all(data: bytes, chunk: int = 0) -> tuple[Framer, list[tuple[int, bytes]]]:
    framer = Framer()
    frames: list[tuple[int, bytes]] = []
    step = chunk or len(data) or 1
    for i in range(0, len(data), step):
        frames += framer.feed(data[i:i + step])
    return framer, frames


# --- real inverter bytes -----------------------------------------------------------------------------------------

def _burst() -> tuple[bytes, list[list[str]]]:
    with open(os.path.join(FIXTURES, "real-burst.hex")) as f:
        data = bytes.fromhex(f.read().strip())
    with open(os.path.join(FIXTURES, "real-burst.expected.tsv")) as f:
        rows = list(csv.reader(f, delimiter="\t"))[1:]
    return data, rows


@pytest.mark.parametrize("chunk", [0, 1, 7, 64])
def test_real_burst_decodes_to_the_expected_values_in_any_chunking(chunk: int) -> None:
    data, rows = _burst()
    framer, frames = feed_all(data, chunk)
    decoder = Decoder(framer.errors)
    assert [object_id for object_id, _ in frames] == [int(row[1], 16) for row in rows]
    for (object_id, payload), (name, _, expected) in zip(frames, rows):
        assert REGISTRY.get_by_id(object_id).name == name
        value = decoder.decode(object_id, payload)
        assert value == pytest.approx(float(expected)), name
    assert framer.errors == {}  # the 0x00 before each frame is normal, not garbage


def test_negative_energy_counters_from_a_real_inverter_are_valid_readings() -> None:
    data, _ = _burst()
    framer, frames = feed_all(data)
    values = {REGISTRY.get_by_id(i).name: Decoder().decode(i, p) for i, p in frames}
    assert values["energy.e_grid_feed_total"] == pytest.approx(-2769942.25)
    assert values["energy.e_ac_day"] == pytest.approx(-202.20224)


def test_real_burst_frame_with_an_escaped_id_byte_is_decoded() -> None:
    data, _ = _burst()
    assert b"\x2d\x2b" in data  # g_sync.i_dr_eff[2] has 0x2B in its id
    _, frames = feed_all(data)
    assert REGISTRY.get_by_name("g_sync.i_dr_eff[2]").object_id in {i for i, _ in frames}


def test_real_single_answers_decode_and_strings_lose_their_nul_padding() -> None:
    with open(os.path.join(FIXTURES, "real-single.tsv")) as f:
        rows = list(csv.reader(f, delimiter="\t"))[1:]
    for hex_bytes, name, expected in rows:
        framer, frames = feed_all(bytes.fromhex(hex_bytes))
        assert len(frames) == 1, name
        object_id, payload = frames[0]
        assert REGISTRY.get_by_id(object_id).name == name
        value = Decoder().decode(object_id, payload)
        assert repr(value) == expected
        assert framer.errors == {}


# --- noise, one kind at a time -------------------------------------------------------------------------------------

SOC = response("battery.soc", 0.5)
PLANT = make_frame(Command.PLANT_RESPONSE, ID["battery.soc"], encode_value(DataType.FLOAT, 0.5), address=7,
                   frame_type=FrameType.PLANT)
UNKNOWN_ID = next(i for i in range(1, 1000) if i not in framing.RESPONSE_TYPES)
BAD_CRC = SOC[:-1] + bytes([SOC[-1] ^ 1])

NOISE: Sequence[tuple[str, bytes, dict]] = (
    ("garbage", b"hello world", {"garbage": 1}),
    ("nul prefixes", b"\x00\x00", {}),
    ("crc mismatch", BAD_CRC, {"crc": 1}),
    ("unknown object", make_frame(Command.RESPONSE, UNKNOWN_ID, b"\x00\x00\x00\x00"), {"unknown_object": 1}),
    ("plant frame", PLANT, {"plant_frame": 1}),
    ("echoed read", make_frame(Command.READ, ID["battery.soc"]), {"not_response": 1}),
    ("write", make_frame(Command.WRITE, ID["battery.soc"], encode_value(DataType.FLOAT, 0.9)), {"not_response": 1}),
    ("vendor AT+", b"AT+\r", {"not_response": 1}),
    ("extension command", b"\x2b\x3c\xe1\x01\x02", {"not_response": 1}),
    ("absurd length", b"+\x05\x02\x00\x00", {"absurd_length": 1}),
    ("leftover of an earlier answer", SOC[5:], {"garbage": 1}),
    ("cut-off answer", SOC[:7], {"truncated": 1}),
    ("escaped start byte", b"\x2d\x2b\x77\x88", {"garbage": 1}),
)


@pytest.mark.parametrize("name,noise,errors", NOISE, ids=[n for n, _, _ in NOISE])
def test_each_kind_of_noise_is_skipped_counted_and_the_next_answer_survives(name: str, noise: bytes,
                                                                            errors: dict) -> None:
    for chunk in (0, 1):
        framer, frames = feed_all(SOC + b"\x00" + noise + b"\x00" + SOC, chunk)
        assert frames == [(ID["battery.soc"], encode_value(DataType.FLOAT, 0.5))] * 2, name
        assert framer.errors == errors, name


def test_a_frame_hidden_inside_a_bad_frame_is_found() -> None:
    # a stray start byte whose "frame" claims 30 bytes: the real answer sits inside those 30 bytes
    stray = b"+\x05\x1e\x12\x34"
    framer, frames = feed_all(stray + SOC + b"\x00" * 40 + SOC)
    assert [i for i, _ in frames] == [ID["battery.soc"]] * 2
    assert framer.errors == {"truncated": 1}


def test_a_corrupt_answer_does_not_take_the_answer_after_it() -> None:
    framer, frames = feed_all(BAD_CRC[:-3] + SOC)
    assert frames == [(ID["battery.soc"], encode_value(DataType.FLOAT, 0.5))]


def test_an_incomplete_long_candidate_does_not_hold_back_a_complete_answer() -> None:
    # "+", LONG_RESPONSE, length 4000 with an escaped start byte: it would swallow everything behind it
    framer = Framer()
    assert framer.feed(b"+\x06\x0f\xa0-" + SOC) == [(ID["battery.soc"], encode_value(DataType.FLOAT, 0.5))]
    assert framer.buffered == 0


def test_an_answer_split_at_every_byte_is_still_one_answer() -> None:
    frame = response("android_description", "PS 6.0 BA3L" + "\x00" * 53)
    framer = Framer()
    out = []
    for byte in frame:
        out += framer.feed(bytes([byte]))
    assert [i for i, _ in out] == [ID["android_description"]]
    assert Decoder().decode(*out[0]) == "PS 6.0 BA3L"


def test_long_response_and_escaped_length_are_decoded() -> None:
    info = REGISTRY.get_by_name("android_description")
    long_payload = b"x" * 300
    escaped_length = b"y" * (0x2B - 4)  # length byte 0x2B must be escaped
    data = (make_frame(Command.LONG_RESPONSE, info.object_id, long_payload)
            + make_frame(Command.RESPONSE, info.object_id, escaped_length))
    assert b"-+" in data
    _, frames = feed_all(data)
    assert frames == [(info.object_id, long_payload), (info.object_id, escaped_length)]


def test_crc16_is_rctclients() -> None:
    from rctclient.utils import CRC16

    for data in (b"", b"\x01", b"\x05\x08abcd", bytes(range(255))):
        assert crc16(data) == CRC16(data)


# --- decoding ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 2e12, -3e15])
def test_absurd_floats_are_dropped_and_counted(value: float) -> None:
    decoder = Decoder()
    assert decoder.decode(ID["db.temp1"], struct.pack(">f", value)) is INVALID
    assert decoder.errors == {"absurd_value": 1}


def test_payload_of_the_wrong_size_is_a_bad_payload() -> None:
    decoder = Decoder()
    assert decoder.decode(ID["db.temp1"], b"\x00\x01") is INVALID
    assert decoder.decode(ID["android_description"], b"\xff\xfe\x00") is INVALID  # not ASCII
    assert decoder.errors == {"bad_payload": 2}


def test_large_but_real_values_pass() -> None:
    decoder = Decoder()
    assert decoder.decode(ID["energy.e_grid_feed_total"], struct.pack(">f", -2.5e7)) == -2.5e7
    assert decoder.decode(ID["prim_sm.state"], b"\x0d") == 13
    assert decoder.errors == {}


# --- property: any garbage, any chunking -----------------------------------------------------------------------------

def _valid_frames() -> list[bytes]:
    frames = [SOC, response("android_description", "rct -+ inverter"), response("g_sync.u_l_rms[2]", 230.5),
              response("battery.discharged_amp_hours", 43.0), response("energy.e_grid_feed_total", -2769942.25),
              make_frame(Command.LONG_RESPONSE, ID["android_description"], b"+-" * 150)]
    for value in (0.0, 11.0, 42.5, -1.0):  # payloads with 0x2B/0x2D bytes among them
        frames.append(response("db.temp1", value))
    return frames


VALID = _valid_frames()
NASTY = [b"+", b"-", b"\x00", b"+\x05", b"+\x06\xff", b"+\x06\x0f", b"+\x05-", b"AT+\r", b"+<\xe1", b"-+", b"+\x45",
         b"\x2b\x01\x04"] + [frame[:cut] for frame in VALID[:3] for cut in (1, 3, 6, 9)]

segment = st.one_of(
    st.sampled_from(VALID).map(lambda f: ("frame", f)),
    st.binary(max_size=40).map(lambda b: ("garbage", b)),
    st.lists(st.sampled_from(NASTY), min_size=1, max_size=4).map(lambda parts: ("garbage", b"".join(parts))),
)


def _decoded(frame: bytes) -> tuple[int, bytes]:
    framer = Framer()
    (out,) = framer.feed(frame)
    return out


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(segments=st.lists(segment, max_size=25), chunks=st.lists(st.integers(1, 64), min_size=1, max_size=8))
def test_framer_never_raises_never_stalls_and_finds_every_untouched_frame(segments: list[tuple[str, bytes]],
                                                                         chunks: list[int]) -> None:
    data = b"".join(part for _, part in segments)
    expected = [_decoded(part) for kind, part in segments if kind == "frame"]
    framer = Framer()
    out: list[tuple[int, bytes]] = []
    pos, i = 0, 0
    while pos < len(data):
        size = chunks[i % len(chunks)]
        out += framer.feed(data[pos:pos + size])
        pos, i = pos + size, i + 1
    # every untouched frame, in order, without waiting for more bytes (garbage may at most add frames of its own)
    it = iter(out)
    assert all(any(frame == got for got in it) for frame in expected), (expected, out)
    # nothing is held back that is not the possible start of a frame (or of the vendor's AT+) still to come
    tail = data[len(data) - framer.buffered:] if framer.buffered else b""
    assert not tail or tail.startswith(b"+") or b"AT+\r".startswith(tail[:4])
    if segments and segments[-1][0] == "frame":
        assert framer.buffered == 0
