"""The answers of the inverter's logger and event table: checked on the raw payload, never half believed.

A question is a WRITE of a timestamp (a stamp: the inverter's local wall clock read as UTC) to a `logger.*` object;
the answer is a sequence of 4-byte elements: the stamp asked, then the entries recorded before it, either (stamp,
float value) pairs for a time series or rows of five elements for the event table (type character, start stamp,
three fields that depend on the type). The number of entries varies from answer to answer.

An answer can arrive with a correct CRC and still be incomplete or garbled (rctclient: the inverter was asked
something else by another client while it worked on ours). So before anything of an answer is used, all of it is
checked: a whole number of elements, 2n+1 (time series) or 5n+1 (events) of them, the first equal to the stamp
asked, every entry's time in the window (after 2000-01-01 and before the stamp asked) and the entries in order
(strictly for a time series; events of the same second may follow each other). An answer that fails any check is
not used at all: the caller asks again and counts it. Entries may come newest first or oldest first (rctclient's
documentation does not say which); they are handed on newest first.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the registry (and so the supervisor) imports this module for BAD_ANSWER_KINDS: keep it light
    from rctmon.history.timezone import InverterClock

#: 2000-01-01 00:00:00 as a stamp: the inverter's records begin there (its year series ends at the year 2000).
EARLIEST_STAMP = 946_684_800
TIMESERIES_WIDTH = 2
EVENT_WIDTH = 5
#: Event type codes are one ASCII character (rctclient refuses codes above a byte).
MAX_EVENT_CODE = 0xFF

# kinds of rejected answers, as counted in HistoryStats.bad_answers
LENGTH = "length"  # not a whole number of 4-byte elements, or none at all
STRUCTURE = "structure"  # not 2n+1 (5n+1) elements, or an event code that is no character
FIRST_ELEMENT = "first_element"  # the first element is not the stamp asked
WINDOW = "window"  # an entry time before 2000 or not before the stamp asked
ORDER = "order"  # entries not in order
#: Every kind, in the order above (a summary lists them; a counter can show each at 0).
BAD_ANSWER_KINDS: tuple[str, ...] = (LENGTH, STRUCTURE, FIRST_ELEMENT, WINDOW, ORDER)


class BadAnswer(Exception):
    """An answer failed a check; `kind` says which (one of BAD_ANSWER_KINDS)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


@dataclass(frozen=True)
class Entry:
    """One time-series entry: when (true instant), the inverter's own stamp, the raw value."""

    instant: int
    stamp: int
    value: float


@dataclass(frozen=True)
class RawEvent:
    """One row of the event table as the inverter sent it, with its start placed in time."""

    code: int
    instant: int  # start (or the moment of the event), true instant
    stamp: int  # start as the inverter's stamp
    element2: int
    element3: int
    element4: int

    @property
    def key(self) -> tuple[int, int, int, int, int]:
        """What identifies a row across answers (the same event read twice is one event)."""
        return (self.code, self.stamp, self.element2, self.element3, self.element4)


def _elements(payload: bytes, width: int, asked: int) -> tuple[int, ...]:
    """Return the unsigned elements after the first; check length, structure and the first element."""
    size = len(payload)
    if size < 4 or size % 4:
        raise BadAnswer(LENGTH, f"{size} bytes")
    count = size // 4
    if (count - 1) % width:
        raise BadAnswer(STRUCTURE, f"{count} elements, not {width}n+1")
    elements = struct.unpack(f">{count}I", payload)
    if elements[0] != asked:
        raise BadAnswer(FIRST_ELEMENT, f"{elements[0]} where {asked} was asked")
    return elements[1:]


def _oldest_first(stamps: list[int]) -> bool:
    """Return whether entries given in this order must be reversed to run newest first."""
    if len(stamps) < 2:
        return False
    # majority of the steps: robust against the one step back that the repeated autumn hour puts in a sequence
    rising = sum(1 for a, b in zip(stamps, stamps[1:]) if b > a)
    return rising > (len(stamps) - 1) / 2


def _place(stamps: list[int], asked: int, clock: InverterClock, now: float, strict: bool) -> list[int]:
    """Return the instants of stamps given newest first; check window and order."""
    for stamp in stamps:
        if stamp < EARLIEST_STAMP:
            raise BadAnswer(WINDOW, f"an entry at {stamp}, before 2000")
        # only in the repeated autumn hour can an entry recorded before the time asked carry a later stamp
        if stamp >= asked and len(clock.candidates(stamp)) < 2:
            raise BadAnswer(WINDOW, f"an entry at {stamp}, not before the {asked} asked")
    instants = clock.resolve(stamps, clock.latest(asked, now), strict=strict)
    if instants is None:
        raise BadAnswer(ORDER, "entries out of order")
    return instants


def check_timeseries(payload: bytes, asked: int, clock: InverterClock, now: float) -> list[Entry]:
    """Return the entries of a logger time-series answer, newest first; raise BadAnswer if any check fails.

    Values that are not finite numbers stay in the list (the answer itself is sound); the caller drops and counts
    them.
    """
    elements = _elements(payload, TIMESERIES_WIDTH, asked)
    stamps = list(elements[0::2])
    raw_values = elements[1::2]
    order = range(len(stamps))
    if _oldest_first(stamps):
        order = range(len(stamps) - 1, -1, -1)
        stamps.reverse()
    instants = _place(stamps, asked, clock, now, strict=True)
    pack, unpack = struct.Struct(">I").pack, struct.Struct(">f").unpack
    values = [unpack(pack(raw_values[i]))[0] for i in order]
    return [Entry(i, s, v) for i, s, v in zip(instants, stamps, values)]


def check_events(payload: bytes, asked: int, clock: InverterClock, now: float) -> list[RawEvent]:
    """Return the rows of an event-table answer, newest first; raise BadAnswer if any check fails."""
    elements = _elements(payload, EVENT_WIDTH, asked)
    rows = [elements[i:i + EVENT_WIDTH] for i in range(0, len(elements), EVENT_WIDTH)]
    for row in rows:
        if row[0] > MAX_EVENT_CODE:
            raise BadAnswer(STRUCTURE, f"event type {row[0]:#x} is no character")
    stamps = [row[1] for row in rows]
    if _oldest_first(stamps):
        rows.reverse()
        stamps.reverse()
    instants = _place(stamps, asked, clock, now, strict=False)
    return [RawEvent(row[0], instant, row[1], row[2], row[3], row[4]) for row, instant in zip(rows, instants)]


def finite(value: float) -> bool:
    """Return whether a logged value can be stored (NaN and infinities cannot)."""
    return math.isfinite(value)
