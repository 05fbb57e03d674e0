"""The collector's watch on the event table (rctmon/collector/events.py) against the simulator over TCP.

Live values come first: the event table is read with logger queries, which the poller sends only while no live
read waits. A first read of a big table (thousands of rows, hundreds of queries) must not make the fast tier late.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from rctmon import catalog
from rctmon.collector.process import Collector
from rctmon.config import Intervals
from rctmon.messages import InverterEvents
from rctmon.simulator import SimulatorOptions, SimulatorThread

from test_collector import RecordingSink, device_config, wait_until

FAST = 1.0
TABLE = 3000  # events in the simulated table: about 400 queries for the first read
FAST_ID = catalog.SERIES_BY_NAME["g_sync.p_ac_sum_lp"].object_id


class TimedSink(RecordingSink):
    """A RecordingSink that notes when the events arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.events_at_ns: list[int] = []

    def inverter_events(self, events: InverterEvents) -> None:
        self.events_at_ns.append(time.time_ns())
        super().inverter_events(events)


@pytest.mark.timeout(90)
def test_the_first_read_of_a_big_table_keeps_the_fast_tier_on_time() -> None:
    options = SimulatorOptions(events=TABLE, latency_ms=10, seed=5)
    with SimulatorThread(options) as sim:
        config = device_config(sim.port)
        config.device.intervals = Intervals(fast=FAST, medium=2.0, slow=4.0, static=60.0)
        sink = TimedSink()
        collector = Collector(config, sink, reconnect_wait=(0.05, 0.5))

        def baseline() -> int:
            return sum(len(m.events) for m in sink.of("inverter_events"))

        async def main() -> None:
            task = asyncio.ensure_future(collector.run())
            try:
                await wait_until(lambda: sink.of("inventory"), 20, "the inventory")
                await wait_until(lambda: baseline() >= TABLE, 60, "the first read of the table")
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

        asyncio.run(main())

    messages: list[Any] = sink.of("inverter_events")
    assert baseline() == TABLE and not any(m.new for m in messages)  # the table's past: history, not news
    keys = [e.raw.key for m in messages for e in m.events]
    assert len(set(keys)) == len(keys)
    assert collector.events.history.queries > TABLE / 12  # at most 12 rows an answer

    fast = sorted(taken for object_id, _, taken in sink.readings_flat if object_id == FAST_ID)
    read_done = sink.events_at_ns[0]
    during = [t for t in fast if t <= read_done]
    assert read_done - during[0] > 3 * FAST * 1e9, "the read was too short to tell anything"
    gaps = [(b - a) / 1e9 for a, b in zip(during, during[1:])]
    assert max(gaps) <= 2 * FAST, f"the fast tier was late while the table was read: gaps {sorted(gaps)[-3:]}"
