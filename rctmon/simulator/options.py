"""The simulator's options: what the simulated inverter has attached, which faults it injects, and its command line."""

from __future__ import annotations

import argparse
import sys
import zlib
from dataclasses import dataclass

from rctmon.inventory import GENERATOR_NAMES, Inventory

SOFTWARE_VERSION = "rctmon-sim-1.0"  # svnversion
PARAMETER_FILE = "PS_6.0_BA3L_sim.bin"


def serial_for(name: str) -> str:
    """Return the serial number of the simulated inverter called `name` (stable, different per name)."""
    return f"SIM{zlib.crc32(name.encode('utf-8')) % 10**9:09d}"


@dataclass
class SimulatorOptions:
    """What the simulated inverter has attached and which faults it injects (see `rctmon simulator --help`)."""

    host: str = "127.0.0.1"
    port: int = 0
    name: str = "rctmon simulator"
    generators: int = 2
    battery_modules: int = 3
    power_switch: bool = True
    external_generator: bool = False  # a second inverter or a balcony plant on the S0 input
    latency_ms: float = 0.0
    drop_rate: float = 0.0
    corrupt_rate: float = 0.0
    noise_rate: float = 0.0
    disconnect_every: float = 0.0
    seed: int | None = None

    def problems(self) -> list[str]:
        """Return what is wrong with these options, one message per problem (empty: all fine)."""
        problems = [f"--{name.replace('_', '-')} must be between 0 and 1, got {getattr(self, name)}"
                    for name in ("drop_rate", "corrupt_rate", "noise_rate") if not 0.0 <= getattr(self, name) <= 1.0]
        if not 0 <= self.generators <= 2:
            problems.append(f"--generators must be 0, 1 or 2, got {self.generators}")
        if not 0 <= self.battery_modules <= 7:
            problems.append(f"--battery-modules must be 0 to 7, got {self.battery_modules}")
        if self.latency_ms < 0 or self.disconnect_every < 0:
            problems.append("--latency-ms and --disconnect-every must not be negative")
        if not 0 <= self.port <= 65535:
            problems.append(f"--port must be 0 to 65535, got {self.port}")
        return problems

    def inventory(self) -> Inventory:
        """Return the inventory a collector should discover on this simulator (all of it, serial included)."""
        return Inventory(name=self.name, serial=serial_for(self.name), software_version=SOFTWARE_VERSION,
                         parameter_file=PARAMETER_FILE, generators=GENERATOR_NAMES[:self.generators],
                         battery_modules=self.battery_modules, power_switch=self.power_switch, complete=True)


def options_from_args(args: argparse.Namespace) -> SimulatorOptions:
    """Return the options given on the command line (add_simulator_arguments); exit 2 when they are invalid."""
    options = SimulatorOptions(
        host=args.host, port=args.port, name=args.name, generators=args.generators,
        battery_modules=args.battery_modules, power_switch=not args.no_power_switch,
        external_generator=args.external_generator, latency_ms=args.latency_ms,
        drop_rate=args.drop_rate, corrupt_rate=args.corrupt_rate, noise_rate=args.noise_rate,
        disconnect_every=args.disconnect_every, seed=args.seed)
    problems = options.problems()
    if problems:
        print("rctmon simulator: " + "; ".join(problems), file=sys.stderr)
        raise SystemExit(2)
    return options


def add_simulator_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `rctmon simulator` (read back by options_from_args) to `parser`."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8899, help="TCP port; 0 picks a free one (default: %(default)s)")
    parser.add_argument("--name", default="rctmon simulator", help="inverter name (android_description)")
    parser.add_argument("--generators", type=int, choices=(0, 1, 2), default=2, help="solar generators attached")
    parser.add_argument("--battery-modules", type=int, default=3, choices=range(0, 8), metavar="{0..7}",
                        help="battery modules (0: no battery)")
    parser.add_argument("--no-power-switch", action="store_true", help="simulate an inverter without Power Switch")
    parser.add_argument("--external-generator", action="store_true",
                        help="an external generator (a second inverter, a balcony plant) on the S0 input")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before each answer")
    parser.add_argument("--drop-rate", type=float, default=0.0, help="fraction of requests never answered")
    parser.add_argument("--corrupt-rate", type=float, default=0.0, help="fraction of answers with a corrupted byte")
    parser.add_argument("--noise-rate", type=float, default=0.0,
                        help="fraction of answers preceded by noise: unsolicited answers, echoes, AT+, extensions")
    parser.add_argument("--disconnect-every", type=float, default=0.0, metavar="S",
                        help="close every client connection after S seconds (0: never)")
    parser.add_argument("--seed", type=int, default=None, help="seed the random faults (reproducible runs)")

