"""The collector's watch on the inverter's event table: events handed on as they happen.

Every medium interval the collector reads the event table from now back to the newest event it has read before,
as logger queries through the poller (a second, lower-priority class of request: live polls go out first) and with
the reader `rctmon history` uses (rctmon.history.engine): every answer is checked whole (rctmon.history.protocol),
and one that fails a check, garbled or cut short, is counted and asked again, so that no half event is ever handed
on. Usually that is one query a minute: its answer holds the newest few rows, and the newest row read before among
them ends the read.

What is new, across restarts, without a file of state: the collector's first complete read after it starts goes
back `history.max_gap` and is the *baseline*: the table as it was, handed on with `new` False. Those events are
history, not news: Prometheus shows the latest start of each type, MQTT announces nothing, and InfluxDB stores only
those that started since the collector did (`store`; the ones before are the backfill's, which fills the record up
to the moment of the connection, and with `history.backfill: false` the past is not filled at all). An event a
later read finds that the collector had not seen is new (`new` True): counted on /metrics, announced on MQTT,
stored. So a restart announces and counts nothing twice (the rule does not depend on the inverter's clock agreeing
with the host's); what happened while rctmon was not running reaches the latest-start gauge, and InfluxDB through
the backfill, not the counters (a counter that restarts at 0 is what Prometheus expects of a restarted process).

An event is identified by its type and start stamp (two events of a type that start in the same second are one
InfluxDB point anyway). How the inverter shows a ranged event while it lasts is not documented; if it fills in the
end later, the same event is read again with other fields: that is an *update*, handed on with `new` False (InfluxDB
stores the end on the same point; nothing is counted or announced twice). So that the end of an event still open is
seen, a read goes back to the oldest open event of the last OPEN_WATCH seconds, not only to the newest event.

A read that gives up (twelve refused answers or four queries nobody answered in a row, or the connection lost)
hands on the events it did read, each checked, and is done again from the same point at the next interval: the
point a read starts from moves only when a read completes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable
from collections.abc import Sequence

from rctmon.collector.scheduler import Poller
from rctmon.config import Config, device_timezone
from rctmon.history.engine import HistoryStats, Reader
from rctmon.history.events import EVENT_TYPES_BY_CODE, Event
from rctmon.history.protocol import BAD_ANSWER_KINDS
from rctmon.history.series import LoggerRow
from rctmon.history.timezone import InverterClock
from rctmon.inventory import Inventory
from rctmon.messages import InverterEvents, Stats

log = logging.getLogger("rctmon.collector.events")

#: Events remembered (to know which are new) at most; more than this in `history.max_gap` is no working inverter.
MAX_KNOWN = 20_000
#: Events per message: a week of a busy table still travels in pieces the channel takes at once.
EVENTS_PER_MESSAGE = 1000
#: How long an event without its end is read again for its end (a longer one is read at the next start).
OPEN_WATCH = 86_400
Key = tuple[int, int, int, int, int]
Identity = tuple[int, int]  # (type code, start stamp)


def identity(event: Event) -> Identity:
    return (event.raw.code, event.raw.stamp)


def is_open(event: Event) -> bool:
    """Return whether the event is a ranged one whose end the table does not (yet) tell."""
    known = EVENT_TYPES_BY_CODE.get(event.raw.code)
    return known is not None and known.ranged and event.end is None


class _Found:
    """The reader's consumer: collects the events of one read (the reader hands them on newest first)."""

    def __init__(self) -> None:
        self.found: list[Event] = []

    async def points(self, row: LoggerRow, points: list[tuple[int, float]]) -> None:
        """Unused: the watch reads the event table only."""

    async def events(self, events: list[Event]) -> None:
        self.found.extend(events)


class EventWatch:
    """Read the event table each medium interval; hand on the baseline once, then every event not seen before.

    It lives as long as the collector (reconnects keep what it knows); `watch` runs for one connection.
    """

    def __init__(self, config: Config, hand_on: Callable[[InverterEvents], None],
                 now: Callable[[], float] = time.time) -> None:
        self._interval = float(config.device.intervals.medium)
        self._max_gap = float(config.history.max_gap)
        self._clock = InverterClock(device_timezone(config.device))
        self._hand_on = hand_on
        self._now = now
        self._known: dict[Identity, tuple[Key, int]] = {}  # every event read within max_gap -> (its row, start)
        self._open: dict[Identity, int] = {}  # ranged events read without an end -> start
        self._start_from: int | None = None  # where the next read stops: None until the baseline is complete
        self.history = HistoryStats()  # queries, answers refused by kind, queries nobody answered
        self.incomplete_reads = 0
        self.last_read_seconds = 0.0  # when a read last completed (UNIX seconds)
        self.new_events = 0
        self._started = int(now())  # the first read stores the events since then (the backfill fills before it)

    @property
    def baseline_done(self) -> bool:
        return self._start_from is not None

    async def watch(self, poller: Poller, ready: asyncio.Event, inventory: Callable[[], Inventory | None]) -> None:
        """Read the table now and every medium interval while this connection lasts.

        Only once the inverter has a name to tag events with (or its inventory is complete): what is read before
        could not be written anywhere.
        """
        await ready.wait()
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self._interval
            current = inventory()
            if current is not None and (current.name or current.complete):
                await self.read(poller)
            await asyncio.sleep(max(0.0, due - loop.time()))

    async def read(self, poller: Poller) -> None:
        """Read the table back to the newest event read before (the first time: `history.max_gap`); hand it on."""
        now = self._now()
        baseline = self._start_from is None
        start = int(now - self._max_gap) if self._start_from is None else self._start_from
        start = min([start, *self._open.values()])
        found = _Found()
        reader = Reader(poller, self._clock, found, self.history, concurrency=1, now=self._now)
        await reader.run((), True, start, int(now) + 1)
        complete = not reader.unread
        if not complete:
            self.incomplete_reads += 1
        fresh: list[Event] = []
        updated: list[Event] = []
        # the reader hands events on newest first; oldest first is the order they happened in
        for event in reversed(found.found):
            known = self._known.get(identity(event))
            if known is None:
                fresh.append(event)
            elif known[0] != event.raw.key:
                updated.append(event)
            else:
                continue
            self._known[identity(event)] = (event.raw.key, event.start)
            if is_open(event):
                self._open[identity(event)] = event.start
            else:
                self._open.pop(identity(event), None)
        self._forget(now)
        if complete:
            self.last_read_seconds = self._now()
            newest = max((start for _, start in self._known.values()), default=None)
            self._start_from = newest if newest is not None else start
        if updated:
            log.info("%d inverter events read again with other fields (an end filled in): %s", len(updated),
                     ", ".join(sorted({e.type for e in updated})))
            self._send(updated, new=False)
        if not fresh:
            return
        if baseline:
            log.info("event table read: %d events in the last %s s (history, not news)", len(fresh),
                     f"{self._max_gap:g}")
            self._send([e for e in fresh if e.start < self._started], new=False, store=False)
            self._send([e for e in fresh if e.start >= self._started], new=False)
        else:
            self.new_events += len(fresh)
            log.info("%d new inverter events: %s", len(fresh), ", ".join(sorted({e.type for e in fresh})))
            self._send(fresh, new=True)

    def _send(self, events: Sequence[Event], new: bool, store: bool = True) -> None:
        for index in range(0, len(events), EVENTS_PER_MESSAGE):
            self._hand_on(InverterEvents(tuple(events[index:index + EVENTS_PER_MESSAGE]), new, store=store))

    def _forget(self, now: float) -> None:
        """Forget events older than max_gap (no read reaches them), and the oldest beyond MAX_KNOWN; stop watching
        for the end of an event open longer than OPEN_WATCH."""
        horizon = now - self._max_gap - self._interval
        known = self._known
        if len(known) > MAX_KNOWN or any(start < horizon for _, start in known.values()):
            kept = sorted(((start, ident, key) for ident, (key, start) in known.items() if start >= horizon),
                          reverse=True)
            self._known = {ident: (key, start) for start, ident, key in kept[:MAX_KNOWN]}
        open_horizon = now - min(self._max_gap, OPEN_WATCH)
        self._open = {ident: start for ident, start in self._open.items()
                      if start >= open_horizon and ident in self._known}

    def stats(self) -> Stats:
        """Return the figures the collector's heartbeat carries for its health metrics."""
        refused = {kind: float(self.history.bad_answers.get(kind, 0)) for kind in BAD_ANSWER_KINDS}
        return {"event_table_queries": self.history.queries, "event_table_refused": refused,
                "event_table_unanswered": self.history.unanswered,
                "event_table_incomplete_reads": self.incomplete_reads,
                "event_table_last_read": self.last_read_seconds}
