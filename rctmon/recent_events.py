"""The supervisor's memory of the inverter's recent events, replayed to every new incarnation of a reader.

The supervisor keeps the latest reading of every object so that a restarted endpoint shows slow values at once; it
keeps the events it routed for the same reason: a restarted prometheus child counts the same new events again
(its counters go on instead of dropping to 0) and shows the latest start of each type at once, and a restarted
mqtt child knows which events are old. Replayed events carry `seq` 0: no reader announces or stores them as if
they had just arrived; what an acknowledging child has not acknowledged it gets from its backlog as usual.

Bounded: the newest `limit` events by arrival; an event the collector hands on again (its first read after a
restart repeats the table) is kept once, as it first came.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

from rctmon.messages import InverterEvents

if TYPE_CHECKING:
    from rctmon.history.events import Event

#: Events kept for replay; the table of a busy inverter over `history.max_gap` is a few hundred.
RECENT_EVENTS = 4096
#: Events per replayed message.
REPLAY_CHUNK = 1000
Key = tuple[int, int, int, int, int]


class RecentEvents:
    """The newest events routed, each once, with whether it was new when it first came."""

    def __init__(self, limit: int = RECENT_EVENTS) -> None:
        self._limit = limit
        self._events: OrderedDict[Key, tuple[Event, bool]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._events)

    def add(self, message: InverterEvents) -> None:
        for event in message.events:
            key = event.raw.key
            if key not in self._events:
                self._events[key] = (event, message.new)
        while len(self._events) > self._limit:
            self._events.popitem(last=False)

    def replay(self) -> list[InverterEvents]:
        """Return the messages that replay what is kept (seq 0): the first reads' events, then the new ones."""
        messages = []
        for new in (False, True):
            events = [event for event, was_new in self._events.values() if was_new is new]
            messages += [InverterEvents(tuple(events[i:i + REPLAY_CHUNK]), new)
                         for i in range(0, len(events), REPLAY_CHUNK)]
        return messages
