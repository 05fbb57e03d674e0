"""The backfill: fill the holes in the record from the inverter's own logger, in the idle slots of the connection.

On every connection the collector first declares the hole since the record was last complete (the time it was
away: a stop, an outage; `history.first_start` back on a first install; never more than `history.max_gap`), before
any live reading of the connection is sent; the influxdb child marks it missing in the history record
(rctmon/history/record.py). Then, once the inverter's name is known, the backfill reads every missing span of the
5-minute series and of the event table with the history command's reader (rctmon/history/engine.py) through the
poller's low-priority queries, which go out only while no live request waits. What it reads goes, as line protocol
in BackfillBatches, through the supervisor to the influxdb child and its spool, numbered and acknowledged like
readings; each batch says which spans its lines (and the ones before) complete, and the influxdb child marks them
filled only once they are in the spool. So a kill of the collector or the influxdb child resumes at the last span
made durable: nothing is skipped, and what is read twice is written with the same series and timestamps, which
InfluxDB stores as one point.

The logger writes a 5-minute entry when its step ends, stamped with the step's start: at the moment of the
connection, the entry of the step in progress is not there yet, although it belongs to the hole. So the newest
part of a hole (after the newest entry) is marked filled only once a whole step has passed since the hole's end;
until then the backfill comes back for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Callable, Protocol
from collections.abc import Sequence

from rctmon.config import Config, device_timezone
from rctmon.exporters.lineprotocol import inverter_tag
from rctmon.history import record as records
from rctmon.history.engine import Querier, Reader, Span, Unread
from rctmon.history.events import Event
from rctmon.history.outputs import LineFormat
from rctmon.history.series import EVENT_OBJECT, LoggerRow, rows_for
from rctmon.history.timezone import InverterClock
from rctmon.inventory import Inventory
from rctmon.messages import BackfillBatch, CollectorStats, RecordSpan

log = logging.getLogger("rctmon.collector")

#: Lines per BackfillBatch at most (a batch is also sent when a pass ends, and every FLUSH_EVERY seconds).
BATCH_LINES = 2000
FLUSH_EVERY = 1.0
#: The logger's step when an answer does not show it (two entries or more do).
DEFAULT_STEP = 300
#: Holes shorter than this are filled without a log line.
QUIET_BELOW = 60
#: Seconds before a pass that left spans unread (unanswered, refused, or a batch the channel refused) is retried;
#: doubled after every pass that filled nothing, up to RETRY_WAIT_MAX (a logger that never answers costs little).
RETRY_WAIT = 60.0
RETRY_WAIT_MAX = 3600.0


class BackfillSink(Protocol):
    """Where the backfill sends its batches; False when the batch could not be sent (it is read again later)."""

    def backfill(self, batch: BackfillBatch) -> bool: ...


class Backfill:
    """The collector's backfill: declare the hole on each connection, then fill what the record lacks."""

    def __init__(self, config: Config, sink: BackfillSink, stats: CollectorStats, record_path: Path,
                 now: Callable[[], float] = time.time) -> None:
        self._settings = config.history
        self._concurrency = 2 * config.device.max_in_flight
        self._clock = InverterClock(device_timezone(config.device))
        self._sink = sink
        self._stats = stats
        self._path = record_path
        self._now = now
        self._rows = {row.object_name: row for row in rows_for("minutes")}
        #: A copy of the influxdb child's record, updated with what this process sent (None: not read yet).
        self.record: records.Record | None = None
        self._steps: dict[str, int] = {}  # the logger's step per series, as its answers show it
        self._span_ends: set[tuple[str, int]] = set()  # (object, end) of the spans the current pass reads
        self._lines: list[bytes] = []
        self._done: list[RecordSpan] = []
        self._format: LineFormat | None = None

    def connected(self, last_live_ns: int) -> None:
        """Declare the hole in the record since it was last complete; call before any reading of the connection.

        `last_live_ns` is the newest reading this process sent (0: none yet): the record is complete until then.
        """
        now = int(self._now())
        if self.record is None:
            self.record = records.load(self._path, now, report=False)  # the influxdb child, its keeper, reports
        record = self.record
        if last_live_ns:
            record.live(last_live_ns // 1_000_000_000)
        since = now - int(self._settings.max_gap)
        if record.complete_until is None:
            start = now - int(self._settings.first_start)
        else:
            start = min(record.complete_until, now)
        start = max(start, since)
        gaps = tuple((name, start, now) for name in records.BACKFILLED) if start < now else ()
        batch = BackfillBatch(gaps=gaps, since=since)
        if not self._sink.backfill(batch):
            log.warning("could not hand on the gap in the record (%d s); it is filled now but not remembered",
                        now - start)
        record.apply(batch)
        record.live(now)
        pending = record.pending_seconds()
        if pending:
            # a reconnect after a few seconds leaves a hole of a few seconds: not worth a line each time
            log.log(logging.INFO if pending >= QUIET_BELOW else logging.DEBUG,
                    "the record lacks %s; filling it from the inverter's logger", _span_text(pending))

    async def run(self, querier: Querier, inventory: Inventory) -> None:
        """Fill what the record lacks, in passes, until nothing is missing; return then."""
        assert self.record is not None, "connected() first"
        self._format = LineFormat(inverter_tag(inventory) or "unknown")
        if not self.record.missing:
            return
        started = time.monotonic()
        fruitless = 0  # passes in a row that filled nothing
        while True:
            before = _missing_seconds(self.record)
            unread = await self._pass(querier, self.record.spans())
            if not self.record.missing:
                log.info("the record is complete again (backfill: %.1f s)", time.monotonic() - started)
                return
            # per object, not the union: a pass that filled one series while another failed was not fruitless
            fruitless = 0 if _missing_seconds(self.record) < before else fruitless + 1
            wait = self._wait(fruitless)
            if unread:
                first = unread[0]
                log.warning("the backfill could not read %d spans (%s, %d s: %s%s); trying again in %s", len(unread),
                            first.what, first.end - first.start, first.reason,
                            f"; and {len(unread) - 1} more" if len(unread) > 1 else "", _span_text(wait))
            await asyncio.sleep(wait)

    async def _pass(self, querier: Querier, spans: Sequence[RecordSpan]) -> list[Unread]:
        """Read every span once; return those the reader gave up."""
        reading: list[Span] = []
        for name, start, end in spans:
            row = self._rows.get(name)
            if row is not None or name == EVENT_OBJECT:
                reading.append((row, start, end))
        self._span_ends = {(name, end) for name, _, end in spans}
        reader = Reader(querier, self._clock, self, concurrency=self._concurrency, now=self._now,
                        progress=self._progress, unread_level=logging.DEBUG)
        flusher = asyncio.ensure_future(self._flush_often())
        try:
            await reader.run_spans(reading)
        finally:
            flusher.cancel()
            self.flush()
            self._note(reader)
        return reader.unread

    def _note(self, reader: Reader) -> None:
        counted = self._stats.history_backfill_reasked
        for kind, count in reader.stats.bad_answers.items():
            if count:
                counted[kind] = counted.get(kind, 0) + count

    def _wait(self, fruitless: int) -> float:
        """Return how long to wait before the next pass: until the newest step is written, or the retry wait."""
        assert self.record is not None
        now = self._now()
        ripe = [end + self._steps.get(name, DEFAULT_STEP) + 1 - now for name, _, end in self.record.spans()
                if name != EVENT_OBJECT]
        waits = [wait for wait in ripe if wait > 0]
        retry = min(RETRY_WAIT * float(2 ** min(max(0, fruitless - 1), 8)), RETRY_WAIT_MAX)
        return max(1.0, min([*waits, retry]))

    # --- the reader's consumer and progress --------------------------------------------------------------------

    async def points(self, row: LoggerRow, points: list[tuple[int, float]]) -> None:
        assert self._format is not None
        self._lines.extend(self._format.points(row, points))
        if len(self._lines) >= BATCH_LINES:
            self.flush()

    async def events(self, events: list[Event]) -> None:
        assert self._format is not None
        self._lines.extend(self._format.event(event) for event in events)
        if len(self._lines) >= BATCH_LINES:
            self.flush()

    def _progress(self, name: str, start: int, end: int, instants: Sequence[int]) -> None:
        """Note that [start, end) of an object is read and its entries handed on: filled once they are sent."""
        if name != EVENT_OBJECT:
            steps = [newer - older for newer, older in zip(instants, instants[1:]) if newer > older]
            if steps:
                self._steps[name] = min(steps)
            if (name, end) in self._span_ends and self._now() < end + self._steps.get(name, DEFAULT_STEP):
                # the newest part of a hole: the entry of the step in progress at its end is not written yet
                newest = max(instants, default=start - 1)
                end = min(end, newest + 1)
        if start < end:
            self._done.append((name, start, end))

    async def _flush_often(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            self.flush()

    def flush(self) -> None:
        """Send the lines read so far and the spans they fill; a batch refused is read again in a later pass."""
        if not (self._lines or self._done):
            return
        batch = BackfillBatch(tuple(self._lines), tuple(self._done))
        self._lines.clear()
        self._done.clear()
        if self._sink.backfill(batch):
            if self.record is not None:
                self.record.apply(batch)
        else:
            log.debug("a backfill batch of %d lines was refused; its spans are read again", len(batch.lines))


def _missing_seconds(record: records.Record) -> int:
    """Return the missing time summed over every object (it falls with any span filled)."""
    return sum(end - start for _, start, end in record.spans())


def _span_text(seconds: float) -> str:
    whole = int(seconds)
    days, hours, minutes = whole // 86400, whole % 86400 // 3600, whole % 3600 // 60
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min" if minutes else f"{whole} s"
