"""What to ask the inverter when, and how many questions may be open at once.

A READ takes the inverter about 60 ms to answer; asking one object at a time caps a poll at ~16 values per second.
So requests are pipelined: up to `Window.limit` are in flight. Some peers answer only part of a burst, so the window
adapts like TCP's congestion window (additive increase, multiplicative decrease): it shrinks when requests go
unanswered and grows back by about one per window of answers. A lost request is noticed when later ones are
answered, or at its timeout, and is asked again. Tiers (`TierClock`) decide which objects are due.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections import deque
from dataclasses import dataclass
from typing import Callable, Deque, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from rctmon.catalog import Series, Tier
from rctmon.collector.connection import ReadOnlyLink
from rctmon.collector.framer import INVALID
from rctmon.config import Intervals
from rctmon.messages import RESPONSE_BUCKETS, CollectorStats

log = logging.getLogger("rctmon.collector.scheduler")

#: Attempts per request before it is given up until its next turn; a missing object must not block a poll.
MAX_ATTEMPTS = 4
#: A request counts as lost once this many requests sent after it have been answered. The inverter answers in
#: order; the threshold tolerates the odd answer to the same object that the vendor's app asked for.
REORDER_LIMIT = 3


class Window:
    """The number of requests allowed in flight: multiplicative decrease, additive increase, cautious probing.

    A request lost among answered ones (`loss`) halves the window; a timeout, where nothing came back at all, drops
    it to one, so the requests asked again go out one by one to a peer that loses bursts. The window then grows by
    one per window of answers, never beyond `maximum`. The size at which requests were lost becomes a ceiling: the
    window grows into it again only after `patience` answers in a row, and each loss while probing doubles that
    patience, so a peer that can take only so much is probed rarely instead of losing a request every few answers.
    Once a probe holds for a full window, the ceiling is forgotten. Each event cuts only once: requests sent
    before the last cut do not cut again.
    """

    PATIENCE = 8  # answers in a row before the window grows into the size that lost requests
    PATIENCE_MAX = 4096

    def __init__(self, maximum: int) -> None:
        self.maximum = max(1, maximum)
        self.size = self.maximum
        self.ceiling: Optional[int] = None  # smallest size that lost requests since the last successful probe
        self.patience = self.PATIENCE
        self._streak = 0  # answers since the last change of size
        self._cut_at = float("-inf")

    @property
    def limit(self) -> int:
        return self.size

    def success(self) -> None:
        self._streak += 1
        if self.ceiling is not None and self.size >= self.ceiling and self._streak >= self.size:
            self.ceiling, self.patience = None, self.PATIENCE  # the probe held for a full window
        if self.size >= self.maximum:
            return
        probing = self.ceiling is not None and self.size + 1 >= self.ceiling
        if self._streak >= (self.patience if probing else self.size):
            self.size += 1
            self._streak = 0

    def loss(self, sent_at: float, now: float) -> None:
        """A request went unanswered while later ones were answered."""
        self._cut(sent_at, now, max(1, self.size // 2))

    def timeout(self, sent_at: float, now: float) -> None:
        """A request went unanswered and nothing else came back either."""
        self._cut(sent_at, now, 1)

    def _cut(self, sent_at: float, now: float, size: int) -> None:
        if sent_at < self._cut_at:
            return
        if self.ceiling is not None and self.size >= self.ceiling:
            self.patience = min(self.patience * 2, self.PATIENCE_MAX)  # the probe failed
        self.ceiling = self.size if self.ceiling is None else min(self.ceiling, self.size)
        self.size = size
        self._streak = 0
        self._cut_at = now


class ResponseTimes:
    """Keep the response-time histogram of `CollectorStats` (cumulative buckets, sum and count)."""

    def __init__(self, stats: CollectorStats) -> None:
        self._stats = stats
        self._counts = list(stats.response_buckets)

    def observe(self, seconds: float) -> None:
        counts = self._counts
        for index in range(bisect.bisect_left(RESPONSE_BUCKETS, seconds), len(counts)):
            counts[index] += 1
        stats = self._stats
        stats.response_buckets = tuple(counts)
        stats.response_count += 1
        stats.response_sum += seconds


@dataclass
class _InFlight:
    seq: int  # sending order
    sent_at: float
    attempt: int
    passed: int = 0  # answers to requests sent after this one


class _Read:
    """A caller waiting for a set of objects to be answered (or given up)."""

    def __init__(self, object_ids: Iterable[int], loop: asyncio.AbstractEventLoop) -> None:
        self.remaining: Set[int] = set(object_ids)
        self.values: Dict[int, object] = {}
        self.future: "asyncio.Future[Dict[int, object]]" = loop.create_future()

    def settle(self, object_id: int, value: object) -> bool:
        """Record an outcome; return True when the read is complete."""
        if object_id not in self.remaining:
            return False
        self.remaining.discard(object_id)
        if value is not INVALID:
            self.values[object_id] = value
        if not self.remaining and not self.future.done():
            self.future.set_result(self.values)
        return not self.remaining


class Poller:
    """Send queued requests within the window, time them out, ask again, and match answers to requests.

    A request is lost when `REORDER_LIMIT` requests sent after it were answered (found out within a few round
    trips, like TCP's fast retransmit), or when `request_timeout` has passed both since it was sent and since the
    last answer to one of our requests: while a slow inverter is still working through a pipelined burst, the
    requests at the end of the burst are not late, and a peer that answers nothing is found out after one timeout.
    """

    def __init__(self, link: ReadOnlyLink, window: Window, stats: CollectorStats, request_timeout: float,
                 max_attempts: int = MAX_ATTEMPTS, on_idle: Optional[Callable[[], None]] = None) -> None:
        self._link = link
        self._window = window
        self._stats = stats
        self._timeout = request_timeout
        self._max_attempts = max_attempts
        self._on_idle = on_idle
        self._loop = asyncio.get_running_loop()
        self._queue: Deque[int] = deque()
        self._queued: Dict[int, int] = {}  # object id -> attempt it will be sent as
        self._in_flight: Dict[int, _InFlight] = {}  # in sending order
        self._reads: List[_Read] = []
        self._timer: Optional[asyncio.TimerHandle] = None
        self._last_progress = float("-inf")
        self._seq = 0
        self._times = ResponseTimes(stats)
        self.waiting_since: Optional[float] = None  # first request sent since the last answer
        self.given_up = 0
        self._closed = False

    @property
    def idle(self) -> bool:
        return not self._queue and not self._in_flight

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def ask(self, object_ids: Iterable[int], urgent: bool = False) -> None:
        """Queue requests (once each: ids already queued or in flight are skipped) and send what the window allows."""
        new = [i for i in object_ids if i not in self._queued and i not in self._in_flight]
        if urgent:
            self._queue.extendleft(reversed(new))
        else:
            self._queue.extend(new)
        for object_id in new:
            self._queued[object_id] = 1
        self._pump()

    async def read(self, object_ids: Sequence[int]) -> Dict[int, object]:
        """Ask for objects ahead of the regular polls; return the values of those answered before being given up."""
        pending = _Read(object_ids, self._loop)
        if not pending.remaining:
            return {}
        self._reads.append(pending)
        try:
            self.ask(object_ids, urgent=True)
            return await pending.future
        finally:
            self._reads.remove(pending)

    def heard(self) -> None:
        """Note that the inverter sent a valid frame (answer to us or not): it is not silent."""
        self.waiting_since = None

    def resolve(self, object_id: int, value: object, now: float) -> None:
        """Take an answer (value or INVALID); if it answers one of our requests, close that request."""
        for pending in self._reads:
            pending.settle(object_id, value)
        request = self._in_flight.pop(object_id, None)
        if request is None:
            return
        self._last_progress = now
        self._times.observe(now - request.sent_at)
        self._window.success()
        lost: List[Tuple[int, _InFlight]] = []
        # with few requests in flight, few later answers can ever come: lower the bar (TCP's early retransmit)
        limit = min(REORDER_LIMIT, max(1, self._window.limit - 1))
        for other_id, other in self._in_flight.items():
            if other.seq > request.seq:
                break
            other.passed += 1
            if other.passed >= limit:
                lost.append((other_id, other))
        if lost:
            self._lose(lost, now)
        self._pump()
        if self.idle and self._on_idle is not None:
            self._on_idle()

    def close(self) -> None:
        """Forget everything (the connection is gone); waiting readers get what they have so far."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for pending in self._reads:
            if not pending.future.done():
                pending.future.set_result(pending.values)
        self._queue.clear()
        self._queued.clear()
        self._in_flight.clear()

    def _pump(self) -> None:
        if self._closed:
            return
        room = self._window.limit - len(self._in_flight)
        if room <= 0 or not self._queue:
            return
        now = self._loop.time()
        batch: List[int] = []
        while room > 0 and self._queue:
            object_id = self._queue.popleft()
            attempt = self._queued.pop(object_id)
            self._seq += 1
            self._in_flight[object_id] = _InFlight(self._seq, now, attempt)
            batch.append(object_id)
            room -= 1
        self._link.read(batch)
        if self.waiting_since is None:
            self.waiting_since = now
        if self._timer is None:
            self._arm()

    def _deadline(self, request: _InFlight) -> float:
        return max(request.sent_at, self._last_progress) + self._timeout

    def _arm(self) -> None:
        if self._in_flight and not self._closed:
            oldest = next(iter(self._in_flight.values()))
            self._timer = self._loop.call_at(self._deadline(oldest), self._expire)

    def _expire(self) -> None:
        self._timer = None
        now = self._loop.time()
        late: List[Tuple[int, _InFlight]] = []
        for object_id, request in self._in_flight.items():
            if self._deadline(request) > now:
                break  # sent later, so due later
            late.append((object_id, request))
        self._stats.request_timeouts += len(late)
        self._lose(late, now, timed_out=True)
        self._pump()
        if self._timer is None:
            self._arm()
        if self.idle and self._on_idle is not None:
            self._on_idle()

    def _lose(self, lost: List[Tuple[int, _InFlight]], now: float, timed_out: bool = False) -> None:
        """Take lost requests out of flight: ask them again first, or give them up after MAX_ATTEMPTS."""
        retry: List[int] = []
        cut = self._window.timeout if timed_out else self._window.loss
        for object_id, request in lost:
            del self._in_flight[object_id]
            cut(request.sent_at, now)
            if request.attempt < self._max_attempts:
                retry.append(object_id)
                self._queued[object_id] = request.attempt + 1
            else:
                self.given_up += 1
                log.debug("no answer for object 0x%08X after %d attempts", object_id, request.attempt)
                for pending in self._reads:
                    pending.settle(object_id, INVALID)
        if lost:
            log.debug("%d requests lost, window now %d", len(lost), self._window.limit)
        self._queue.extendleft(reversed(retry))


class TierClock:
    """When each polling tier is due next; every tier is due at the start."""

    def __init__(self, intervals: Intervals, now: float) -> None:
        self._intervals: Mapping[Tier, float] = {tier: float(getattr(intervals, tier.value)) for tier in Tier}
        self._next: Dict[Tier, float] = {tier: now for tier in Tier}

    def due(self, now: float) -> List[Tier]:
        """Return the tiers due now (in declaration order: fast first) and schedule their next turn."""
        tiers = [tier for tier in Tier if self._next[tier] <= now]
        for tier in tiers:
            self._next[tier] = now + self._intervals[tier]
        return tiers

    def next_due(self) -> float:
        return min(self._next.values())


def ids_by_tier(series: Iterable[Series]) -> Dict[Tier, Tuple[int, ...]]:
    """Group series' object ids by tier, keeping catalog order."""
    groups: Dict[Tier, List[int]] = {tier: [] for tier in Tier}
    for s in series:
        groups[s.tier].append(s.object_id)
    return {tier: tuple(ids) for tier, ids in groups.items()}
