"""The simulated inverter's logger: 5-minute, daily, monthly and yearly history of its plant, over real time.

The live simulator compresses a day into ten minutes for the demo; the logger cannot (its entries are stamped with
wall-clock time, and an importer checks that they are five minutes apart). So the logger follows real time: it
evaluates the same physics as the live plant (`plant.sun`, the household's evening peak, the battery balancing
generation and load within its limits, the external generator on the S0 input when there is one, the same signs:
feed-in negative, battery positive while discharging) at
the real local time of day, with the plant's slow variations (clouds, load) slowed by the factor the live day is
sped up, and a cloudiness of its own for each day. Nothing is stored: a day's 288 entries are computed when asked,
deterministically, from the day before (the battery's state of charge carries over), and kept for a few days.

What the logger holds (and says, through `points`, for tests):

- 5-minute series (`logger.minutes_*`): one entry per `step` seconds from `history_days` before the simulator
  started (the installation) up to the last completed step, the oldest dropping out as time goes on (a ring);
  energies as the average power of the step in W, levels (voltages, temperatures, state of charge 0..1) at its
  middle; an entry is stamped with the start of its step;
- day, month, year series: the energy (Wh) of every period since the installation, stamped with the period's local
  start; the period still running holds its energy so far. A day is the sum of its 5-minute energies, a month of
  its days, a year of its months.

Stamps are the inverter's: local wall-clock time (in `zone`) read as UTC. In the autumn hour that repeats, the
logger records both passes, in recording order. A query with stamp T is answered with a varying number of
consecutive entries (newest first, as recorded), starting at the newest entry stamped before T; rctclient measured
about seven answers per day of one 5-minute series, so an answer holds 20 to 62 entries.
"""

from __future__ import annotations

import array
import bisect
import collections
import datetime
import math
import random
import struct
import threading
import time
import zlib
import zoneinfo
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable
from collections.abc import Sequence

from rctclient.registry import REGISTRY
from rctclient.types import DataType

from rctmon.config import host_timezone
from rctmon.simulator.events import EventTable
from rctmon.simulator.cells import CELLS_PER_MODULE, open_circuit_voltage
from rctmon.simulator.plant import (EFFICIENCY, EXTERNAL_HOUR_SHIFT, EXTERNAL_PEAK_W, GENERATOR_PEAK_W,
                                    MODULE_CAPACITY_WH, MODULE_MAX_POWER_W, SOC_MIN, SPEED, sun, wobble)

#: Entries per answer: rctclient measured about seven queries for a day (288 entries) of one series.
ANSWER_ENTRIES = (20, 62)
#: Entries per answer of the day, month and year series.
PERIOD_ANSWER_ENTRIES = (8, 32)
#: Days whose 5-minute arrays are kept computed.
CACHED_DAYS = 12
DEFAULT_STEP = 300

#: The 5-minute series, by the suffix of `logger.minutes_<suffix>_log_ts`.
MINUTE_SUFFIXES: tuple[str, ...] = ("ea", "eb", "eext", "eac", "egrid_feed", "egrid_load", "eload", "eac1", "eac2",
                                    "eac3", "ebat", "ua", "ub", "ubat", "ul1", "ul2", "ul3", "soc", "soc_targ",
                                    "temp", "temp2", "temp_bat")
#: The energies the day, month and year series keep (and the 5-minute series they are the sum of).
PERIOD_SUFFIXES: tuple[str, ...] = ("ea", "eb", "eext", "eac", "egrid_feed", "egrid_load", "eload")
PERIODS: tuple[str, ...] = ("day", "month", "year")

if TYPE_CHECKING:
    from rctmon.simulator.options import SimulatorOptions
    from rctmon.simulator.wire import Request

_F32 = struct.Struct(">f")
_ENTRY = struct.Struct(">If")


def f32(value: float) -> float:
    """Return `value` as the 4-byte float the inverter sends it as."""
    return float(_F32.unpack(_F32.pack(value))[0])


@dataclass(frozen=True)
class _Series:
    """One logger object: its resolution ("minutes" or a period) and suffix."""

    resolution: str
    suffix: str


def _series_by_id() -> dict[int, _Series]:
    found = {}
    for resolution in ("minutes", *PERIODS):
        suffixes = MINUTE_SUFFIXES if resolution == "minutes" else PERIOD_SUFFIXES
        for suffix in suffixes:
            found[REGISTRY.get_by_name(f"logger.{resolution}_{suffix}_log_ts").object_id] = _Series(resolution, suffix)
    return found


SERIES_BY_ID: dict[int, _Series] = _series_by_id()
SERIES_BY_NAME: dict[str, int] = {f"logger.{s.resolution}_{s.suffix}_log_ts": oid for oid, s in SERIES_BY_ID.items()}


class _Day:
    """One local day of the 5-minute memory: instants, stamps, values per series, energies summed up."""

    def __init__(self, start: int, end: int, step: int) -> None:
        self.start = start
        self.end = end
        self.instants = list(range(start, end, step))
        self.values: dict[str, array.array[float]] = {s: array.array("d") for s in MINUTE_SUFFIXES}
        self.soc_end = 0.0
        #: cumulative Wh of each period energy after each entry (index k: entries 0..k)
        self.energy: dict[str, array.array[float]] = {s: array.array("d") for s in PERIOD_SUFFIXES}


class LoggerModel:
    """The plant over real time, day by day, as the logger records it (see the module docstring)."""

    def __init__(self, generators: int, battery_modules: int, zone: datetime.tzinfo, installed: int,
                 history_days: float, step: int = DEFAULT_STEP, seed: int = 0,
                 clock: Callable[[], float] = time.time, external_generator: bool = False) -> None:
        self.generators = generators
        self.battery_modules = battery_modules
        self.external_generator = external_generator
        self.zone = zone
        self.step = step
        self.installed = installed - installed % step
        self.history_seconds = int(history_days * 86_400)
        self.clock = clock
        self._seed = seed
        self._lock = threading.RLock()
        self._days: collections.OrderedDict[int, _Day] = collections.OrderedDict()  # by day start
        self._soc_end: dict[int, float] = {}  # day start -> state of charge at its end
        self._day_energy: dict[int, dict[str, float]] = {}  # complete days -> energy (Wh) per suffix

    # --- time --------------------------------------------------------------------------------------------------

    def stamp(self, instant: int) -> int:
        """Return the inverter's stamp of an instant: its local wall clock read as UTC."""
        offset = datetime.datetime.fromtimestamp(instant, self.zone).utcoffset()
        return instant + (int(offset.total_seconds()) if offset is not None else 0)

    def day_start(self, instant: int) -> int:
        local = datetime.datetime.fromtimestamp(instant, self.zone)
        return int(local.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
                   .replace(tzinfo=self.zone).timestamp())

    def _next_start(self, start: int, resolution: str) -> int:
        local = datetime.datetime.fromtimestamp(start, self.zone).replace(tzinfo=None)
        if resolution == "day":
            following = local + datetime.timedelta(days=1)
        elif resolution == "month":
            following = (local.replace(day=28) + datetime.timedelta(days=4)).replace(day=1)
        else:
            following = local.replace(year=local.year + 1, month=1, day=1)
        following = following.replace(hour=0, minute=0, second=0, microsecond=0)
        return int(following.replace(tzinfo=self.zone).timestamp())

    def _period_start(self, instant: int, resolution: str) -> int:
        local = datetime.datetime.fromtimestamp(instant, self.zone).replace(tzinfo=None)
        local = local.replace(hour=0, minute=0, second=0, microsecond=0)
        if resolution in ("month", "year"):
            local = local.replace(day=1)
        if resolution == "year":
            local = local.replace(month=1)
        return int(local.replace(tzinfo=self.zone).timestamp())

    def newest(self, now: float | None = None) -> int:
        """Return the instant of the newest completed step."""
        now = self.clock() if now is None else now
        return int(now - self.step) // self.step * self.step

    def oldest(self, now: float | None = None) -> int:
        """Return the instant of the oldest 5-minute entry the ring still holds."""
        now = self.clock() if now is None else now
        horizon = int(now) - self.history_seconds
        return max(self.installed, -(-horizon // self.step) * self.step)

    # --- the plant, one day at a time --------------------------------------------------------------------------

    def _clouds(self, day_start: int) -> float:
        """Return the cloudiness factor (0.45..1) of a day, the same for every run."""
        return 0.45 + 0.55 * (zlib.crc32(f"{self._seed}:{day_start}".encode()) % 1000) / 999

    def _day(self, start: int) -> _Day:
        with self._lock:
            day = self._days.get(start)
            if day is not None:
                self._days.move_to_end(start)
                return day
            first = self.day_start(self.installed)
            soc = 0.5 if start <= first else self._soc_before(start)
            day = self._compute(start, self._next_start(start, "day"), soc)
            self._days[start] = day
            self._soc_end[start] = day.soc_end
            while len(self._days) > CACHED_DAYS:
                self._days.popitem(last=False)
            return day

    def _soc_before(self, start: int) -> float:
        """Return the state of charge at the start of a day: the end of the day before (computed if need be)."""
        previous = self.day_start(start - 1)
        soc = self._soc_end.get(previous)
        if soc is None:
            # walk forward from the last day known (the installation at worst) instead of recursing
            known = sorted(d for d in self._soc_end if d < start)
            day = known[-1] if known else self.day_start(self.installed)
            if not known:
                self._day(day)
            while day < previous:
                day = self._next_start(day, "day")
                self._day(day)
            soc = self._soc_end[previous]
        return soc

    def _compute(self, start: int, end: int, soc: float) -> _Day:
        day = _Day(start, end, self.step)
        clouds = self._clouds(start)
        modules = self.battery_modules
        capacity = MODULE_CAPACITY_WH * modules
        max_battery = MODULE_MAX_POWER_W * modules
        hours = self.step / 3600.0
        totals = dict.fromkeys(PERIOD_SUFFIXES, 0.0)
        values = day.values
        for instant in day.instants:
            middle = instant + self.step / 2
            local = datetime.datetime.fromtimestamp(middle, self.zone)
            hour = local.hour + local.minute / 60 + local.second / 3600
            t = middle / SPEED  # the live plant's variations, slowed to real time
            irradiance = sun(hour) * clouds * (0.8 + 0.2 * wobble(t, 47.0, 113.0))
            pv = [GENERATOR_PEAK_W[i] * irradiance * (1.0 + 0.03 * wobble(t, 7.0 + i)) if i < self.generators
                  else 0.0 for i in range(2)]
            pv_voltage = [(420.0 + 130.0 * math.sqrt(irradiance) - 40.0 * i if irradiance > 0 else 3.5)
                          if i < self.generators else 0.0 for i in range(2)]
            external = (EXTERNAL_PEAK_W * sun(hour + EXTERNAL_HOUR_SHIFT) * clouds * (1.0 + 0.03 * wobble(t, 9.0))
                        if self.external_generator else 0.0)
            load = 320.0 + (900.0 if 17.0 <= hour <= 22.0 else 0.0) + 450.0 * max(0.0, wobble(t, 19.0, 31.0, 71.0))
            battery = 0.0
            if modules:
                wanted = (load - external + 30.0 * wobble(t, 3.0, 5.0)) / EFFICIENCY - sum(pv)
                battery = max(-max_battery, min(max_battery, wanted))
                if battery > 0:  # discharging: not below the minimum state of charge
                    battery = min(battery, max(0.0, (soc - SOC_MIN) * capacity / hours))
                else:  # charging: not above full
                    battery = max(battery, -max(0.0, (1.0 - soc) * capacity / hours))
                soc = min(1.0, max(0.0, soc - battery * hours / capacity))
            ac = EFFICIENCY * (sum(pv) + battery)
            ac_out = max(0.0, ac)
            grid = load - ac - external
            shares = (0.34 + 0.02 * wobble(t, 13.0), 0.33 + 0.02 * wobble(t, 17.0))
            ac_phase = (ac_out * shares[0], ac_out * shares[1], ac_out * (1.0 - shares[0] - shares[1]))
            step_values = {
                "ea": pv[0], "eb": pv[1], "eext": external, "eac": ac_out,
                "egrid_feed": min(0.0, grid), "egrid_load": max(0.0, grid), "eload": load,
                "eac1": ac_phase[0], "eac2": ac_phase[1], "eac3": ac_phase[2], "ebat": battery,
                "ua": pv_voltage[0], "ub": pv_voltage[1],
                "ubat": open_circuit_voltage(soc) * CELLS_PER_MODULE * modules,
                "ul1": 230.0 + 3.0 * wobble(t, 11.0, 29.0) - 0.0004 * ac,
                "ul2": 230.0 + 3.0 * wobble(t, 12.0, 29.0) - 0.0004 * ac,
                "ul3": 230.0 + 3.0 * wobble(t, 13.0, 29.0) - 0.0004 * ac,
                "soc": soc if modules else 0.0,
                "soc_targ": (0.95 if irradiance > 0 else 0.3) if modules else 0.0,
                "temp": 28.0 + 0.004 * abs(ac) + 2.0 * wobble(t, 97.0),
                "temp2": 26.0 + 0.003 * abs(battery),
                "temp_bat": (23.0 + 0.001 * abs(battery) + 0.5 * wobble(t, 131.0)) if modules else 0.0,
            }
            for suffix, value in step_values.items():
                values[suffix].append(f32(value))
            for suffix in PERIOD_SUFFIXES:
                totals[suffix] += values[suffix][-1] * hours  # the energy of the value as logged
                day.energy[suffix].append(totals[suffix])
        day.soc_end = soc
        return day

    # --- what the logger holds -----------------------------------------------------------------------------------

    def minute_entries(self, suffix: str, start: int, end: int, now: float | None = None) -> list[tuple[int, float]]:
        """Return the 5-minute entries (instant, value as sent) of a series with start <= instant < end, oldest
        first."""
        now = self.clock() if now is None else now
        first = max(start, self.oldest(now))
        last = min(end - 1, self.newest(now))
        out: list[tuple[int, float]] = []
        instant = -(-first // self.step) * self.step
        while instant <= last:
            day = self._day(self.day_start(instant))
            index = (instant - day.start) // self.step
            stop = min(day.end - 1, last)
            values = day.values[suffix]
            while instant <= stop:
                out.append((instant, values[index]))
                instant += self.step
                index += 1
        return out

    def _energy_between(self, suffix: str, start: int, end: int, now: float) -> float:
        """Return the energy (Wh) a series logged in 5-minute entries with start <= instant < end (and recorded)."""
        first = max(start, self.installed)
        last = min(end - 1, self.newest(now))
        total = 0.0
        day_start = self.day_start(first) if first <= last else last + 1
        while day_start <= last:
            day_end = self._next_start(day_start, "day")
            if first <= day_start and day_end - 1 <= last and day_start in self._day_energy:
                total += self._day_energy[day_start][suffix]
            else:
                day = self._day(day_start)
                lo = max(0, -(-(first - day.start) // self.step))
                hi = min(len(day.instants) - 1, (last - day.start) // self.step)
                if hi >= lo:
                    cumulative = day.energy[suffix]
                    total += cumulative[hi] - (cumulative[lo - 1] if lo else 0.0)
                if first <= day_start and day_end - 1 <= last:
                    with self._lock:
                        self._day_energy[day_start] = {s: day.energy[s][-1] for s in PERIOD_SUFFIXES}
            day_start = day_end
        return total

    def period_entries(self, resolution: str, suffix: str, now: float | None = None) -> list[tuple[int, float]]:
        """Return every day, month or year entry (period start, energy in Wh as sent), oldest first."""
        now = self.clock() if now is None else now
        out = []
        start = self._period_start(self.installed, resolution)
        newest = self.newest(now)
        while start <= newest:
            end = self._next_start(start, resolution)
            out.append((start, f32(self._energy_between(suffix, start, end, now))))
            start = end
        return out

    def points(self, name: str, start: int, end: int, now: float | None = None) -> list[tuple[int, float]]:
        """Return what the logger holds for a series (rctclient name) with start <= instant < end: the truth."""
        series = SERIES_BY_ID[SERIES_BY_NAME[name]]
        if series.resolution == "minutes":
            return self.minute_entries(series.suffix, start, end, now)
        return [(i, v) for i, v in self.period_entries(series.resolution, series.suffix, now) if start <= i < end]

    # --- answering ------------------------------------------------------------------------------------------------

    def _offsets(self, stamp: int) -> set[int]:
        """Return the UTC offsets the zone has around the instants a stamp can mean."""
        offsets = set()
        for delta in (-50_400, -25_200, -7_200, 0, 7_200, 43_200):
            offset = datetime.datetime.fromtimestamp(stamp + delta, self.zone).utcoffset()
            offsets.add(int(offset.total_seconds()) if offset is not None else 0)
        return offsets

    def _newest_before(self, stamp: int, now: float) -> int | None:
        """Return the newest recorded 5-minute entry whose stamp is before `stamp` (walking back from the newest)."""
        newest, oldest = self.newest(now), self.oldest(now)
        guess = max(((stamp - offset - 1) // self.step) * self.step for offset in self._offsets(stamp))
        instant = min(guess, newest)
        limit = 2 * 3600 // self.step + 4  # walks back through a repeated or skipped hour at most
        while instant >= oldest and self.stamp(instant) >= stamp and limit:
            instant -= self.step
            limit -= 1
        if instant < oldest or self.stamp(instant) >= stamp:
            return None
        return instant

    def answer(self, object_id: int, stamp: int, rng: random.Random, now: float | None = None) -> bytes:
        """Return the payload answering a query with `stamp`: the stamp, then (stamp, value) pairs, newest first."""
        now = self.clock() if now is None else now
        series = SERIES_BY_ID[object_id]
        head = struct.pack(">I", stamp)
        if series.resolution == "minutes":
            first = self._newest_before(stamp, now)
            if first is None:
                return head
            count = rng.randint(*ANSWER_ENTRIES)
            last = max(self.oldest(now), first - (count - 1) * self.step)
            entries = self.minute_entries(series.suffix, last, first + 1, now)
            entries.reverse()
        else:
            periods = self.period_entries(series.resolution, series.suffix, now)
            stamps = [self.stamp(i) for i, _ in periods]
            position = bisect.bisect_left(stamps, stamp)  # period starts are midnights: their stamps only rise
            count = rng.randint(*PERIOD_ANSWER_ENTRIES)
            entries = periods[max(0, position - count):position][::-1]
        return head + b"".join(_ENTRY.pack(self.stamp(i), v) for i, v in entries)


def entries_in(payload: bytes) -> list[tuple[int, float]]:
    """Return the (stamp, value) pairs of a time-series payload (for tests and the log)."""
    return [(s, v) for s, v in _ENTRY.iter_unpack(payload[4:4 + (len(payload) - 4) // 8 * 8])]


def cut_short(payload: bytes, entry_size: int, rng: random.Random) -> bytes:
    """Return a long answer cut short as the inverter sends one when another client interrupts it (a valid CRC).

    Half the time at any byte, half the time after a whole 4-byte element, which may leave a sound-looking but
    wrong number of elements (2n where 2n+1 belong).
    """
    if len(payload) <= 4 + entry_size:
        return payload
    if rng.random() < 0.5:
        return payload[:rng.randrange(5, len(payload))]
    return payload[:4 * rng.randrange(2, len(payload) // 4)]


class Records:
    """The inverter's records as the simulator serves them: the logger and the event table, behind WRITE queries.

    `write_answers` is what the simulator's request dispatch registers for the TIMESERIES and EVENT_TABLE types.
    An answer goes through the simulator's faults like any other (dropped, a byte corrupted); in addition, with the
    same probability as `--corrupt-rate`, a long answer is cut short with a valid CRC (`cut_short`), as a real
    inverter does when another client interrupts it.
    """

    def __init__(self, options: SimulatorOptions, rng: random.Random, started: float | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        started = clock() if started is None else started
        zone = zoneinfo.ZoneInfo(options.timezone) if options.timezone else host_timezone()
        seed = zlib.crc32(options.name.encode("utf-8"))
        self._rng = rng
        self._corrupt_rate = options.corrupt_rate
        self.logger = LoggerModel(options.generators, options.battery_modules, zone,
                                  int(started - options.history_days * 86_400), options.history_days,
                                  options.logger_step, seed, clock, options.external_generator)
        self.events = EventTable(options.events, options.event_every, zone, started, seed, clock)
        self.cut = 0  # answers cut short on purpose

    def _fault(self, payload: bytes, entry_size: int) -> bytes:
        if self._corrupt_rate and self._rng.random() < self._corrupt_rate:
            shorter = cut_short(payload, entry_size, self._rng)
            if shorter != payload:
                self.cut += 1
                return shorter
        return payload

    def _stamp(self, request: Request) -> int | None:
        if len(request.payload) != 4:
            return None  # not a query the inverter understands: no answer
        return int(struct.unpack(">I", request.payload)[0])

    def answer_series(self, request: Request) -> tuple[bytes, Any] | None:
        stamp = self._stamp(request)
        if stamp is None or request.object_id not in SERIES_BY_ID:
            return None
        payload = self.logger.answer(request.object_id, stamp, self._rng)
        return self._fault(payload, 8), stamp

    def answer_events(self, request: Request) -> tuple[bytes, Any] | None:
        stamp = self._stamp(request)
        if stamp is None:
            return None
        return self._fault(self.events.answer(stamp, self._rng), 20), stamp

    def write_answers(self) -> dict[DataType, Callable[[Request], tuple[bytes, Any] | None]]:
        return {DataType.TIMESERIES: self.answer_series, DataType.EVENT_TABLE: self.answer_events}


__all__: Sequence[str] = ("LoggerModel", "Records", "SERIES_BY_ID", "SERIES_BY_NAME", "cut_short", "entries_in",
                          "f32")
