"""The inverter's clock: its local wall-clock time, written as if it were UTC.

The inverter keeps no time zone. Every timestamp in its logger and event table is its local wall-clock time encoded
as a UNIX timestamp as though that wall clock were UTC, and it reads the timestamp it is asked with the same way
(rctclient issue #7, docs/history.md). `InverterClock` turns such "stamps" into true instants and back, using the
zone the inverter's clock follows (`device.timezone`, or the host's zone: rctmon.config.device_timezone).

A stamp is ambiguous once a year: in the autumn hour that repeats (in Europe/Berlin 02:00-02:59 on the last Sunday
of October) every wall-clock time happens twice. The inverter keeps both passes in its ring buffer, in the order it
recorded them, so an answer that spans the repeated hour reads, newest first, 02:55 ... 02:00 (standard time) and
then 02:55 ... 02:00 again (summer time). `resolve` assigns the instants from that order: each entry gets the latest
instant its stamp can mean that is older than the entry before it. In spring no stamp is ambiguous; the wall clock
skips an hour and so do the stamps, while the instants stay 5 minutes apart.
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Sequence

_EPOCH = datetime.datetime(1970, 1, 1)
#: How far ahead of this machine's clock the inverter's may run before an instant counts as impossible: a stamp in
#: the repeated autumn hour is read as the second pass only once that pass can have begun.
CLOCK_SLACK = 600


class InverterClock:
    """Convert between true instants (UNIX seconds) and the inverter's stamps (local wall clock read as UTC)."""

    def __init__(self, zone: datetime.tzinfo) -> None:
        self.zone = zone
        self.candidates = functools.lru_cache(maxsize=1 << 17)(self._candidates)

    def stamp(self, instant: int) -> int:
        """Return the stamp the inverter's clock shows at `instant`."""
        offset = datetime.datetime.fromtimestamp(instant, self.zone).utcoffset()
        return instant + int(offset.total_seconds()) if offset is not None else instant

    def wall(self, stamp: int) -> datetime.datetime:
        """Return a stamp as the naive wall-clock time it is."""
        return _EPOCH + datetime.timedelta(seconds=stamp)

    def _candidates(self, stamp: int) -> tuple[int, ...]:
        """Return the instants whose wall clock shows `stamp`, oldest first: one, or two in the repeated hour.

        A stamp the wall clock skips (the spring hour) never comes from a working inverter; it is read as if the
        clock had not moved forward yet, so that a garbled answer still gets an instant and is judged by order.
        """
        naive = self.wall(stamp)
        found = sorted({int(naive.replace(tzinfo=self.zone, fold=fold).timestamp()) for fold in (0, 1)})
        real = tuple(i for i in found if self.stamp(i) == stamp)
        return real or (found[0],)

    def latest(self, stamp: int, now: float) -> int:
        """Return the latest instant `stamp` can mean that is not in the future (of `now`, give or take the slack)."""
        options = self.candidates(stamp)
        possible = [i for i in options if i <= now + CLOCK_SLACK]
        return possible[-1] if possible else options[0]

    def resolve(self, stamps: Sequence[int], bound: int, strict: bool = True) -> list[int] | None:
        """Return the instants of entries given newest first, each before `bound` and before the one ahead of it.

        `strict`: each entry strictly older than the one before (time series); otherwise equal instants may follow
        each other (events that happened in the same second). None when no assignment keeps that order: the
        answer is garbled.
        """
        instants: list[int] = []
        limit = bound
        for stamp in stamps:
            chosen = None
            for instant in reversed(self.candidates(stamp)):
                if instant < limit or (not strict and instant == limit and instants):
                    chosen = instant
                    break
            if chosen is None:
                return None
            instants.append(chosen)
            limit = chosen
        return instants

    def resolve_after(self, stamp: int, start: int) -> int | None:
        """Return the earliest instant `stamp` can mean that is not before `start` (an event's end), or None."""
        for instant in self.candidates(stamp):
            if instant >= start:
                return instant
        return None

    def day_start(self, instant: int) -> int:
        """Return the instant of the local midnight that begins the day `instant` falls in."""
        local = datetime.datetime.fromtimestamp(instant, self.zone)
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
        return int(midnight.replace(tzinfo=self.zone).timestamp())

    def period_start(self, instant: int, resolution: str) -> int:
        """Return the start of the local day, month or year `instant` falls in ("minutes": `instant` itself)."""
        if resolution not in ("day", "month", "year"):
            return instant
        local = datetime.datetime.fromtimestamp(instant, self.zone).replace(tzinfo=None)
        local = local.replace(hour=0, minute=0, second=0, microsecond=0)
        if resolution != "day":
            local = local.replace(day=1, month=1 if resolution == "year" else local.month)
        return int(local.replace(tzinfo=self.zone).timestamp())

    def next_day(self, midnight: int) -> int:
        """Return the local midnight after the one at `midnight` (23, 24 or 25 hours later)."""
        local = datetime.datetime.fromtimestamp(midnight, self.zone).replace(tzinfo=None)
        following = (local + datetime.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        return int(following.replace(tzinfo=self.zone).timestamp())


def utc_text(instant: float) -> str:
    """Return an instant as RFC 3339 UTC text, for summaries and CSV."""
    return datetime.datetime.fromtimestamp(instant, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
