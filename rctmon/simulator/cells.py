"""The cells of one simulated battery module: 24 LiFePO4 cells in series, each a little different, one of them weak.

An RCT Power battery module holds 24 cells (shared fixtures: battery.cells[0] carries 24 records, 3.318-3.327 V and
25-28 degC; battery.cells_resist[0] 1.32-2.42 mOhm). Each cell here has fixed traits drawn once per module
from a generator seeded with the module index, so every run and every test sees the same cells:

- a resistance (about 1.3-2.4 mOhm at 25 degC, higher in the cold) and a small offset of its open-circuit voltage;
- a place in the module that sets its temperature (the middle of the stack runs warmer than its ends);
- one weak cell per module (`weak_cell`): less capacity, so a lower voltage at the same state of charge, and a
  higher resistance, so it sags further under load. It is what a user of the cell metrics should find.

A cell's voltage is its open-circuit voltage at the module's state of charge (the flat LiFePO4 curve below) minus
current times resistance (times POLARISATION for the slower effects a real cell shows), so the voltages rise while
the battery charges, fall while it discharges and spread further apart the harder it works.
"""

from __future__ import annotations

import bisect
import random
from typing import NamedTuple

CELLS_PER_MODULE = 24
#: Open-circuit voltage of a LiFePO4 cell by state of charge: steep at both ends, a plateau around 3.3 V between.
OCV_CURVE: tuple[tuple[float, float], ...] = (
    (0.00, 2.90), (0.05, 3.10), (0.10, 3.20), (0.20, 3.25), (0.35, 3.28), (0.50, 3.30), (0.65, 3.31),
    (0.80, 3.33), (0.90, 3.34), (0.95, 3.36), (1.00, 3.45))
_OCV_SOC = tuple(soc for soc, _ in OCV_CURVE)
#: How much further than its ohmic drop a cell's voltage moves under current (polarisation), as a factor.
POLARISATION = 1.2
#: Healthy cells' resistance at 25 degC (ohm) and voltage offsets (V): drawn uniformly from these ranges.
RESISTANCE_RANGE = (1.35e-3, 2.35e-3)
VOLTAGE_OFFSET = 0.002
#: The weak cell: how much less of its charge it holds at the same state of charge, how far its voltage sits below
#: the healthy cells' at rest, and how much its resistance exceeds the highest a healthy cell has.
WEAK_SOC_DEFICIT = 0.04
WEAK_VOLTAGE_OFFSET = -0.003
WEAK_RESISTANCE_FACTOR = 1.45
#: Resistance rises this much per degree below 25 degC (and falls above it).
RESISTANCE_PER_KELVIN = 0.015


def open_circuit_voltage(soc: float) -> float:
    """Return a LiFePO4 cell's open-circuit voltage (V) at a state of charge (0..1, clamped), interpolated."""
    soc = min(1.0, max(0.0, soc))
    i = min(len(OCV_CURVE) - 1, max(1, bisect.bisect_left(_OCV_SOC, soc)))
    (s0, v0), (s1, v1) = OCV_CURVE[i - 1], OCV_CURVE[i]
    return v0 + (v1 - v0) * (soc - s0) / (s1 - s0)


def weak_cell(module: int) -> int:
    """Return the index of the weak cell of a module (a different place in each module)."""
    return (5 + 7 * module) % CELLS_PER_MODULE


class Cell(NamedTuple):
    """One cell now: temperature (degC), voltage (V) and internal resistance (ohm)."""

    temperature: float
    voltage: float
    resistance: float


class ModuleCells:
    """The fixed traits of one module's cells, and their state for a given charge, current and temperature."""

    def __init__(self, module: int) -> None:
        rng = random.Random(1000 + module)
        self.module = module
        self.weak = weak_cell(module)
        weak = self.weak
        weak_resistance = RESISTANCE_RANGE[1] * WEAK_RESISTANCE_FACTOR
        self._resistance = [weak_resistance if c == weak else rng.uniform(*RESISTANCE_RANGE)
                            for c in range(CELLS_PER_MODULE)]
        self._soc_offset = [-WEAK_SOC_DEFICIT if c == weak else rng.uniform(-0.01, 0.01)
                            for c in range(CELLS_PER_MODULE)]
        self._voltage_offset = [WEAK_VOLTAGE_OFFSET if c == weak else rng.uniform(-VOLTAGE_OFFSET, VOLTAGE_OFFSET)
                                for c in range(CELLS_PER_MODULE)]
        # The middle of the stack runs up to 3 K warmer than its ends; lower modules a little cooler.
        self._warmth = [3.0 * (1.0 - abs(c - (CELLS_PER_MODULE - 1) / 2) / (CELLS_PER_MODULE / 2))
                        + rng.uniform(-0.3, 0.3) - 0.4 * module for c in range(CELLS_PER_MODULE)]

    def state(self, soc: float, current: float, temperature: float) -> tuple[Cell, ...]:
        """Return every cell's state at a module state of charge (0..1), a current (A, positive: discharging)
        and a module base temperature (degC)."""
        cells = []
        for c in range(CELLS_PER_MODULE):
            cell_temperature = temperature + self._warmth[c]
            resistance = self._resistance[c] * (1.0 + RESISTANCE_PER_KELVIN * (25.0 - cell_temperature))
            voltage = (open_circuit_voltage(soc + self._soc_offset[c]) + self._voltage_offset[c]
                       - POLARISATION * current * resistance)
            cells.append(Cell(cell_temperature, voltage, resistance))
        return tuple(cells)
