"""The reader's chains against the simulator's logger itself (no TCP): stitched exactly, across both DST changes,
through answers that are cut short, garbled or never come; and the simulator's records consistent with themselves."""

from __future__ import annotations

import asyncio
import datetime
import random
import struct
import zoneinfo

import pytest

from rctmon.history.engine import HistoryStats, Reader, chunks
from rctmon.history.events import Event
from rctmon.history.series import EVENT_ID, LOGGER_SERIES, MINUTES, SERIES_BY_ID, LoggerRow, rows_for
from rctmon.history.timezone import InverterClock
from rctmon.simulator.events import EventTable
from rctmon.simulator.logger import Records, cut_short, f32
from rctmon.simulator.options import SimulatorOptions

pytestmark = pytest.mark.timeout(120)

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")


def utc(text: str) -> int:
    return int(datetime.datetime.fromisoformat(text).replace(tzinfo=datetime.timezone.utc).timestamp())


class Collect:
    """A consumer that keeps everything, and fails on a point handed on twice."""

    def __init__(self) -> None:
        self.got: dict[LoggerRow, dict[int, float]] = {}
        self.event_list: list[Event] = []

    async def points(self, row: LoggerRow, points: list[tuple[int, float]]) -> None:
        got = self.got.setdefault(row, {})
        for instant, value in points:
            assert instant not in got, f"{row.field} at {instant} handed on twice"
            got[instant] = value

    async def events(self, events: list[Event]) -> None:
        self.event_list.extend(events)


class ModelQuerier:
    """Answers queries from a simulator's records, with faults: cut short, garbled first element, no answer."""

    def __init__(self, records: Records, rng: random.Random, cut: float = 0.0, garble: float = 0.0,
                 lose: float = 0.0) -> None:
        self.records, self.rng = records, rng
        self.cut, self.garble, self.lose = cut, garble, lose
        self.asked = 0

    async def query(self, object_id: int, timestamp: int) -> bytes | None:
        self.asked += 1
        await asyncio.sleep(0)
        if self.rng.random() < self.lose:
            return None
        if object_id == EVENT_ID:
            payload = self.records.events.answer(timestamp, self.rng)
            size = 20
        else:
            payload = self.records.logger.answer(object_id, timestamp, self.rng)
            size = 8
        if self.rng.random() < self.cut:
            payload = cut_short(payload, size, self.rng)
        if self.rng.random() < self.garble and len(payload) > 8:
            payload = struct.pack(">I", timestamp ^ 0x55) + payload[4:]
        return payload


def records_at(now: int, zone: datetime.tzinfo, days: float, events: int = 20, step: int = 300) -> Records:
    options = SimulatorOptions(history_days=days, events=events, logger_step=step,
                               timezone=getattr(zone, "key", "UTC"))
    return Records(options, random.Random(7), started=now, clock=lambda: now)


def read(records: Records, clock: InverterClock, rows: list[LoggerRow], events: bool, start: int, end: int,
         now: int, querier: ModelQuerier | None = None) -> tuple[Collect, Reader]:
    collect = Collect()
    querier = querier or ModelQuerier(records, random.Random(1))
    reader = Reader(querier, clock, collect, HistoryStats(), concurrency=8, now=lambda: now)
    asyncio.run(reader.run(rows, events, start, end))
    return collect, reader


def truth(records: Records, row: LoggerRow, start: int, end: int, now: int) -> dict[int, float]:
    return {i: row.convert(v) for i, v in records.logger.points(row.object_name, start, end, now)}


@pytest.mark.parametrize("now_text, change", [("2026-10-26T12:00:00", "autumn"), ("2026-03-30T12:00:00", "spring")])
def test_a_window_with_a_dst_change_comes_out_exactly_five_minutes_apart(now_text: str, change: str) -> None:
    now = utc(now_text)
    records = records_at(now, BERLIN, days=4)
    start, end = now - 3 * 86_400, now
    rows = list(rows_for("minutes")[:4]) + list(rows_for("day"))
    collect, reader = read(records, InverterClock(BERLIN), rows, False, start, end, now)
    assert reader.unread == [] and reader.stats.reasked == 0
    for row in rows_for("minutes")[:4]:
        got = collect.got[row]
        assert got == truth(records, row, start, end, now)
        instants = sorted(got)
        assert {b - a for a, b in zip(instants, instants[1:])} == {300}  # no duplicated, no missing hour
        assert len(instants) == 3 * 288
    # the day with the change has 23 or 25 hours, and its energy is the sum of its 5-minute entries
    change_day = utc("2026-10-24T22:00:00") if change == "autumn" else utc("2026-03-28T23:00:00")
    hours = 25 if change == "autumn" else 23
    for row in rows_for("day"):
        got = collect.got[row]
        assert got == truth(records, row, records.logger.day_start(start), end, now)
        assert change_day in got
        minute_row = next(r for r in rows_for("minutes") if r.object_name == row.object_name.replace("day_",
                                                                                                      "minutes_"))
        minutes = truth(records, minute_row, change_day, change_day + hours * 3600, now)
        assert len(minutes) == hours * 12
        energy_wh = sum(minutes.values()) * 300 / 3600
        assert got[change_day] / 3600 == pytest.approx(energy_wh, rel=1e-5, abs=0.5)


def test_faults_cost_queries_never_points() -> None:
    now = utc("2026-10-26T12:00:00")
    records = records_at(now, BERLIN, days=3)
    start, end = now - 2 * 86_400, now
    querier = ModelQuerier(records, random.Random(3), cut=0.1, garble=0.05, lose=0.05)
    rows = list(rows_for("minutes")) + list(rows_for("month"))
    collect, reader = read(records, InverterClock(BERLIN), rows, True, start, end, now, querier)
    assert reader.unread == []
    stats = reader.stats
    assert stats.reasked > 10 and stats.unanswered > 5
    assert sum(stats.bad_answers.values()) == stats.reasked
    for row in rows_for("minutes"):
        assert collect.got[row] == truth(records, row, start, end, now)
    table = records.events.events(now)
    assert sorted(e.start for e in collect.event_list) == sorted(e.start for e in table if start <= e.start < end)
    assert len({e.raw.key for e in collect.event_list}) == len(collect.event_list)


def test_a_logger_step_too_fine_to_cross_the_repeated_hour_in_one_answer_is_reported_not_skipped() -> None:
    # one entry a minute: 60 per pass through the repeated hour, more than the longest answer holds
    now = utc("2026-10-25T06:00:00")
    records = records_at(now, BERLIN, days=1, step=60)
    start, end = utc("2026-10-24T22:00:00"), now
    row = rows_for("minutes")[0]
    collect, reader = read(records, InverterClock(BERLIN), [row], False, start, end, now)
    got, expected = collect.got[row], truth(records, row, start, end, now)
    assert set(got) <= set(expected) and all(got[i] == expected[i] for i in got)
    missing = sorted(set(expected) - set(got))
    if missing:  # whatever could not be read is named, inside the first pass through the hour
        assert reader.unread and all(utc("2026-10-25T00:00:00") <= i < utc("2026-10-25T01:00:00") for i in missing)
        assert any(u.start <= missing[0] and missing[-1] < u.end for u in reader.unread)


def test_a_long_window_is_read_in_daily_chains_in_parallel() -> None:
    clock = InverterClock(BERLIN)
    start, end = utc("2026-10-20T10:00:00"), utc("2026-10-27T10:00:00")
    spans = chunks(rows_for("minutes")[0], start, end, clock)
    assert spans[0][0] == start and spans[-1][1] == end and len(spans) == 8
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert chunks(rows_for("day")[0], start, end, clock) == [(start, end)]


def test_nothing_older_than_the_ring_means_the_chain_ends() -> None:
    now = utc("2026-07-01T12:00:00")
    records = records_at(now, BERLIN, days=1)
    row = rows_for("minutes")[0]
    collect, reader = read(records, InverterClock(BERLIN), [row], False, now - 5 * 86_400, now, now)
    assert reader.unread == []
    assert collect.got[row] == truth(records, row, now - 5 * 86_400, now, now)
    assert len(collect.got[row]) == 288


# --- the simulator's records -----------------------------------------------------------------------------------------

def test_months_are_sums_of_days_and_days_of_five_minute_entries() -> None:
    now = utc("2026-11-03T09:17:00")
    model = records_at(now, BERLIN, days=40).logger
    for suffix in ("eac", "egrid_feed", "eload"):
        days = model.period_entries("day", suffix, now)
        months = model.period_entries("month", suffix, now)
        years = model.period_entries("year", suffix, now)
        for month_start, energy in months:
            month_days = [e for s, e in days if model._period_start(s, "month") == month_start]
            assert energy == pytest.approx(sum(month_days), rel=1e-5)
        assert years[-1][1] == pytest.approx(sum(e for _, e in months), rel=1e-5)
        day_start, day_energy = days[-2]
        minutes = model.minute_entries(suffix, day_start, days[-1][0], now)
        assert day_energy == pytest.approx(sum(v for _, v in minutes) * 300 / 3600, rel=1e-5)
    feed = model.minute_entries("egrid_feed", now - 86_400, now, now)
    assert all(v <= 0 for _, v in feed) and any(v < 0 for _, v in feed)  # feed-in is negative, as on the inverter
    soc = model.minute_entries("soc", now - 86_400, now, now)
    assert all(0.0 <= v <= 1.0 for _, v in soc)


def test_answers_hold_a_varying_number_of_entries_newest_first() -> None:
    now = utc("2026-06-10T12:00:00")
    records = records_at(now, BERLIN, days=2)
    object_id = rows_for("minutes")[3].object_id
    stamp = records.logger.stamp(now)
    sizes = set()
    rng = random.Random(5)
    for _ in range(40):
        payload = records.logger.answer(object_id, stamp, rng)
        entries = [struct.unpack(">If", payload[4 + 8 * k:12 + 8 * k]) for k in range((len(payload) - 4) // 8)]
        stamps = [s for s, _ in entries]
        assert stamps == sorted(stamps, reverse=True) and stamps[0] < stamp
        sizes.add(len(entries))
    assert len(sizes) > 10 and min(sizes) >= 20 and max(sizes) <= 62


def test_new_events_appear_every_so_often() -> None:
    started = utc("2026-06-10T12:00:00")
    table = EventTable(5, 30.0, BERLIN, started, seed=1, clock=lambda: started)
    assert len(table.events(started)) == 5
    later = table.events(started + 95)
    assert len(later) == 8 and [e.start for e in later[5:]] == [started + 30, started + 60, started + 90]
    assert table.events(started + 95) == later  # the same whoever asks


def test_cut_short_answers_keep_their_length_mostly_wrong() -> None:
    rng = random.Random(2)
    payload = struct.pack(">I", 1) + b"".join(struct.pack(">If", 1000 - k, f32(k)) for k in range(30))
    cuts = [cut_short(payload, 8, rng) for _ in range(200)]
    assert all(len(c) < len(payload) for c in cuts)
    assert any(len(c) % 4 for c in cuts) and any(len(c) % 4 == 0 and (len(c) // 4) % 2 == 0 for c in cuts)


def test_every_logger_row_is_served_by_the_simulator() -> None:
    from rctmon.simulator.logger import SERIES_BY_ID as SIMULATED
    assert set(SERIES_BY_ID) == set(SIMULATED)
    assert {row.resolution for row in LOGGER_SERIES} >= {MINUTES}


def test_a_reader_hands_on_values_in_base_units() -> None:
    now = utc("2026-06-10T12:00:00")
    records = records_at(now, BERLIN, days=2)
    feed = next(r for r in rows_for("day") if r.field == "grid_feed_energy")
    collect, _ = read(records, InverterClock(BERLIN), [feed], False, now - 86_400, now, now)
    raw = dict(records.logger.points(feed.object_name, 0, now, now))
    for instant, value in collect.got[feed].items():
        assert value == abs(raw[instant]) * 3600  # Wh -> J, feed-in as a magnitude


