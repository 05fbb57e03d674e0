"""The simulated inverter's event table: `count` events of the known types, and a new one every `every` seconds.

The table holds `count` events spread over the day before the simulator started (so that `rctmon history --since
1d` or more finds all of them), cycling through every type rctclient documents, each with plausible fields: ranged
events an end a few seconds to minutes after their start, switching-on conditions a voltage or frequency, a
parameter change a real registry object with its old and new value, an update two software versions. With `every`
set, one more event happens every `every` seconds while the simulator runs (issue 14 watches them arrive); they are
computed from the clock, so the table is the same whoever asks. A ranged event that still lasts is sent with end
field 0, its end filled in once it has passed: how a real inverter shows an open event is not documented, and this is
the harder case for a reader that watches the table (the same event, read twice, with other fields).

Rows are five 4-byte fields (type character, start stamp, three type-specific fields), stamps in the inverter's
local wall-clock time read as UTC. A query with stamp T is answered with a varying number of consecutive rows
(newest first, as recorded), starting at the newest row whose start is stamped before T.
"""

from __future__ import annotations

import datetime
import random
import struct
import time
import zlib
from dataclasses import dataclass
from typing import Callable

from rctclient.registry import REGISTRY

#: Rows per answer.
ANSWER_ROWS = (3, 12)
#: The types the table cycles through: rctclient's documented ones, as (code, layout).
TYPES: tuple[tuple[str, str], ...] = (
    ("Z", "case"), ("s", "parameter"), ("P", "voltage"), ("v", "ranged"), ("d", "voltage"), ("c", "case"),
    ("k", "ranged"), ("r", "error"), ("w", "update"), ("y", "ranged"), ("x", "ranged"), ("O", "voltage"),
    ("R", "frequency"), ("S", "voltage"), ("T", "voltage"), ("W", "voltage"), ("X", "voltage"), ("Y", "ranged"),
)
#: Parameters a simulated PRM_CHANGE changes: (registry name, old value, new value), raw as the registry types them.
PARAMETERS: tuple[tuple[str, float, float], ...] = (
    ("power_mng.soc_min", 0.07, 0.1),
    ("power_mng.soc_max", 0.97, 1.0),
    ("display_struct.variate_contrast", 1, 0),
)
_ROW = struct.Struct(">5I")


def _f32_bits(value: float) -> int:
    return int(struct.unpack(">I", struct.pack(">f", value))[0])


def _raw_parameter(name: str, value: float) -> tuple[int, int]:
    info = REGISTRY.get_by_name(name)
    if info.request_data_type.name == "FLOAT":
        return info.object_id, _f32_bits(value)
    return info.object_id, int(value) & 0xFFFFFFFF


@dataclass(frozen=True)
class SimEvent:
    """One row of the table, in true instants (`row` gives it as the inverter sends it)."""

    code: str
    start: int
    end: int | None  # ranged events
    element2: int  # as sent (for ranged events: the end's stamp, filled in by `row`)
    element3: int
    element4: int

    def row(self, stamp: Callable[[int], int], now: float) -> tuple[int, int, int, int, int]:
        """Return the row as sent at `now`: a ranged event that still lasts has no end yet (its end field is 0)."""
        if self.end is None:
            element2 = self.element2
        else:
            element2 = stamp(self.end) if self.end <= now else 0
        return (ord(self.code), stamp(self.start), element2, self.element3, self.element4)


class EventTable:
    """The events (see the module docstring); `events` and `answer` compute them from the clock on demand."""

    def __init__(self, count: int, every: float, zone: datetime.tzinfo, started: float, seed: int = 0,
                 clock: Callable[[], float] = time.time) -> None:
        self.zone = zone
        self.every = every
        self.started = int(started)
        self.clock = clock
        self._seed = seed
        rng = random.Random(seed)
        spacing = 86_400 / max(1, count)
        self._base = [self._make(i, int(self.started - 86_400 + spacing * (i + rng.random() * 0.8)), rng)
                      for i in range(count)]

    def stamp(self, instant: int) -> int:
        offset = datetime.datetime.fromtimestamp(instant, self.zone).utcoffset()
        return instant + (int(offset.total_seconds()) if offset is not None else 0)

    def _make(self, index: int, start: int, rng: random.Random, longest: int = 600) -> SimEvent:
        code, layout = TYPES[index % len(TYPES)]
        end = start + rng.randint(1, longest)
        if layout == "parameter":
            name, old, new = PARAMETERS[index % len(PARAMETERS)]
            object_id, old_raw = _raw_parameter(name, old)
            return SimEvent(code, start, None, object_id, old_raw, _raw_parameter(name, new)[1])
        if layout == "update":
            return SimEvent(code, start, None, 0, 5185 + index, 5220 + index)
        if layout == "voltage":
            volts = {"d": 58.4, "O": 184.0, "S": 183.5, "W": 184.5}.get(code, 253.5)
            return SimEvent(code, start, end, 0, _f32_bits(volts + rng.random()), 0)
        if layout == "frequency":
            return SimEvent(code, start, end, 0, _f32_bits(50.2 + rng.random() / 10), 0)
        if layout == "case":
            return SimEvent(code, start, end, 0, rng.randint(1, 9), rng.randint(0, 3))
        if layout == "error":
            return SimEvent(code, start, end, 0, 0x123, 1)
        return SimEvent(code, start, end, 0, rng.randint(0, 255), 0)

    def events(self, now: float | None = None) -> list[SimEvent]:
        """Return every event that has happened by `now`, oldest first (the truth, for tests)."""
        now = self.clock() if now is None else now
        events = list(self._base)
        if self.every > 0:
            happened = int((now - self.started) // self.every)
            for j in range(1, happened + 1):
                start = int(self.started + j * self.every)
                rng = random.Random(zlib.crc32(f"{self._seed}:{j}".encode()))
                # short enough to end while a test watches (a new one every `every` s lasts at most 2 `every`)
                events.append(self._make(len(self._base) + j, start, rng, min(600, max(1, int(2 * self.every)))))
        return [e for e in events if e.start <= now]

    def rows(self, now: float | None = None) -> list[tuple[int, int, int, int, int]]:
        """Return the table as the inverter sends its rows, oldest first."""
        now = self.clock() if now is None else now
        return [e.row(self.stamp, now) for e in self.events(now)]

    def answer(self, stamp: int, rng: random.Random, now: float | None = None) -> bytes:
        """Return the payload answering a query with `stamp`: the stamp, then rows, newest first."""
        rows = self.rows(now)
        position = len(rows)
        while position and rows[position - 1][1] >= stamp:  # walk back from the newest row
            position -= 1
        count = rng.randint(*ANSWER_ROWS)
        chosen = rows[max(0, position - count):position][::-1]
        return struct.pack(">I", stamp) + b"".join(_ROW.pack(*row) for row in chosen)
