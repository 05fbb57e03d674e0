"""Answers of the logger and the event table, built by hand from rctclient's documented layout: every check, the
inverter's clock across both DST changes, and the event table decoded."""

from __future__ import annotations

import datetime
import struct
import zoneinfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rctclient.registry import REGISTRY
from rctclient.types import DataType
from rctclient.utils import decode_value

from rctmon.history.events import EVENT_TYPES, decode, float32_text, parameter_value, type_name
from rctmon.history.protocol import (FIRST_ELEMENT, LENGTH, ORDER, STRUCTURE, WINDOW, BadAnswer, RawEvent,
                                     check_events, check_timeseries)
from rctmon.history.timezone import InverterClock

pytestmark = pytest.mark.timeout(60)

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
UTC_CLOCK = InverterClock(datetime.timezone.utc)
BERLIN_CLOCK = InverterClock(BERLIN)
NOW = 1_900_000_000.0
ASKED = 1_750_000_200  # a stamp (UTC clock: also an instant)


def utc(text: str) -> int:
    return int(datetime.datetime.fromisoformat(text).replace(tzinfo=datetime.timezone.utc).timestamp())


def series(asked: int, *entries: tuple[int, float]) -> bytes:
    return struct.pack(">I", asked) + b"".join(struct.pack(">If", s, v) for s, v in entries)


def table(asked: int, *rows: tuple[int, int, int, int, int]) -> bytes:
    return struct.pack(">I", asked) + b"".join(struct.pack(">5I", *r) for r in rows)


def f32(value: float) -> int:
    return int(struct.unpack(">I", struct.pack(">f", value))[0])


# --- time series ---------------------------------------------------------------------------------------------------

def test_a_sound_answer_gives_its_entries_newest_first_in_either_order() -> None:
    entries = [(ASKED - 200, 1.5), (ASKED - 500, 2.5), (ASKED - 800, -3.0)]
    newest_first = check_timeseries(series(ASKED, *entries), ASKED, UTC_CLOCK, NOW)
    oldest_first = check_timeseries(series(ASKED, *reversed(entries)), ASKED, UTC_CLOCK, NOW)
    assert [(e.instant, e.value) for e in newest_first] == entries
    assert oldest_first == newest_first
    # what rctclient's decoder makes of the same bytes agrees
    _, decoded = decode_value(DataType.TIMESERIES, series(ASKED, *entries))
    assert sorted((int(k.timestamp()), v) for k, v in decoded.items()) == sorted(entries)


def test_an_answer_without_entries_means_nothing_older() -> None:
    assert check_timeseries(series(ASKED), ASKED, UTC_CLOCK, NOW) == []


@pytest.mark.parametrize("payload, kind", [
    (b"", LENGTH),
    (b"\x68\x4e", LENGTH),  # short: less than one element
    (series(ASKED, (ASKED - 300, 1.0))[:-2], LENGTH),  # cut inside an element
    (series(ASKED, (ASKED - 300, 1.0), (ASKED - 600, 2.0))[:-4], STRUCTURE),  # 2n elements: a value missing
    (series(ASKED, (ASKED - 300, 1.0))[4:], STRUCTURE),  # the first element missing: 2n
    (series(ASKED + 1, (ASKED - 300, 1.0)), FIRST_ELEMENT),  # another question's answer
    (series(ASKED, (ASKED - 600, 1.0), (ASKED - 300, 2.0), (ASKED - 900, 3.0)), ORDER),  # misordered
    (series(ASKED, (ASKED - 300, 1.0), (ASKED - 300, 2.0)), ORDER),  # the same time twice
    (series(ASKED, (ASKED + 300, 1.0)), WINDOW),  # not before the time asked
    (series(ASKED, (ASKED, 1.0)), WINDOW),  # at the time asked: not before it
    (series(ASKED, (ASKED - 300, 1.0), (900_000_000, 2.0)), WINDOW),  # before 2000
])
def test_a_broken_answer_is_refused_whole(payload: bytes, kind: str) -> None:
    with pytest.raises(BadAnswer) as refused:
        check_timeseries(payload, ASKED, UTC_CLOCK, NOW)
    assert refused.value.kind == kind


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_never_raises_anything_else_and_never_passes_as_unordered_entries(payload: bytes) -> None:
    for asked in (ASKED, int.from_bytes(payload[:4], "big") if len(payload) >= 4 else ASKED):
        try:
            entries = check_timeseries(payload, asked, BERLIN_CLOCK, NOW)
        except BadAnswer:
            continue
        instants = [e.instant for e in entries]
        assert instants == sorted(instants, reverse=True) and len(set(instants)) == len(instants)
        assert all(946_684_800 - 7200 <= i < asked for i in instants)


def test_values_that_are_no_number_do_not_spoil_the_answer() -> None:
    payload = struct.pack(">I", ASKED) + struct.pack(">II", ASKED - 300, 0x7FC00000)  # NaN
    (entry,) = check_timeseries(payload, ASKED, UTC_CLOCK, NOW)
    assert entry.value != entry.value  # NaN: the reader drops and counts it


# --- the inverter's clock --------------------------------------------------------------------------------------------

def test_stamps_are_the_local_wall_clock_read_as_utc() -> None:
    winter = utc("2026-01-15T12:00:00")
    summer = utc("2026-07-15T12:00:00")
    assert BERLIN_CLOCK.stamp(winter) == winter + 3600
    assert BERLIN_CLOCK.stamp(summer) == summer + 7200
    assert BERLIN_CLOCK.candidates(winter + 3600) == (winter,)


def test_spring_forward_the_stamps_skip_an_hour_the_instants_do_not() -> None:
    # 2026-03-29 in Berlin: 01:59:59 CET is followed by 03:00:00 CEST (01:00 UTC)
    instants = list(range(utc("2026-03-29T00:30:00"), utc("2026-03-29T01:30:00"), 300))[::-1]
    stamps = [BERLIN_CLOCK.stamp(i) for i in instants]
    assert stamps[5] - stamps[6] == 3900  # 03:00 after 01:55: 65 minutes apart on the wall clock
    assert BERLIN_CLOCK.resolve(stamps, instants[0] + 1) == instants
    payload = series(BERLIN_CLOCK.stamp(instants[0] + 300), *((s, 1.0) for s in stamps))
    entries = check_timeseries(payload, BERLIN_CLOCK.stamp(instants[0] + 300), BERLIN_CLOCK, NOW)
    assert [e.instant for e in entries] == instants


def test_the_repeated_autumn_hour_comes_out_once_each_in_order() -> None:
    # 2026-10-25 in Berlin: 02:00-02:59 happens twice (CEST, then CET from 01:00 UTC)
    instants = list(range(utc("2026-10-24T23:30:00"), utc("2026-10-25T02:30:00"), 300))[::-1]
    stamps = [BERLIN_CLOCK.stamp(i) for i in instants]
    assert len(set(stamps)) == len(stamps) - 12  # twelve wall-clock times come twice
    asked = BERLIN_CLOCK.stamp(instants[0] + 300)
    entries = check_timeseries(series(asked, *((s, float(k)) for k, s in enumerate(stamps))), asked, BERLIN_CLOCK,
                               NOW)
    assert [e.instant for e in entries] == instants  # no duplicated and no missing hour
    assert [e.value for e in entries] == [float(k) for k in range(len(stamps))]
    # an answer that starts inside the second pass and reaches into the first
    second_pass = [i for i in instants if utc("2026-10-25T01:00:00") <= i < utc("2026-10-25T01:30:00")]
    first_pass = [i for i in instants if utc("2026-10-25T00:00:00") <= i < utc("2026-10-25T00:50:00")]
    part = second_pass + first_pass  # newest first, as recorded
    asked = BERLIN_CLOCK.stamp(second_pass[0] + 300)  # 02:30 on the wall clock: ambiguous
    got = check_timeseries(series(asked, *((BERLIN_CLOCK.stamp(i), 1.0) for i in part)), asked, BERLIN_CLOCK, NOW)
    assert [e.instant for e in got] == part


def test_before_the_second_pass_has_begun_a_repeated_stamp_means_the_first() -> None:
    stamp = BERLIN_CLOCK.stamp(utc("2026-10-25T00:20:00"))  # 02:20 CEST
    assert len(BERLIN_CLOCK.candidates(stamp)) == 2
    assert BERLIN_CLOCK.latest(stamp, now=utc("2026-10-25T00:30:00")) == utc("2026-10-25T00:20:00")
    assert BERLIN_CLOCK.latest(stamp, now=utc("2026-10-25T03:00:00")) == utc("2026-10-25T01:20:00")


def test_period_starts_are_local_midnights() -> None:
    instant = utc("2026-10-25T12:00:00")
    assert BERLIN_CLOCK.period_start(instant, "day") == utc("2026-10-24T22:00:00")
    assert BERLIN_CLOCK.period_start(instant, "month") == utc("2026-09-30T22:00:00")
    assert BERLIN_CLOCK.period_start(instant, "year") == utc("2025-12-31T23:00:00")
    assert BERLIN_CLOCK.next_day(utc("2026-10-24T22:00:00")) == utc("2026-10-25T23:00:00")  # 25 hours


# --- the event table -------------------------------------------------------------------------------------------------

def test_event_answers_are_checked_like_time_series() -> None:
    row = (ord("Z"), ASKED - 100, ASKED - 50, 3, 1)
    (raw,) = check_events(table(ASKED, row), ASKED, UTC_CLOCK, NOW)
    assert raw == RawEvent(ord("Z"), ASKED - 100, ASKED - 100, ASKED - 50, 3, 1)
    with pytest.raises(BadAnswer) as refused:
        check_events(table(ASKED, row)[:-4], ASKED, UTC_CLOCK, NOW)  # 5n: one field missing
    assert refused.value.kind == STRUCTURE
    with pytest.raises(BadAnswer) as refused:
        check_events(table(ASKED, (0x1234, ASKED - 100, 0, 0, 0)), ASKED, UTC_CLOCK, NOW)  # no character
    assert refused.value.kind == STRUCTURE
    with pytest.raises(BadAnswer) as refused:
        check_events(table(ASKED - 1, row), ASKED, UTC_CLOCK, NOW)
    assert refused.value.kind == FIRST_ELEMENT
    with pytest.raises(BadAnswer) as refused:
        check_events(table(ASKED, (ord("Z"), ASKED - 100, 0, 0, 0), (ord("Z"), ASKED - 50, 0, 0, 0),
                           (ord("Z"), ASKED - 70, 0, 0, 0)), ASKED, UTC_CLOCK, NOW)
    assert refused.value.kind == ORDER
    # two events in the same second (parameters changed together) are no disorder
    same = check_events(table(ASKED, (ord("s"), ASKED - 9, 1, 2, 3), (ord("s"), ASKED - 9, 4, 5, 6)), ASKED,
                        UTC_CLOCK, NOW)
    assert [r.element2 for r in same] == [1, 4]


def test_events_decode_by_type_as_rctclient_documents_them() -> None:
    start = ASKED - 1000
    soc_min = REGISTRY.get_by_name("power_mng.soc_min")
    rows = {
        "SW_ON_UMAX_L1": (ord("P"), start, start + 22, f32(253.5), 0),
        "SW_ON_FMAX_L1": (ord("R"), start, start + 5, f32(50.25), 0),
        "NO_GRID": (ord("Z"), start, start + 120, 7, 2),
        "BAT_INTERN": (ord("r"), start, start + 60, 0x123, 1),
        "PRM_CHANGE": (ord("s"), start, soc_min.object_id, f32(0.07), f32(0.1)),
        "UPDATE": (ord("w"), start, 0, 5185, 5220),
    }
    decoded = {name: decode(check_events(table(ASKED, row), ASKED, UTC_CLOCK, NOW)[0], UTC_CLOCK)
               for name, row in rows.items()}
    assert {name: e.type for name, e in decoded.items()} == {name: name for name in rows}
    assert decoded["SW_ON_UMAX_L1"].fields["voltage"] == pytest.approx(253.5)
    assert decoded["SW_ON_UMAX_L1"].duration == 22.0 and decoded["SW_ON_UMAX_L1"].end == start + 22
    assert decoded["SW_ON_FMAX_L1"].fields["frequency"] == pytest.approx(50.25)
    assert decoded["NO_GRID"].fields["case"] == 7 and decoded["NO_GRID"].duration == 120.0
    assert decoded["BAT_INTERN"].fields["error_code"] == 0x123
    change = decoded["PRM_CHANGE"]
    assert (change.fields["object"], change.fields["old_value"], change.fields["new_value"]) == (
        "power_mng.soc_min", "0.07", "0.1")
    assert change.end is None and "duration" not in change.fields
    assert (decoded["UPDATE"].fields["old_version"], decoded["UPDATE"].fields["new_version"]) == (5185, 5220)
    for event in decoded.values():  # the raw fields always travel along
        assert {"element2", "element3", "element4", "code"} <= set(event.fields)


def test_unknown_types_are_kept_with_their_raw_fields() -> None:
    raw = check_events(table(ASKED, (ord("q"), ASKED - 10, 11, 22, 33)), ASKED, UTC_CLOCK, NOW)[0]
    event = decode(raw, UTC_CLOCK)
    assert event.type == "UNKNOWN_71" == type_name(ord("q"))
    assert event.fields == {"code": "q", "element2": 11, "element3": 22, "element4": 33}


def test_a_ranged_event_whose_end_makes_no_sense_keeps_its_start_and_raw_end() -> None:
    for end in (0, ASKED - 2000, ASKED + 400 * 86_400):  # ongoing, before the start, absurdly long
        raw = check_events(table(ASKED, (ord("Z"), ASKED - 1000, end, 1, 0)), ASKED, UTC_CLOCK, NOW)[0]
        event = decode(raw, UTC_CLOCK)
        assert event.end is None and "duration" not in event.fields and event.fields["element2"] == end


def test_parameter_values_decode_by_the_objects_type() -> None:
    signed = next(i for i in REGISTRY.all() if i.request_data_type is DataType.INT16)
    assert parameter_value(signed.object_id, 0xFFFF) == "-1"
    assert parameter_value(REGISTRY.get_by_name("power_mng.soc_min").object_id, f32(0.97)) == "0.97"
    assert parameter_value(0x12345678, 42) == "42"  # unknown object: the raw number
    assert float32_text(0.1) == "0.1"


def test_the_event_table_names_every_type_once() -> None:
    codes = [t.code for t in EVENT_TYPES]
    assert len(codes) == len(set(codes)) == 18
    assert len({t.name for t in EVENT_TYPES}) == 18
