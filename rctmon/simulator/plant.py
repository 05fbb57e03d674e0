"""The physics behind the simulator's values: sun, household, battery and grid, balanced and integrated over time.

A simulated day passes in `DAY_SECONDS` of real time and starts at `START_HOUR`, so that whoever starts a simulator
sees the sun up (generator power above zero) for the first minutes whatever the wall clock says, and a demo left
running sees evening, night (battery discharging) and morning within minutes. Energy counters integrate the
simulated powers over simulated time, so they grow plausibly fast and never run backwards; day counters return to
zero at simulated midnight, as on the inverter.

Sign conventions follow the inverter: battery power positive while discharging, grid power positive while drawing
from the grid, and grid feed-in energy counted negative (shared fixtures: energy.e_grid_feed_total = -2769942.25).
"""

from __future__ import annotations

import math
import time
from typing import Callable

DAY_SECONDS = 600.0
START_HOUR = 8.0
SPEED = 86400.0 / DAY_SECONDS  # simulated seconds per real second
#: Values are recomputed at most this often (real seconds): answers in one burst agree with each other, and the
#: model costs nothing per request.
REFRESH_SECONDS = 0.05
MAX_STEP_SECONDS = 1.0  # real seconds: 2.4 simulated minutes

GENERATOR_PEAK_W = (5200.0, 3600.0)
MODULE_CAPACITY_WH = 1900.0  # one RCT battery module
MODULE_MAX_POWER_W = 1900.0
CELLS_PER_MODULE = 24
SOC_MIN = 0.07
EFFICIENCY = 0.97  # DC to AC, both ways
PERIODS = ("day", "month", "year", "total")
#: Counters as a long-running inverter shows them (Wh; month, year, total), taken from the shared fixtures' scale.
ENERGY_BASES: dict[str, tuple[float, float, float]] = {
    "ac": (410_000.0, 2_300_000.0, 5_901_940.0),
    "dc0": (220_000.0, 1_250_000.0, 3_137_539.75),
    "dc1": (240_000.0, 1_400_000.0, 3_523_068.75),
    "grid_feed": (-190_000.0, -1_050_000.0, -2_769_942.25),
    "grid_load": (130_000.0, 1_600_000.0, 4_078_949.25),
    "household": (350_000.0, 2_800_000.0, 7_210_942.0),
}
#: What each counter had reached by START_HOUR on the first simulated day (the night's consumption).
ENERGY_MORNING: dict[str, float] = {"ac": 150.0, "dc0": 90.0, "dc1": 60.0, "grid_feed": 0.0, "grid_load": 1900.0,
                                    "household": 2400.0}


def sun(hour: float) -> float:
    """Return the clear-sky irradiance (0..1) at a simulated hour: up 06:00 to 20:00, highest at 13:00."""
    if not 6.0 < hour < 20.0:
        return 0.0
    return float(math.sin(math.pi * (hour - 6.0) / 14.0) ** 1.3)


def wobble(t: float, *periods: float) -> float:
    """Return a smooth, deterministic variation in -1..1 of real time `t` (sum of incommensurate sines)."""
    return sum(math.sin(2.0 * math.pi * t / p + p) for p in periods) / len(periods)


class Plant:
    """An installation (generators, battery modules, Power Switch) whose state follows the simulated clock."""

    def __init__(self, generators: int, battery_modules: int, power_switch: bool,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.generators = generators
        self.battery_modules = battery_modules
        self.power_switch = power_switch
        self._clock = clock
        self._t0 = clock()
        self._last = self._t0
        self.capacity_wh = MODULE_CAPACITY_WH * battery_modules
        self.max_battery_w = MODULE_MAX_POWER_W * battery_modules
        self.elapsed = 0.0  # real seconds since start
        self.hour = START_HOUR
        self.day = 0
        self.soc = 0.45 if battery_modules else 0.0
        self.soh = 0.985 if battery_modules else 0.0
        self.energy_since_start: dict[str, float] = {key: 0.0 for key in ENERGY_BASES}
        self.energy_today: dict[str, float] = dict(ENERGY_MORNING)
        self.charged_ah = 2100.0 * battery_modules
        self.discharged_ah = 2050.0 * battery_modules
        self.stored_wh = 420_000.0 * battery_modules
        self.used_wh = 400_000.0 * battery_modules
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
        dt_hours = max(0.0, now - self._last) * SPEED / 3600.0
        self._last = now
        self.elapsed = now - self._t0
        simulated_hours = START_HOUR + self.elapsed * SPEED / 3600.0
        self.hour = simulated_hours % 24.0
        day = int(simulated_hours // 24.0)
        if day != self.day:
            self.day = day
            self.energy_today = {key: 0.0 for key in ENERGY_BASES}
        self._balance(dt_hours)

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

        evening = 900.0 if 17.0 <= self.hour <= 22.0 else 0.0
        self.load = 320.0 + evening + 450.0 * max(0.0, wobble(t, 19.0, 31.0, 71.0))
        shares = (0.42 + 0.05 * wobble(t, 13.0), 0.33 + 0.04 * wobble(t, 17.0))
        self.load_phase = [self.load * shares[0], self.load * shares[1], self.load * (1.0 - shares[0] - shares[1])]

        self.battery_power = self._battery_power(pv, dt_hours)  # positive: discharging
        self.ac_power = EFFICIENCY * (pv + self.battery_power)
        self.grid_power = self.load - self.ac_power  # positive: drawn from the grid
        ac_share = self.ac_power / 3.0
        self.grid_phase = [p - ac_share for p in self.load_phase]

        self.grid_voltage = [230.0 + 3.0 * wobble(t, 11.0 + i, 29.0) - 0.0004 * self.ac_power for i in range(3)]
        self.grid_ptp = [math.sqrt(3.0) * (self.grid_voltage[i] + self.grid_voltage[(i + 1) % 3]) / 2.0
                         for i in range(3)]
        self.frequency = 50.0 + 0.03 * wobble(t, 5.0, 23.0)

        self.heatsink_temperature = 28.0 + 0.004 * abs(self.ac_power) + 2.0 * wobble(t, 97.0)
        self.core_temperature = self.heatsink_temperature + 9.0
        self.actuator_temperature = 26.0 + 0.003 * abs(self.battery_power)
        self.battery_temperature = 23.0 + 0.001 * abs(self.battery_power) + 0.5 * wobble(t, 131.0)

        self.cell_voltage = 3.45 + 0.65 * self.soc + 0.00002 * -self.battery_power / max(1, self.battery_modules)
        self.battery_voltage = self.cell_voltage * CELLS_PER_MODULE * self.battery_modules
        self.battery_current = self.battery_power / self.battery_voltage if self.battery_voltage else 0.0

        self._integrate(pv, dt_hours)

    def _battery_power(self, pv: float, dt_hours: float) -> float:
        """Return the battery power that balances generation and load, within power and charge limits."""
        if not self.battery_modules:
            return 0.0
        # The inverter's control loop never balances perfectly: a few watts keep flowing to or from the grid.
        wanted = (self.load + 30.0 * wobble(self.elapsed, 3.0, 5.0)) / EFFICIENCY - pv
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
        }
        for key, wh in increments.items():
            self.energy_since_start[key] += wh
            self.energy_today[key] += wh
        if self.battery_power < 0:
            self.stored_wh += -self.battery_power * dt_hours
            self.charged_ah += -self.battery_current * dt_hours
        else:
            self.used_wh += self.battery_power * dt_hours
            self.discharged_ah += self.battery_current * dt_hours

    def energy(self, counter: str, period: str) -> float:
        """Return an energy counter in Wh: `counter` from ENERGY_BASES, `period` from PERIODS."""
        if period == "day":
            return self.energy_today[counter]
        base = ENERGY_BASES[counter][PERIODS.index(period) - 1]
        return base + self.energy_since_start[counter]

    @property
    def cycles(self) -> int:
        """Full-equivalent cycles: energy taken out over the capacity."""
        return int(self.used_wh / self.capacity_wh) if self.capacity_wh else 0
