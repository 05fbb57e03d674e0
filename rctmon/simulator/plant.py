"""The physics behind the simulator's values: sun, household, battery and grid, balanced and integrated over time.

A simulated day passes in `DAY_SECONDS` of real time and starts at `START_HOUR`, so that whoever starts a simulator
sees the sun up (generator power above zero) for the first minutes whatever the wall clock says, and a demo left
running sees evening, night (battery discharging) and morning within minutes. The simulated calendar starts on
`start_date` (default: today) and moves one day per simulated day.

Energy counters integrate the simulated powers over simulated time, so they grow plausibly fast and never run
backwards. Each counter has a day, month, year and total value, all advanced together; the day value returns to
zero at simulated midnight, the month value on the first of a simulated month and the year value on the first of
January, as on the inverter. So day <= month <= year <= total (in magnitude) always holds, and on the first day of
a month its month value equals its day value. The values at the start are the total from the shared fixtures and,
for the other periods, an average day's energy times the days elapsed in the period.

The power balance: household load = inverter AC output (solar and battery, after conversion) + external generator
+ grid. Sign conventions follow the inverter: battery power positive while discharging, grid power positive while
drawing from the grid, and grid feed-in energy counted negative (shared fixtures: energy.e_grid_feed_total =
-2769942.25).
"""

from __future__ import annotations

import datetime
import math
import time
from typing import Callable, NamedTuple

from rctmon.simulator.cells import CELLS_PER_MODULE, Cell, ModuleCells, open_circuit_voltage

DAY_SECONDS = 600.0
START_HOUR = 8.0
SPEED = 86400.0 / DAY_SECONDS  # simulated seconds per real second
#: Values are recomputed at most this often (real seconds): answers in one burst agree with each other, and the
#: model costs nothing per request.
REFRESH_SECONDS = 0.05
MAX_STEP_SECONDS = 1.0  # real seconds: 2.4 simulated minutes

GENERATOR_PEAK_W = (5200.0, 3600.0)
#: The external generator on the S0 input: a balcony plant facing south-east (its noon comes earlier).
EXTERNAL_PEAK_W = 780.0
EXTERNAL_HOUR_SHIFT = 1.0
MODULE_CAPACITY_WH = 1900.0  # one RCT battery module
MODULE_MAX_POWER_W = 1900.0
SOC_MIN = 0.07
EFFICIENCY = 0.97  # DC to AC, both ways
#: Resistance of the connections in a module (ohm), part of the battery circuit's impedance besides the cells'.
MODULE_CONNECTION_OHM = 0.02
PERIODS = ("day", "month", "year", "total")
_PERIOD_INDEX = {period: i for i, period in enumerate(PERIODS)}
#: Lifetime counters (Wh) as a long-running inverter shows them, from the shared fixtures where they have one.
ENERGY_TOTALS: dict[str, float] = {
    "ac": 5_901_940.0, "dc0": 3_137_539.75, "dc1": 3_523_068.75, "grid_feed": -2_769_942.25,
    "grid_load": 4_078_949.25, "household": 7_210_942.0, "ext": 1_480_000.0}
#: An average day's energy (Wh) over a year: what the month and year counters had gathered per elapsed day.
#: Small enough that a whole year stays below the lifetime total.
DAILY_AVERAGE: dict[str, float] = {
    "ac": 13_000.0, "dc0": 6_800.0, "dc1": 7_600.0, "grid_feed": -6_000.0, "grid_load": 8_800.0,
    "household": 17_000.0, "ext": 2_100.0}
#: What each counter had reached by START_HOUR on the first simulated day (the night's consumption).
ENERGY_MORNING: dict[str, float] = {"ac": 150.0, "dc0": 90.0, "dc1": 60.0, "grid_feed": 0.0, "grid_load": 1900.0,
                                    "household": 2400.0, "ext": 15.0}
#: Insulation resistance of the PV array (ohm) to ground from its positive and negative poles, as measured before
#: the inverter connects in the morning; it varies a little from day to day (dew, rain).
INSULATION_OHM = (4.6e6, 5.3e6)


class StackSummary(NamedTuple):
    """What the cells of the whole battery stack add up to: voltages (V), temperatures (degC), impedance (ohm)."""

    voltage: float
    min_voltage: float
    max_voltage: float
    min_temperature: float
    max_temperature: float
    impedance: float


def starting_counters(date: datetime.date) -> dict[str, list[float]]:
    """Return every energy counter's [day, month, year, total] (Wh) at START_HOUR of `date`."""
    elapsed_in_month = date.day - 1
    elapsed_in_year = date.timetuple().tm_yday - 1
    return {key: [morning, morning + DAILY_AVERAGE[key] * elapsed_in_month,
                  morning + DAILY_AVERAGE[key] * elapsed_in_year, ENERGY_TOTALS[key]]
            for key, morning in ENERGY_MORNING.items()}


def insulation(day: int) -> tuple[float, float]:
    """Return the insulation resistances (positive, negative; ohm) measured on simulated day `day`."""
    return (INSULATION_OHM[0] * (1.0 + 0.15 * math.sin(1.7 * day)),
            INSULATION_OHM[1] * (1.0 + 0.15 * math.sin(2.3 * day + 1.0)))


def sun(hour: float) -> float:
    """Return the clear-sky irradiance (0..1) at a simulated hour: up 06:00 to 20:00, highest at 13:00."""
    if not 6.0 < hour < 20.0:
        return 0.0
    return float(math.sin(math.pi * (hour - 6.0) / 14.0) ** 1.3)


def wobble(t: float, *periods: float) -> float:
    """Return a smooth, deterministic variation in -1..1 of real time `t` (sum of incommensurate sines)."""
    return sum(math.sin(2.0 * math.pi * t / p + p) for p in periods) / len(periods)


class Plant:
    """An installation (generators, battery modules, Power Switch, external generator) on the simulated clock."""

    def __init__(self, generators: int, battery_modules: int, power_switch: bool,
                 clock: Callable[[], float] = time.monotonic, *, external_generator: bool = False,
                 start_date: datetime.date | None = None) -> None:
        self.generators = generators
        self.battery_modules = battery_modules
        self.power_switch = power_switch
        self.external_generator = external_generator
        self._clock = clock
        self._t0 = clock()
        self._last = self._t0
        self.capacity_wh = MODULE_CAPACITY_WH * battery_modules
        self.max_battery_w = MODULE_MAX_POWER_W * battery_modules
        self.elapsed = 0.0  # real seconds since start
        self.hour = START_HOUR
        self.day = 0  # simulated days since start
        self.steps = 0  # how often the state has moved: what was computed from it holds until this changes
        self.start_date = start_date if start_date is not None else datetime.date.today()
        self.date = self.start_date  # the simulated calendar's day
        self.soc = 0.45 if battery_modules else 0.0
        self.soh = 0.985 if battery_modules else 0.0
        #: Every energy counter's [day, month, year, total] in Wh (see the module docstring).
        self.counters = starting_counters(self.start_date)
        self.charged_ah = 2100.0 * battery_modules
        self.discharged_ah = 2050.0 * battery_modules
        self.stored_wh = 420_000.0 * battery_modules
        self.used_wh = 400_000.0 * battery_modules
        self.modules = tuple(ModuleCells(m) for m in range(battery_modules))
        self._cells: dict[int, tuple[Cell, ...]] = {}  # per module, computed when asked, forgotten every step
        self._stack: StackSummary | None = None  # likewise
        self.insulation_positive, self.insulation_negative = insulation(0)
        self._balance(0.0)

    def refresh(self) -> None:
        """Advance the state to now, unless it was computed less than REFRESH_SECONDS ago."""
        now = self._clock()
        if now - self._last >= REFRESH_SECONDS:
            self.advance_to(now)

    def advance_to(self, now: float) -> None:
        """Advance the state to real time `now` (from the plant's clock), integrating energy on the way.

        Long gaps (nobody asked for a while) are walked in steps of MAX_STEP_SECONDS, so that the sun curve and the
        battery's limits shape the energy counters as if someone had been watching.
        """
        while now - self._last > MAX_STEP_SECONDS:
            self._step(self._last + MAX_STEP_SECONDS)
        self._step(now)

    def _step(self, now: float) -> None:
        self.steps += 1
        dt_hours = max(0.0, now - self._last) * SPEED / 3600.0
        self._last = now
        self.elapsed = now - self._t0
        simulated_hours = START_HOUR + self.elapsed * SPEED / 3600.0
        self.hour = simulated_hours % 24.0
        day = int(simulated_hours // 24.0)
        if day != self.day:
            self._new_day(day)
        self._cells.clear()
        self._stack = None
        self._balance(dt_hours)

    def _new_day(self, day: int) -> None:
        """Turn the calendar to simulated day `day`: reset the counters of every period that begins with it."""
        before, self.day = self.date, day
        self.date = self.start_date + datetime.timedelta(days=day)
        if self.date.year != before.year:
            first_reset = _PERIOD_INDEX["year"]
        elif self.date.month != before.month:
            first_reset = _PERIOD_INDEX["month"]
        else:
            first_reset = _PERIOD_INDEX["day"]
        for values in self.counters.values():
            for period in range(first_reset + 1):
                values[period] = 0.0
        self.insulation_positive, self.insulation_negative = insulation(day)

    def _balance(self, dt_hours: float) -> None:
        t = self.elapsed
        clouds = 0.8 + 0.2 * wobble(t, 47.0, 113.0)
        irradiance = sun(self.hour) * clouds
        self.generator_power: list[float] = [
            GENERATOR_PEAK_W[i] * irradiance * (1.0 + 0.03 * wobble(t, 7.0 + i)) if i < self.generators else 0.0
            for i in range(2)]
        self.generator_voltage: list[float] = [
            (420.0 + 130.0 * math.sqrt(irradiance) - 40.0 * i if irradiance > 0 else 3.5) if i < self.generators
            else 0.0 for i in range(2)]
        pv = sum(self.generator_power)
        self.external_power = (EXTERNAL_PEAK_W * sun(self.hour + EXTERNAL_HOUR_SHIFT) * clouds
                               * (1.0 + 0.03 * wobble(t, 9.0)) if self.external_generator else 0.0)

        evening = 900.0 if 17.0 <= self.hour <= 22.0 else 0.0
        self.load = 320.0 + evening + 450.0 * max(0.0, wobble(t, 19.0, 31.0, 71.0))
        shares = (0.42 + 0.05 * wobble(t, 13.0), 0.33 + 0.04 * wobble(t, 17.0))
        self.load_phase = [self.load * shares[0], self.load * shares[1], self.load * (1.0 - shares[0] - shares[1])]

        self.battery_power = self._battery_power(pv, dt_hours)  # positive: discharging
        self.ac_power = EFFICIENCY * (pv + self.battery_power)
        self.grid_power = self.load - self.ac_power - self.external_power  # positive: drawn from the grid
        supply_share = (self.ac_power + self.external_power) / 3.0
        self.grid_phase = [p - supply_share for p in self.load_phase]

        self.grid_voltage = [230.0 + 3.0 * wobble(t, 11.0 + i, 29.0) - 0.0004 * self.ac_power for i in range(3)]
        self.grid_ptp = [math.sqrt(3.0) * (self.grid_voltage[i] + self.grid_voltage[(i + 1) % 3]) / 2.0
                         for i in range(3)]
        self.frequency = 50.0 + 0.03 * wobble(t, 5.0, 23.0)

        self.heatsink_temperature = 28.0 + 0.004 * abs(self.ac_power) + 2.0 * wobble(t, 97.0)
        self.core_temperature = self.heatsink_temperature + 9.0
        self.actuator_temperature = 26.0 + 0.003 * abs(self.battery_power)
        self.battery_temperature = 23.0 + 0.001 * abs(self.battery_power) + 0.5 * wobble(t, 131.0)

        # The current follows from the power at the stack's open-circuit voltage; the cells' voltages (and so the
        # battery voltage) follow from the current.
        stack_ocv = open_circuit_voltage(self.soc) * CELLS_PER_MODULE * self.battery_modules
        self.battery_current = self.battery_power / stack_ocv if stack_ocv else 0.0

        self._integrate(pv, dt_hours)

    def _battery_power(self, pv: float, dt_hours: float) -> float:
        """Return the battery power that balances generation and load, within power and charge limits."""
        if not self.battery_modules:
            return 0.0
        # The inverter's control loop never balances perfectly: a few watts keep flowing to or from the grid.
        wanted = (self.load - self.external_power + 30.0 * wobble(self.elapsed, 3.0, 5.0)) / EFFICIENCY - pv
        power = max(-self.max_battery_w, min(self.max_battery_w, wanted))
        if dt_hours > 0:
            if power > 0:  # discharging: not below the minimum state of charge
                power = min(power, max(0.0, (self.soc - SOC_MIN) * self.capacity_wh / dt_hours))
            else:  # charging: not above full
                power = max(power, -max(0.0, (1.0 - self.soc) * self.capacity_wh / dt_hours))
            self.soc = min(1.0, max(0.0, self.soc - power * dt_hours / self.capacity_wh))
        return power

    def _integrate(self, pv: float, dt_hours: float) -> None:
        if dt_hours <= 0:
            return
        increments = {
            "ac": max(0.0, self.ac_power) * dt_hours,
            "dc0": self.generator_power[0] * dt_hours,
            "dc1": self.generator_power[1] * dt_hours,
            "grid_feed": min(0.0, self.grid_power) * dt_hours,  # negative, as the inverter counts it
            "grid_load": max(0.0, self.grid_power) * dt_hours,
            "household": self.load * dt_hours,
            "ext": self.external_power * dt_hours,
        }
        for key, wh in increments.items():
            values = self.counters[key]
            values[0] += wh
            values[1] += wh
            values[2] += wh
            values[3] += wh
        if self.battery_power < 0:
            self.stored_wh += -self.battery_power * dt_hours
            self.charged_ah += -self.battery_current * dt_hours
        else:
            self.used_wh += self.battery_power * dt_hours
            self.discharged_ah += self.battery_current * dt_hours

    def energy(self, counter: str, period: str) -> float:
        """Return an energy counter in Wh: `counter` from ENERGY_TOTALS, `period` from PERIODS."""
        return self.counters[counter][_PERIOD_INDEX[period]]

    @property
    def cycles(self) -> int:
        """Full-equivalent cycles: energy taken out over the capacity."""
        return int(self.used_wh / self.capacity_wh) if self.capacity_wh else 0

    @property
    def efficiency(self) -> float:
        """The battery's efficiency as the inverter reports it: energy taken out over energy put in."""
        return self.used_wh / self.stored_wh if self.stored_wh else 0.0

    # --- the battery's cells -----------------------------------------------------------------------------------

    def cells(self, module: int) -> tuple[Cell, ...]:
        """Return the state of every cell of a battery module now (computed once per step, when first asked)."""
        cells = self._cells.get(module)
        if cells is None:
            cells = self._cells[module] = self.modules[module].state(
                self.soc, self.battery_current, self.battery_temperature - 1.5)
        return cells

    def all_cells(self) -> list[Cell]:
        """Return the state of every cell of every module now."""
        return [cell for module in range(self.battery_modules) for cell in self.cells(module)]

    @property
    def stack(self) -> StackSummary:
        """Return what the whole stack's cells add up to now (computed once per step, when first asked)."""
        if self._stack is None:
            cells = self.all_cells()
            if not cells:
                self._stack = StackSummary(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
            else:
                volts = [cell.voltage for cell in cells]
                temperatures = [cell.temperature for cell in cells]
                self._stack = StackSummary(
                    voltage=sum(volts), min_voltage=min(volts), max_voltage=max(volts),
                    min_temperature=min(temperatures), max_temperature=max(temperatures),
                    impedance=sum(cell.resistance for cell in cells) + MODULE_CONNECTION_OHM * self.battery_modules)
        return self._stack

    @property
    def battery_voltage(self) -> float:
        """The stack's voltage (V): its modules, and their cells, are in series."""
        return self.stack.voltage

    @property
    def battery_impedance(self) -> float:
        """The battery circuit's impedance (ohm): every cell's resistance and each module's connections."""
        return self.stack.impedance

    @property
    def insulation_total(self) -> float:
        """The PV array's total insulation resistance to ground (ohm): both poles' in parallel."""
        rp, rn = self.insulation_positive, self.insulation_negative
        return rp * rn / (rp + rn)
