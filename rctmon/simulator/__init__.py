"""The built-in inverter simulator: an RCT Power inverter on a TCP port, for the demo, the tests and the benchmarks.

The package's parts, each with one job:

- `options`: what the simulated inverter has attached and which faults it injects; the command line;
- `plant`: the physics (sun, household, battery, grid, external generator, calendar) over a compressed day;
- `cells`: the cells of a battery module (24 LiFePO4 cells, one weak);
- `values`: what each registry object answers, as a function of the plant;
- `wire`: building answer frames and splitting a client's byte stream into requests, fast;
- `server`: the TCP server, its fault injection and the request dispatch (`Simulator`, `SimulatorThread`).

The names below are imported lazily, so that `rctmon --help` (which needs only the options) stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rctmon.simulator.options import SimulatorOptions, add_simulator_arguments, options_from_args
    from rctmon.simulator.server import Simulator, SimulatorStats, SimulatorThread, run_simulator

__all__ = ["Simulator", "SimulatorOptions", "SimulatorStats", "SimulatorThread", "add_simulator_arguments",
           "options_from_args", "run_simulator"]

_WHERE = {"SimulatorOptions": "options", "add_simulator_arguments": "options", "options_from_args": "options",
          "Simulator": "server", "SimulatorStats": "server", "SimulatorThread": "server", "run_simulator": "server"}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
