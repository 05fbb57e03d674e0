"""The influxdb child's handling of the inverter's events: spooled with the readings, acknowledged like them."""

from __future__ import annotations

import time
from pathlib import Path
from collections.abc import Iterator

import pytest

from rctmon import catalog
from rctmon.exporters.influxdb import Receiver
from rctmon.exporters.influxwriter import StatsBox
from rctmon.exporters.spool import Spool
from rctmon.history.events import Event
from rctmon.history.outputs import LineFormat
from rctmon.history.protocol import RawEvent
from rctmon.inventory import Inventory
from rctmon.messages import InverterEvents, ReadingBatch

NAME = "Barn PS 6.0"
START = 1_796_000_000
EVENTS = (
    Event(RawEvent(ord("Z"), START, START + 3600, START + 3750, 3, 1), "NO_GRID", START, START + 150,
          {"code": "Z", "end": START + 150, "duration": 150.0, "case": 3, "element2": START + 3750, "element3": 3,
           "element4": 1}),
    Event(RawEvent(ord("w"), START + 60, START + 3660, 0, 5185, 5220), "UPDATE", START + 60, None,
          {"code": "w", "old_version": 5185, "new_version": 5220, "element2": 0, "element3": 5185, "element4": 5220}),
)


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    opened = Spool(tmp_path / "spool.sqlite", 100_000)
    try:
        yield opened
    finally:
        opened.close()


def test_events_become_the_points_the_history_command_writes_and_are_acknowledged(spool: Spool) -> None:
    receiver = Receiver(spool, StatsBox())
    receiver.inventory(Inventory(name=NAME, complete=True))
    power = catalog.SERIES_BY_NAME["g_sync.p_ac_sum_lp"].object_id  # batches and events travel together
    receiver.add(ReadingBatch(((power, 12.5, time.time_ns()),), seq=4))
    receiver.add(InverterEvents(EVENTS, new=True, seq=5))
    assert receiver.commit() == 5
    lines = [line for _, line in spool.peek(100)]
    expected = [LineFormat(NAME).event(event) for event in EVENTS]
    assert len(lines) == 3 and lines[0].startswith(b"inverter,") and lines[1:] == expected
    assert expected[0].startswith(b"inverter_event,inverter=Barn\\ PS\\ 6.0,type=NO_GRID ")
    assert expected[0].endswith(f" {START * 1_000_000_000}".encode())


def test_the_tables_past_is_acknowledged_but_not_stored(spool: Spool) -> None:
    receiver = Receiver(spool, StatsBox())
    receiver.inventory(Inventory(name=NAME, complete=True))
    receiver.add(InverterEvents(EVENTS, new=False, seq=3, store=False))  # the backfill's to fill
    assert receiver.commit() == 3 and spool.count == 0


def test_events_before_the_inverters_name_are_dropped_and_counted(spool: Spool) -> None:
    stats = StatsBox()
    receiver = Receiver(spool, stats)
    receiver.add(InverterEvents(EVENTS, new=False, seq=1))
    assert receiver.commit() == 1  # acknowledged: nothing would bring them later
    assert spool.count == 0 and stats.snapshot(0).points_dropped == len(EVENTS)
