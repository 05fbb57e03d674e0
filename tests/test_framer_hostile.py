"""The framer against a hostile stream (issue 11): work follows the bytes, not the way they are cut.

Work is counted, not timed: the calls the framer makes (Python and C functions, through `sys.setprofile`) and the
bytes it reports having examined (`Framer.examined`). Speed itself is measured in bench/framer.py.
"""

from __future__ import annotations

import random
import struct
import sys
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rctclient.frame import make_frame
from rctclient.registry import REGISTRY
from rctclient.types import Command, DataType
from rctclient.utils import encode_value

from rctmon.collector.framer import MAX_LENGTH, Framer
from test_framer import NASTY, VALID

pytestmark = pytest.mark.timeout(120)

LOGGER = REGISTRY.get_by_name("logger.minutes_ea_log_ts").object_id
EVENTS = REGISTRY.get_by_name("logger.error_log_time_stamp").object_id
SOC = REGISTRY.get_by_name("battery.soc").object_id
Frame = tuple[int, bytes]


def escaped_answer(payload_size: int) -> bytes:
    """Return a long answer whose every payload byte must be escaped (twice its size on the wire)."""
    return make_frame(Command.LONG_RESPONSE, LOGGER, b"+-" * (payload_size // 2))


def timeseries_payload(entries: int, seed: int) -> bytes:
    """Return a logger answer's payload as the history import reads them: the asked time, then (time, value) pairs."""
    rng = random.Random(seed)
    return struct.pack(">I", 1_790_000_000) + b"".join(
        struct.pack(">If", 1_790_000_000 - 300 * n, rng.uniform(-1e4, 1e4)) for n in range(1, entries + 1))


def timeseries(entries: int, seed: int) -> bytes:
    return make_frame(Command.LONG_RESPONSE, LOGGER, timeseries_payload(entries, seed))


def feed(data: bytes, cuts: Sequence[int] = ()) -> tuple[Framer, list[Frame]]:
    """Feed `data` cut after each size in `cuts` (repeated; none: one piece)."""
    framer = Framer()
    frames: list[Frame] = []
    pos, i = 0, 0
    while pos < len(data):
        size = cuts[i % len(cuts)] if cuts else len(data)
        frames += framer.feed(data[pos:pos + size])
        pos, i = pos + size, i + 1
    return framer, frames


def calls_per_byte(data: bytes) -> float:
    """Return the function calls (Python and C) the framer makes per byte when fed one byte at a time."""
    framer = Framer()
    calls = 0

    def count(_frame: object, event: str, _arg: object) -> None:
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    sys.setprofile(count)
    try:
        for i in range(len(data)):
            framer.feed(data[i:i + 1])
    finally:
        sys.setprofile(None)
    return calls / len(data)


def test_a_long_escaped_answer_fed_a_byte_at_a_time_costs_per_byte_what_a_short_one_costs() -> None:
    """Issue 11: 8 KB of escaped bytes arriving a byte at a time were parsed from the start on every byte."""
    short = calls_per_byte(escaped_answer(256))
    long = calls_per_byte(escaped_answer(MAX_LENGTH - 4))
    plain = calls_per_byte(b"".join(b"\x00" + make_frame(Command.RESPONSE, SOC, encode_value(DataType.FLOAT, v))
                                    for v in range(200)))
    assert long <= 1.2 * short, (short, long)
    assert long <= 2 * plain, (plain, long)


def test_a_long_escaped_answer_examines_about_the_same_bytes_in_one_piece_and_byte_by_byte() -> None:
    data = b"\x00" + escaped_answer(MAX_LENGTH - 4) + b"\x00" + timeseries(511, 1)
    whole, frames = feed(data)
    bytewise, same = feed(data, [1])
    assert [object_id for object_id, _ in frames] == [LOGGER, LOGGER]
    assert same == frames
    assert whole.examined <= 3 * len(data)
    assert bytewise.examined <= 2 * whole.examined


def test_overlapping_long_candidates_are_each_read_once() -> None:
    """Garbage whose every start byte begins a long candidate reaching over the next ones, then a real answer."""
    header = b"-+" + bytes([Command.LONG_RESPONSE]) + (MAX_LENGTH // 2).to_bytes(2, "big")
    answer = make_frame(Command.RESPONSE, SOC, encode_value(DataType.FLOAT, 0.5))
    data = (header * 400 + b"\x00" + answer) * 2
    for cuts in ((), (1,), (7, 1, 64)):
        framer, frames = feed(data, cuts)
        assert frames == [(SOC, encode_value(DataType.FLOAT, 0.5))] * 2
        assert framer.examined <= 4 * len(data), cuts  # each candidate read once, not once per candidate after it


def test_what_the_framer_keeps_stays_bounded_by_the_longest_frame() -> None:
    header = b"-+" + bytes([Command.LONG_RESPONSE]) + (MAX_LENGTH // 2).to_bytes(2, "big")
    unit = header * 200 + b"\x00" + make_frame(Command.RESPONSE, SOC, encode_value(DataType.FLOAT, 0.5))
    framer = Framer()
    found = 0
    for i, byte in enumerate(unit * 40):
        found += len(framer.feed(bytes((byte,))))
        if i % 1000 == 0:
            assert framer.buffered <= 2 * (MAX_LENGTH + 8) + 16
            # white box: the candidate table and the shared unescaped text are cut back as the stream moves on
            assert len(framer._candidates) <= 4 * 1024
            assert len(framer._text.units) <= 4 * (MAX_LENGTH + 8) + 8192
    assert found == 40


def test_long_answers_of_every_size_the_history_import_reads_parse_in_any_split() -> None:
    payloads = [timeseries_payload(entries, entries) for entries in (1, 37, 120, 340, (MAX_LENGTH - 8) // 8)]
    data = b"".join(b"\x00" + make_frame(Command.LONG_RESPONSE, LOGGER, payload) for payload in payloads)
    _, whole = feed(data)
    assert whole == [(LOGGER, payload) for payload in payloads]
    for cuts in ((1,), (3, 1400), (4096,)):
        assert feed(data, cuts)[1] == whole


# --- property: the same frames whatever the cuts -------------------------------------------------------------------

HOSTILE = NASTY + [b"-+" + bytes([Command.LONG_RESPONSE]) + b"\x08\x00", b"--+", b"---", b"+\x06\x00\x30-"]
LONG = [escaped_answer(300), timeseries(200, 7),
        make_frame(Command.LONG_RESPONSE, EVENTS, b"\x00\x00\x00A" + b"-+\x06\x00\x30" * 40)]
segment = st.one_of(
    st.sampled_from(VALID + LONG),
    st.binary(max_size=40),
    st.lists(st.sampled_from(HOSTILE), min_size=1, max_size=6).map(b"".join),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(segments=st.lists(segment, max_size=20), cuts=st.lists(st.integers(1, 300), min_size=1, max_size=10))
def test_any_cuts_give_the_frames_of_the_one_piece_feed(segments: list[bytes], cuts: list[int]) -> None:
    data = b"".join(segments)
    whole, frames = feed(data)
    cut, got = feed(data, cuts)
    assert got == frames
    assert cut.buffered == whole.buffered
