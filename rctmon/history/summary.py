"""What an import found: per series the points, the first and last time, and the gaps the inverter itself has.

A gap is a stretch between two consecutive entries longer than the series' step (5 minutes; a day, month or year
for the others): the inverter recorded nothing there (rctclient: it was off, or its battery ran empty at night, or
its clock was set forward). Spans rctmon could not read are not gaps of the inverter; the reader reports them apart.
"""

from __future__ import annotations

import array
from dataclasses import dataclass, field
from collections.abc import Iterator

from rctmon.history.events import Event
from rctmon.history.series import LoggerRow


@dataclass
class SeriesTally:
    """The instants one series delivered."""

    row: LoggerRow
    instants: array.array[int] = field(default_factory=lambda: array.array("q"))

    @property
    def count(self) -> int:
        return len(self.instants)

    def gaps(self) -> list[tuple[int, int]]:
        """Return (last instant before, first instant after) for every gap longer than the step."""
        ordered = sorted(set(self.instants))
        step = self.row.resolution.step
        return [(a, b) for a, b in zip(ordered, ordered[1:]) if b - a > step]


class Summary:
    """A Consumer that only counts: wrap it around an output to see what went through."""

    def __init__(self) -> None:
        self.series: dict[LoggerRow, SeriesTally] = {}
        self.event_types: dict[str, int] = {}
        self.first_event: int | None = None
        self.last_event: int | None = None

    async def points(self, row: LoggerRow, points: list[tuple[int, float]]) -> None:
        tally = self.series.get(row)
        if tally is None:
            tally = self.series[row] = SeriesTally(row)
        tally.instants.extend(instant for instant, _ in points)

    async def events(self, events: list[Event]) -> None:
        for event in events:
            self.event_types[event.type] = self.event_types.get(event.type, 0) + 1
            self.first_event = event.start if self.first_event is None else min(self.first_event, event.start)
            self.last_event = event.start if self.last_event is None else max(self.last_event, event.start)

    def tallies(self) -> Iterator[SeriesTally]:
        return iter(self.series.values())

    @property
    def points_total(self) -> int:
        return sum(t.count for t in self.series.values())

    @property
    def events_total(self) -> int:
        return sum(self.event_types.values())


class Tee:
    """Hand every record to several consumers in turn."""

    def __init__(self, *consumers: object) -> None:
        self._consumers = consumers

    async def points(self, row: LoggerRow, points: list[tuple[int, float]]) -> None:
        for consumer in self._consumers:
            await consumer.points(row, points)  # type: ignore[attr-defined]

    async def events(self, events: list[Event]) -> None:
        for consumer in self._consumers:
            await consumer.events(events)  # type: ignore[attr-defined]
