"""What to ask the inverter when, and how many questions may be open at once.

A READ takes the inverter about 60 ms to answer; asking one object at a time caps a poll at ~16 values per second.
So requests are pipelined: up to `Window.limit` are in flight. Some peers answer only part of a burst, so the window
adapts like TCP's congestion window (additive increase, multiplicative decrease): it shrinks when requests go
unanswered and grows back by about one per window of answers. A peer that loses requests even when they are sent
one at a time loses them at random, not for want of room: for it the window keeps a floor. A lost request is noticed
when later ones are answered, or at its timeout (adaptive, like TCP's), and is asked again. Tiers (`TierClock`)
decide which objects are due.

Two classes of request share the window. Live READs (keyed by object id) come first. Logger queries (keyed by
(object id, timestamp): the question to the inverter's logger or event table, whose answer repeats the timestamp
as its first element) go out only while no live request waits, so a history import or backfill fills the idle
slots of the window without delaying a poll by more than the round trip of the query ahead of it.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Union
from collections.abc import Iterable, Mapping, Sequence

from rctmon.catalog import Series, Tier
from rctmon.collector.connection import ReadOnlyLink
from rctmon.collector.framer import INVALID
from rctmon.config import Intervals
from rctmon.messages import RESPONSE_BUCKETS, CollectorStats

log = logging.getLogger("rctmon.collector.scheduler")

#: Attempts per request before it is given up; a missing object must not block a poll. A request given up is asked
#: again (another MAX_ATTEMPTS) when the queue runs dry, up to ASK_ROUNDS rounds, then left until its tier comes round.
MAX_ATTEMPTS = 4
#: Rounds of MAX_ATTEMPTS for one request. At 30 % loss an object goes unanswered 4 times in a row once in 120 and
#: 8 times once in 15,000: with some 170 objects that is one start in 90 where a value (a module's cells, read every
#: 300 s) waits minutes for its tier; 12 times is one in 1.9 million objects. An object the inverter never answers
#: costs 12 requests per turn of its tier instead of 8.
ASK_ROUNDS = 3
#: A request counts as lost once this many requests sent after it have been answered. The inverter answers in
#: order; the threshold tolerates the odd answer to the same object that the vendor's app asked for.
REORDER_LIMIT = 3
#: Least adaptive request timeout (RFC 6298 asks for 1 s on the internet; a LAN inverter answers in ~60 ms, and
#: 0.2 s is TCP's practical minimum on Linux). The most is `device.request_timeout`, also used before any sample.
MIN_REQUEST_TIMEOUT = 0.2
#: Timeouts in a row, with no answer between, after which the request timeout doubles: at 30 % random loss a request
#: sent alone is lost twice in a row often (9 %), three times rarely (2.7 %); a silent peer gets there at once.
SILENT_TIMEOUTS = 3

#: A logger query: (object id, timestamp asked).
Query = tuple[int, int]
#: What identifies a request in flight: an object id (READ) or a logger query.
Key = Union[int, Query]


class Window:
    """The number of requests allowed in flight: multiplicative decrease, additive increase, cautious probing.

    A request lost among answered ones (`loss`) halves the window; a timeout, where nothing came back at all, drops
    it to one, so the requests asked again go out one by one to a peer that loses bursts. The window then grows by
    one per window of answers, never beyond `maximum`. The size at which requests were lost becomes a ceiling: the
    window grows into it again only after `patience` answers in a row, and each loss while probing doubles that
    patience, so a peer that can take only so much is probed rarely instead of losing a request every few answers.
    Once a probe holds for a full window, the ceiling is forgotten. Each event cuts only once: requests sent
    before the last cut do not cut again.

    Cutting helps only a peer that loses requests for want of room. One that loses a *lone* request (sent while
    nothing else was in flight) and answers the lone requests just before and just after it loses requests at
    random, as over a lossy link: at 30 % loss a window cut on every loss sits at one request, and every loss there
    costs a timeout. After `FLOOR_EVIDENCE` such losses the window gets a floor of `FLOOR`: cuts stop there, and a
    loss at the floor only restarts the count towards the next step up. A peer that merely loses bursts
    (rctclient's simulator answers only the first one or two requests that arrive together) answers every lone
    request, so it never gets a floor and keeps the backoff above; silence loses lone requests in a row, which is
    no evidence either. Should a floor be wrong all the same (a hiccup, on a peer that can take fewer requests), it
    is dropped after it held back `recheck` cuts, and earned again only by new evidence. Each drop doubles
    `recheck`, so a peer that loses at random is rarely made to prove it again; `CLEAR_AFTER` answers without a
    lone request lost reset it.
    """

    PATIENCE = 8  # answers in a row before the window grows into the size that lost requests
    PATIENCE_MAX = 4096
    FLOOR = 8  # requests kept in flight to a peer that loses requests at random, whatever it lost
    FLOOR_EVIDENCE = 1  # lone requests lost between answered lone requests before the floor is set
    CLEAR_AFTER = 32  # answers without a lone request lost that forget the evidence and reset `recheck`
    RECHECK = 32  # cuts a floor holds back before it is dropped to see whether it is still needed
    RECHECK_MAX = 4096

    def __init__(self, maximum: int) -> None:
        self.maximum = max(1, maximum)
        self.size = self.maximum
        self.ceiling: int | None = None  # smallest size that lost requests since the last successful probe
        self.patience = self.PATIENCE
        self.floor = 1
        self.recheck = self.RECHECK
        self._streak = 0  # answers since the last change of size
        self._cut_at = float("-inf")
        self._lone_answered = False  # the outcome of the last lone request
        self._suspect = False  # a lone request was lost right after an answered one: is the next one answered?
        self._evidence = 0
        self._clean = 0  # answers since a lone request was lost
        self._held = 0  # cuts the floor held back since it was set

    @property
    def limit(self) -> int:
        return self.size

    def success(self, lone: bool = False) -> None:
        """A request was answered; `lone`: it had been sent while nothing else was in flight."""
        self._clean += 1
        if self._clean == self.CLEAR_AFTER:
            self._evidence = 0
            if self.floor == 1:
                self.recheck = self.RECHECK
        if lone:
            if self._suspect:  # answered, lost, answered: the peer was there and lost a request it had room for
                self._suspect = False
                self._evidence += 1
                if self._evidence >= self.FLOOR_EVIDENCE and self.floor == 1 and self.maximum > 1:
                    self._set_floor(min(self.maximum, self.FLOOR))
            self._lone_answered = True
        self._streak += 1
        if self.ceiling is not None and self.size >= self.ceiling and self._streak >= self.size:
            self.ceiling, self.patience = None, self.PATIENCE  # the probe held for a full window
        if self.size >= self.maximum:
            return
        probing = self.ceiling is not None and self.size + 1 >= self.ceiling
        if self._streak >= (self.patience if probing else self.size):
            self.size += 1
            self._streak = 0

    def loss(self, sent_at: float, now: float, lone: bool = False) -> None:
        """A request went unanswered while later ones were answered."""
        self._lost(lone)
        self._cut(sent_at, now, max(1, self.size // 2))

    def timeout(self, sent_at: float, now: float, lone: bool = False) -> None:
        """A request went unanswered and nothing else came back either."""
        self._lost(lone)
        self._cut(sent_at, now, 1)

    def _lost(self, lone: bool) -> None:
        if lone:
            self._suspect = self._lone_answered  # a loss after a loss looks like silence, not like chance
            self._lone_answered = False
            self._clean = 0

    def _set_floor(self, floor: int) -> None:
        if floor > 1:
            log.info("requests are lost even one at a time: keeping %d in flight", floor)
            if self.ceiling is not None and self.ceiling <= floor:
                self.ceiling, self.patience = None, self.PATIENCE
            self.size = max(self.size, floor)
            self._streak = 0
        else:
            log.info("checking again whether requests are lost one at a time")
            self._evidence = 0
            self.recheck = min(self.recheck * 2, self.RECHECK_MAX)
        self.floor = floor
        self._held = 0

    def _cut(self, sent_at: float, now: float, size: int) -> None:
        if sent_at < self._cut_at:
            return
        if size < self.floor:
            self._held += 1
            if self._held >= self.recheck:
                self._set_floor(1)
            elif self.size <= self.floor:  # lost at the floor: chance, not too many requests
                self._streak = 0
                self._cut_at = now
                return
            else:
                size = self.floor
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
    first_sent: float  # when the first attempt of this round was sent
    lone: bool  # sent while nothing else was in flight
    measurable: bool  # an answer can only answer this attempt, so it measures the round trip
    passed: int = 0  # answers to requests sent after this one


class _Ask(NamedTuple):
    """A queued request."""

    attempt: int
    first_sent: float | None  # None until the first attempt of its round is sent
    measurable: bool  # the first attempt, or one after the last gave up waiting for the longest timeout (Karn)


_FRESH = _Ask(1, None, True)


class _Read:
    """A caller waiting for a set of objects to be answered (or given up)."""

    def __init__(self, object_ids: Iterable[int], loop: asyncio.AbstractEventLoop) -> None:
        self.remaining: set[int] = set(object_ids)
        self.values: dict[int, object] = {}
        self.future: asyncio.Future[dict[int, object]] = loop.create_future()

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
    trips, like TCP's fast retransmit), or when the timeout has passed both since it was sent and since the
    last answer to one of our requests: while a slow inverter is still working through a pipelined burst, the
    requests at the end of the burst are not late, and a peer that answers nothing is found out after one timeout.

    The timeout adapts as in RFC 6298: smoothed round trip plus four times its variation, at least
    `MIN_REQUEST_TIMEOUT` and at most `request_timeout` (which is also the timeout before the first sample). A lossy
    link costs a timeout per lost request that no later answer reveals, so a fixed 1 s would stall a peer that
    answers in 60 ms. Samples come from answers to first attempts only (Karn: an answer to a request asked twice may
    answer either), and from an attempt sent after the one before it waited the full `request_timeout` (an answer
    slower than that counts as lost anyway): at 30 % loss, waiting for a first attempt to be answered could cost
    several full timeouts before the first sample. The timeout doubles (up to `request_timeout`, until the next
    sample) after `SILENT_TIMEOUTS` timeouts in a row with no answer between (silence), and when a request asked
    again is answered twice (the first answer was only late: the peer slowed down, and without doubling no first
    attempt would ever be answered in time to say so). Unlike TCP it does not double on every timeout: one request
    at a time over a lossy link, or the end of a poll that is mostly requests asked again, loses two in a row often
    enough, and doubling there would stall it.

    A request given up after `max_attempts` is asked again (another `max_attempts`, up to `ASK_ROUNDS` rounds) as
    soon as the queue runs dry, if the peer answered one of our requests since that round began: at 30 % loss about
    one object in 120 is given up, and waiting for its tier to come round would leave a static value missing for an
    hour. A silent peer answers nothing, so nothing is asked again into the silence; no timer is added for this.
    """

    def __init__(self, link: ReadOnlyLink, window: Window, stats: CollectorStats, request_timeout: float,
                 max_attempts: int = MAX_ATTEMPTS, on_idle: Callable[[], None] | None = None) -> None:
        self._link = link
        self._window = window
        self._stats = stats
        self._timeout = request_timeout
        self._max_attempts = max_attempts
        self._on_idle = on_idle
        self._loop = asyncio.get_running_loop()
        self._queue: deque[int] = deque()
        self._queries: deque[Query] = deque()  # logger queries: sent only while `_queue` is empty
        self._queued: dict[Key, _Ask] = {}
        #: given up, to be asked again: object id -> (when its latest round began, the attempts it had)
        self._parked: dict[int, tuple[float, int]] = {}
        self._in_flight: dict[Key, _InFlight] = {}  # in sending order
        self._answers: dict[Query, asyncio.Future[bytes | None]] = {}  # who waits for each logger query
        self._reads: list[_Read] = []
        self._timer: asyncio.TimerHandle | None = None
        self._last_progress = float("-inf")
        self._seq = 0
        self._times = ResponseTimes(stats)
        self._srtt: float | None = None  # smoothed round trip of first attempts
        self._rttvar = 0.0
        self._backoff = 1.0  # doubles on silence and on late answers, until a first attempt is answered
        self._last_expiry = float("-inf")
        self._silent_expiries = 0  # timeouts in a row with no answer between
        self._answered_again: dict[Key, float] = {}  # request -> when it was answered after being asked again
        self.waiting_since: float | None = None  # first request sent since the last answer
        self.given_up = 0
        self._closed = False

    @property
    def idle(self) -> bool:
        return not self._queue and not self._queries and not self._in_flight

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def timeout(self) -> float:
        """Return the current request timeout (seconds since sending, and since the last answer)."""
        if self._srtt is None:
            return self._timeout
        rto = max(MIN_REQUEST_TIMEOUT, self._srtt + 4 * self._rttvar) * self._backoff
        return min(self._timeout, rto)

    def ask(self, object_ids: Iterable[int], urgent: bool = False) -> None:
        """Queue requests (once each: ids already queued or in flight are skipped) and send what the window allows."""
        new = [i for i in object_ids if i not in self._queued and i not in self._in_flight]
        if urgent:
            self._queue.extendleft(reversed(new))
        else:
            self._queue.extend(new)
        for object_id in new:
            self._queued[object_id] = _FRESH
            self._parked.pop(object_id, None)  # its turn came: asked afresh
        self._pump()

    async def read(self, object_ids: Sequence[int]) -> dict[int, object]:
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

    async def query(self, object_id: int, timestamp: int) -> bytes | None:
        """Ask the logger (or event table) for its entries before `timestamp`, behind any live request waiting.

        Return the answer's raw payload (whose first four bytes repeat the timestamp; the caller checks the rest),
        or None when the query was given up after `max_attempts` or the connection closed. The link refuses, with
        TypeError or ValueError, an object that is not a logger series or a timestamp that is not sane.
        """
        key = (object_id, timestamp)
        future = self._answers.get(key)
        if future is None:
            if self._closed:
                return None
            self._link.check_query(object_id, timestamp)  # refuse here, not in the middle of a burst
            future = self._answers[key] = self._loop.create_future()
            self._queries.append(key)
            self._queued[key] = _FRESH
            self._pump()
        return await asyncio.shield(future)

    @property
    def queries_waiting(self) -> int:
        """Logger queries queued or in flight."""
        return len(self._answers)

    def resolve_query(self, object_id: int, payload: bytes, now: float) -> bool:
        """Take an answer from the logger or event table; return True when it answers one of our queries.

        The answer is matched by its first element, which repeats the timestamp asked. An answer whose first
        element matches nothing we asked (a garbled one, or one to another client) changes nothing here: the query
        it may have been meant for is found lost when later requests are answered, and asked again.
        """
        if len(payload) < 4:
            return False
        key = (object_id, int.from_bytes(payload[:4], "big", signed=True))
        if not self._answered(key, now):
            return False
        future = self._answers.pop(key, None)
        if future is not None and not future.done():
            future.set_result(payload)
        self._after_answer()
        return True

    def heard(self) -> None:
        """Note that the inverter sent a valid frame (answer to us or not): it is not silent."""
        self.waiting_since = None

    def resolve(self, object_id: int, value: object, now: float) -> None:
        """Take an answer (value or INVALID); if it answers one of our requests, close that request."""
        for pending in self._reads:
            pending.settle(object_id, value)
        if self._answered(object_id, now):
            self._after_answer()

    def _answered(self, key: Key, now: float) -> bool:
        """Close the request `key` answers (timing, window, requests it overtook); False if none was in flight."""
        request = self._in_flight.pop(key, None)
        if request is None:
            answered = self._answered_again.pop(key, None)
            if answered is not None and now - answered < self._timeout:
                self._back_off()  # the second answer to a request asked again: it was late, not lost
            return False
        self._last_progress = now
        rtt = now - request.sent_at
        self._times.observe(rtt)
        if request.measurable:
            before = self.timeout
            self._sample(rtt)
            if self._timer is not None and self.timeout < before:
                self._timer.cancel()  # armed with the longer timeout (the first one, before any sample)
                self._timer = None
                self._arm()
        else:
            self._answered_again[key] = now
        self._window.success(request.lone)
        lost: list[tuple[Key, _InFlight]] = []
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
        return True

    def _after_answer(self) -> None:
        self._pump()
        if self.idle and self._on_idle is not None:
            self._on_idle()

    def _sample(self, rtt: float) -> None:
        """Update the smoothed round trip and its variation (RFC 6298, section 2)."""
        if self._srtt is None:
            self._srtt, self._rttvar = rtt, rtt / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - rtt)
            self._srtt = 0.875 * self._srtt + 0.125 * rtt
        self._backoff = 1.0

    def _back_off(self) -> None:
        self._backoff = min(self._backoff * 2, max(1.0, self._timeout / MIN_REQUEST_TIMEOUT))

    def close(self) -> None:
        """Forget everything (the connection is gone); waiting readers get what they have so far."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for pending in self._reads:
            if not pending.future.done():
                pending.future.set_result(pending.values)
        for future in self._answers.values():
            if not future.done():
                future.set_result(None)
        self._answers.clear()
        self._queue.clear()
        self._queries.clear()
        self._queued.clear()
        self._parked.clear()
        self._answered_again.clear()
        self._in_flight.clear()

    def _pump(self) -> None:
        if self._closed:
            return
        if not self._queue and self._parked:
            self._unpark()
        room = self._window.limit - len(self._in_flight)
        if room <= 0 or not (self._queue or self._queries):
            return
        now = self._loop.time()
        lone = not self._in_flight and (room == 1 or len(self._queue) + len(self._queries) == 1)
        reads = self._take(self._queue, room, now, lone)
        # logger queries only once no live request waits; in the same write, after the reads (the sending order)
        queries = self._take(self._queries, room - len(reads), now, lone)
        self._link.read(reads)
        self._link.query(queries)
        if self.waiting_since is None:
            self.waiting_since = now
        if self._timer is None:
            self._arm()

    def _take(self, queue: deque[Any], room: int, now: float, lone: bool) -> list[Any]:
        """Move up to `room` requests from `queue` into flight, in order; return them."""
        batch = []
        while room > 0 and queue:
            key = queue.popleft()
            attempt, first_sent, measurable = self._queued.pop(key)
            self._seq += 1
            self._in_flight[key] = _InFlight(self._seq, now, attempt, now if first_sent is None else first_sent,
                                             lone, measurable)
            batch.append(key)
            room -= 1
        return batch

    def _unpark(self) -> None:
        """Queue the objects given up, if the peer answered one of our requests since their latest round began."""
        ready = [object_id for object_id, (began, _) in self._parked.items() if self._last_progress > began]
        for object_id in ready:
            _, attempts = self._parked.pop(object_id)
            self._queued[object_id] = _Ask(attempts + 1, None, False)
        self._queue.extend(ready)

    def _deadline(self, request: _InFlight) -> float:
        return max(request.sent_at, self._last_progress) + self.timeout

    def _arm(self) -> None:
        if self._in_flight and not self._closed:
            oldest = next(iter(self._in_flight.values()))
            self._timer = self._loop.call_at(self._deadline(oldest), self._expire)

    def _expire(self) -> None:
        self._timer = None
        now = self._loop.time()
        late: list[tuple[Key, _InFlight]] = []
        for key, request in self._in_flight.items():
            if self._deadline(request) > now:
                break  # sent later, so due later
            late.append((key, request))
        self._stats.request_timeouts += len(late)
        waited_longest = self.timeout >= self._timeout
        if late:
            self._silent_expiries = self._silent_expiries + 1 if self._last_progress < self._last_expiry else 1
            if self._silent_expiries >= SILENT_TIMEOUTS:
                self._back_off()
            self._last_expiry = now
        self._lose(late, now, timed_out=True, waited_longest=waited_longest)
        self._pump()
        if self._timer is None:
            self._arm()
        if self.idle and self._on_idle is not None:
            self._on_idle()

    def _lose(self, lost: list[tuple[Key, _InFlight]], now: float, timed_out: bool = False,
              waited_longest: bool = False) -> None:
        """Take lost requests out of flight: ask them again first, or give them up after `max_attempts`.

        `waited_longest`: they timed out after the full `request_timeout`, so an answer to the next attempt is one.
        A logger query given up is not parked: whoever asked gets None and decides.
        """
        retry: list[int] = []
        retry_queries: list[Query] = []
        cut = self._window.timeout if timed_out else self._window.loss
        for key, request in lost:
            del self._in_flight[key]
            cut(request.sent_at, now, request.lone)
            if request.attempt % self._max_attempts:
                self._queued[key] = _Ask(request.attempt + 1, request.first_sent, waited_longest)
                if isinstance(key, tuple):
                    retry_queries.append(key)
                else:
                    retry.append(key)
                continue
            self.given_up += 1
            if isinstance(key, tuple):
                log.debug("no answer to the logger query 0x%08X@%d after %d attempts", key[0], key[1],
                          request.attempt)
                future = self._answers.pop(key, None)
                if future is not None and not future.done():
                    future.set_result(None)
                continue
            if request.attempt < self._max_attempts * ASK_ROUNDS:
                self._parked[key] = (request.first_sent, request.attempt)
            log.debug("no answer for object 0x%08X after %d attempts", key, request.attempt)
            for pending in self._reads:
                pending.settle(key, INVALID)
        if lost:
            log.debug("%d requests lost, window now %d", len(lost), self._window.limit)
        self._queue.extendleft(reversed(retry))
        self._queries.extendleft(reversed(retry_queries))


class TierClock:
    """When each polling tier is due next; every tier is due at the start."""

    def __init__(self, intervals: Intervals, now: float) -> None:
        self._intervals: Mapping[Tier, float] = {tier: float(getattr(intervals, tier.value)) for tier in Tier}
        self._next: dict[Tier, float] = {tier: now for tier in Tier}

    def due(self, now: float) -> list[Tier]:
        """Return the tiers due now (in declaration order: fast first) and schedule their next turn."""
        tiers = [tier for tier in Tier if self._next[tier] <= now]
        for tier in tiers:
            self._next[tier] = now + self._intervals[tier]
        return tiers

    def next_due(self) -> float:
        return min(self._next.values())


def ids_by_tier(series: Iterable[Series]) -> dict[Tier, tuple[int, ...]]:
    """Group series' object ids by tier, keeping catalog order; an object several series read is asked once."""
    groups: dict[Tier, dict[int, None]] = {tier: {} for tier in Tier}
    for s in series:
        groups[s.tier][s.object_id] = None
    return {tier: tuple(ids) for tier, ids in groups.items()}
