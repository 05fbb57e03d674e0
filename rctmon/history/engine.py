"""Read a window of the inverter's records: many chains of queries at once, each checked, stitched, deduplicated.

One query returns a varying number of entries recorded before the stamp asked (rctclient: about seven queries for a
day of one 5-minute series), and the next query of the same series starts at the oldest entry of the previous
answer: one series is a chain of queries, one round trip per link. Asking one query at a time would leave the
collector's window of requests in flight nearly empty (90 days of every 5-minute series: about 14,000 queries,
15 minutes at 60 ms). So the window is cut into chains that can run side by side: every series is read at once, and
a long span of a 5-minute series is split into one chain per local day. `concurrency` chains run together, each
with one query open; the poller sends them within its window, after any live request.

Each chain keeps what is new (inside its own span, older than what it already has), moves its next question to the
oldest entry it got, and ends when it has passed the start of its span or the logger has nothing older. Answers
that fail the checks of `protocol` are asked again and counted; so are queries nobody answered. A chain that makes
no progress (the same entries again and again) is given a few tries, then moved past the spot, and the span it
could not read is reported, never silently skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol
from collections.abc import Sequence

from rctmon.history.events import Event, decode
from rctmon.history.protocol import BAD_ANSWER_KINDS, BadAnswer, check_events, check_timeseries, finite
from rctmon.history.series import EVENT_ID, MINUTES, LoggerRow
from rctmon.history.timezone import InverterClock

log = logging.getLogger("rctmon.history")

#: Chains that run at once: twice the default window, so that the window stays full while answers come back.
CONCURRENCY = 32
#: Answers in a row that fail the checks before a chain gives up its span (at 5 % corrupt answers: never).
MAX_BAD_ANSWERS = 12
#: Queries in a row nobody answered (each already asked `MAX_ATTEMPTS` times by the poller) before a chain gives up.
MAX_UNANSWERED = 4
#: Answers in a row that bring nothing older before a chain is moved past the spot.
MAX_STUCK = 8
#: The longest stretch of stamps that can be ambiguous (the repeated autumn hour, with room for odd zones).
FOLD_SEARCH = 2 * 3600


class Querier(Protocol):
    """What sends logger queries: the collector's Poller (`query`) or anything with the same behaviour."""

    async def query(self, object_id: int, timestamp: int) -> bytes | None: ...


class Consumer(Protocol):
    """Where read records go: an output (line protocol, OpenMetrics, CSV, InfluxDB) or a test."""

    async def points(self, row: LoggerRow, points: list[tuple[int, float]]) -> None: ...

    async def events(self, events: list[Event]) -> None: ...


@dataclass
class HistoryStats:
    """Counters of one import (or, for issue 14, of the daemon's backfill): what was asked, got, refused."""

    queries: int = 0  # queries asked (each retry counts)
    answers: int = 0  # answers that passed every check
    reasked: int = 0  # answers that failed a check and were asked again
    unanswered: int = 0  # queries the poller gave up on (no answer after its attempts), asked again
    bad_answers: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BAD_ANSWER_KINDS, 0))
    points: int = 0  # values handed on
    events: int = 0  # events handed on
    invalid_values: int = 0  # logged values that are not numbers (NaN, infinite): dropped
    unread_spans: int = 0  # spans a chain had to give up


@dataclass(frozen=True)
class Unread:
    """A span of one series (or the event table) that could not be read, and why."""

    what: str  # rctclient object name
    start: int
    end: int
    reason: str


#: A span to read: a series (None: the event table) over [start, end).
Span = tuple[Optional[LoggerRow], int, int]
#: Told that a chain has read [start, end) of an object (its rctclient name) completely and handed on what lies there;
#: `instants` are those of the answer that brought it, newest first (empty when the logger had nothing older).
Progress = Callable[[str, int, int, Sequence[int]], None]


@dataclass
class _Job:
    """One chain: a series (None: the event table) over [start, end)."""

    row: LoggerRow | None
    start: int
    end: int
    done: int = 0  # seconds of the span covered so far
    reported: int = 0  # [start, reported) is what is left to report to `Progress` (set to `end` when it starts)

    @property
    def object_id(self) -> int:
        return self.row.object_id if self.row is not None else EVENT_ID

    @property
    def name(self) -> str:
        return self.row.object_name if self.row is not None else "logger.error_log_time_stamp"


class _GiveUp(Exception):
    """The chain cannot go on; the message says why."""


def chunks(row: LoggerRow, start: int, end: int, clock: InverterClock) -> list[tuple[int, int]]:
    """Return the spans a series' window is read in: one per local day for 5-minute series, else the whole window."""
    if row.resolution is not MINUTES or end - start <= (row.resolution.chunk or 0):
        return [(start, end)]
    spans = []
    edge = start
    midnight = clock.next_day(clock.day_start(start))
    while midnight < end:
        spans.append((edge, midnight))
        edge, midnight = midnight, clock.next_day(midnight)
    spans.append((edge, end))
    return spans


class Reader:
    """Read series and the event table over a window through a Querier; hand what is read to a Consumer."""

    def __init__(self, querier: Querier, clock: InverterClock, consumer: Consumer, stats: HistoryStats | None = None,
                 concurrency: int = CONCURRENCY, now: Callable[[], float] = time.time,
                 progress: Progress | None = None, unread_level: int = logging.WARNING) -> None:
        """`progress` (the daemon's backfill) is told which part of each span is read, as soon as it is; a span
        given up is logged at `unread_level` (the backfill sums them up in a line of its own)."""
        self._querier = querier
        self._clock = clock
        self._consumer = consumer
        self.stats = stats if stats is not None else HistoryStats()
        self._concurrency = max(1, concurrency)
        self._now = now
        self._progress = progress
        self._unread_level = unread_level
        self._jobs: list[_Job] = []
        self.unread: list[Unread] = []

    @property
    def progress(self) -> float:
        """Return the share (0..1) of the window's chains covered so far."""
        total = sum(job.end - job.start for job in self._jobs)
        return sum(min(job.done, job.end - job.start) for job in self._jobs) / total if total else 1.0

    async def run(self, rows: Sequence[LoggerRow], events: bool, start: int, end: int) -> None:
        """Read every row (and the event table, if `events`) over [start, end)."""
        # a day, month or year entry is stamped with the period's start: take the period `start` falls in
        spans: list[Span] = [(None, start, end)] if events else []
        spans += [(row, self._clock.period_start(start, row.resolution.name), end) for row in rows]
        await self.run_spans(spans)

    async def run_spans(self, spans: Sequence[Span]) -> None:
        """Read each span of a series (or of the event table, row None); spans of one series must not overlap."""
        jobs = [_Job(None, start, end) for row, start, end in spans if row is None]
        chunked = [chunks(row, start, end, self._clock) for row, start, end in spans if row is not None]
        rows = [row for row, _, _ in spans if row is not None]
        # newest spans first, interleaved across series, so that every series advances together
        depth = max((len(c) for c in chunked), default=0)
        for index in range(depth):
            for row, pieces in zip(rows, chunked):
                if index < len(pieces):
                    span_start, span_end = pieces[-1 - index]
                    jobs.append(_Job(row, span_start, span_end))
        for job in jobs:
            job.reported = job.end
        self._jobs.extend(jobs)
        queue = deque(jobs)

        async def worker() -> None:
            while queue:
                await self._chain(queue.popleft())

        await asyncio.gather(*(worker() for _ in range(min(self._concurrency, len(jobs)))))

    def _report(self, job: _Job, start: int, instants: Sequence[int]) -> None:
        """Tell `progress` that [start, job.reported) is read (what lies there handed on already)."""
        start = max(start, job.start)
        if start < job.reported:
            if self._progress is not None:
                self._progress(job.name, start, job.reported, instants)
            job.reported = start

    async def _ask(self, job: _Job, asked: int) -> bytes:
        """Return an answer's payload, asking again while nobody answers (at most MAX_UNANSWERED times)."""
        for _ in range(MAX_UNANSWERED):
            self.stats.queries += 1
            payload = await self._querier.query(job.object_id, asked)
            if payload is not None:
                return payload
            self.stats.unanswered += 1
        raise _GiveUp(f"no answer to {MAX_UNANSWERED} queries in a row")

    def _reject(self, job: _Job, exc: BadAnswer, bad: int) -> int:
        self.stats.reasked += 1
        self.stats.bad_answers[exc.kind] = self.stats.bad_answers.get(exc.kind, 0) + 1
        log.debug("%s: answer refused (%s); asking again", job.name, exc)
        if bad + 1 >= MAX_BAD_ANSWERS:
            raise _GiveUp(f"{MAX_BAD_ANSWERS} answers in a row failed the checks (the last: {exc})")
        return bad + 1

    async def _chain(self, job: _Job) -> None:
        try:
            if job.row is None:
                await self._event_chain(job)
            else:
                await self._series_chain(job, job.row)
        except _GiveUp as exc:
            self._unread(job, job.start, job.end - job.done, str(exc))
        else:
            self._report(job, job.start, ())  # the logger holds nothing older, or the chain passed its start
        job.done = job.end - job.start

    def _unread(self, job: _Job, start: int, end: int, reason: str) -> None:
        if end <= start:
            return
        self.stats.unread_spans += 1
        self.unread.append(Unread(job.name, start, end, reason))
        log.log(self._unread_level, "%s: could not read %d s of records (%s)", job.name, end - start, reason)

    def _past_fold(self, stamp: int) -> int | None:
        """Return the first stamp before an ambiguous stretch that `stamp` lies in, or None if it lies in none."""
        candidates = self._clock.candidates
        if len(candidates(stamp)) < 2:
            return None
        earliest = stamp
        while len(candidates(earliest - 1)) == 2 and stamp - earliest < FOLD_SEARCH:
            earliest -= 1
        return earliest

    async def _series_chain(self, job: _Job, row: LoggerRow) -> None:
        clock, stats = self._clock, self.stats
        asked = clock.stamp(job.end)
        oldest: int | None = None  # the oldest instant this chain has handed on or passed
        bad = stuck = 0
        while True:
            payload = await self._ask(job, asked)
            try:
                entries = check_timeseries(payload, asked, clock, self._now())
            except BadAnswer as exc:
                bad = self._reject(job, exc, bad)
                continue
            bad = 0
            stats.answers += 1
            if not entries:
                return  # the logger holds nothing older
            fresh: list[tuple[int, float]] = []
            for entry in entries:
                if job.start <= entry.instant < job.end and (oldest is None or entry.instant < oldest):
                    if finite(entry.value):
                        fresh.append((entry.instant, row.convert(entry.value)))
                    else:
                        stats.invalid_values += 1
            if fresh:
                stats.points += len(fresh)
                await self._consumer.points(row, fresh)
            last = entries[-1]
            if oldest is not None and last.instant >= oldest:
                stuck += 1
                if stuck < MAX_STUCK:
                    continue
                # Asked inside the repeated autumn hour, the inverter starts from the second pass; answers too
                # short to reach back through it bring nothing new. Move the question before the hour.
                earlier = self._past_fold(last.stamp)
                if earlier is None or earlier >= asked:
                    raise _GiveUp(f"{MAX_STUCK} answers in a row brought nothing older")
                fold_start = clock.candidates(earlier)[0]  # where the first pass through the hour began
                self._unread(job, max(job.start, fold_start), oldest, "answers did not reach back through the "
                             "repeated autumn hour")
                job.reported = min(job.reported, max(job.start, fold_start))  # the span not read is no progress
                asked, stuck = earlier, 0
                continue
            stuck = 0
            oldest = last.instant
            job.done = job.end - max(oldest, job.start)
            self._report(job, oldest, [entry.instant for entry in entries])
            if oldest <= job.start:
                return
            asked = last.stamp
            if clock.candidates(asked)[-1] == oldest and len(clock.candidates(asked)) == 2:
                # The oldest entry is in the second pass through the repeated autumn hour. Asked for entries
                # before its stamp, the inverter would begin at the newest entry stamped earlier, which at the
                # start of the hour lies before the first pass: the whole first pass would be skipped. Asked one
                # second later, it begins at this entry again and goes on into the first pass.
                asked += 1

    async def _event_chain(self, job: _Job) -> None:
        clock, stats = self._clock, self.stats
        asked = clock.stamp(job.end)
        oldest: int | None = None
        seen: set[tuple[int, int, int, int, int]] = set()
        bad = stuck = 0
        while True:
            payload = await self._ask(job, asked)
            try:
                rows = check_events(payload, asked, clock, self._now())
            except BadAnswer as exc:
                bad = self._reject(job, exc, bad)
                continue
            bad = 0
            stats.answers += 1
            if not rows:
                return
            fresh = []
            for raw in rows:
                if job.start <= raw.instant < job.end and raw.key not in seen:
                    seen.add(raw.key)
                    fresh.append(decode(raw, clock))
            if fresh:
                stats.events += len(fresh)
                await self._consumer.events(fresh)
            last = rows[-1]
            if oldest is not None and last.instant >= oldest:
                # Nothing older than the second asked again: the table ends there, or that second holds more
                # events than an answer (then the ones that never fit are missed). Ask strictly before it.
                if asked == last.stamp:
                    stuck += 1
                    if stuck >= MAX_STUCK:
                        raise _GiveUp(f"{MAX_STUCK} answers in a row brought nothing older")
                asked = last.stamp
                continue
            stuck = 0
            oldest = last.instant
            job.done = job.end - max(oldest, job.start)
            # events of the oldest second may not all have fit: that second is read again, so not reported yet
            self._report(job, oldest + 1, [raw.instant for raw in rows])
            if oldest < job.start:
                return
            # one second later than the oldest: events of that second that did not fit come again (deduplicated)
            asked = last.stamp + 1
