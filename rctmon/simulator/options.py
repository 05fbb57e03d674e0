"""The simulator's options: what the simulated inverter has attached, which faults it injects, and its command line."""

from __future__ import annotations

import argparse
import sys
import zlib
from dataclasses import dataclass

from rctmon.faults import words_for
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
    # the inverter's records (logger.py, events.py)
    history_days: float = 90.0  # depth of the 5-minute memory; day, month, year go back as far
    events: int = 20  # events in the table when the simulator starts
    event_every: float = 0.0  # seconds between new events while it runs (0: none)
    logger_step: int = 300  # seconds between 5-minute entries (shorter only to see a logger move in a test)
    timezone: str = ""  # IANA zone of the inverter's clock; empty: the host's
    #: Faults the inverter reports (rctmon.faults names, or bit_<n>): bits set in fault[0..3].flt
    inverter_faults: tuple[str, ...] = ()

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
        problems += records_problems(self)
        try:
            words_for(self.inverter_faults)
        except ValueError as exc:
            problems.append(f"--inverter-fault: {exc}")
        return problems

    def inventory(self) -> Inventory:
        """Return the inventory a collector should discover on this simulator (all of it, serial included)."""
        return Inventory(name=self.name, serial=serial_for(self.name), software_version=SOFTWARE_VERSION,
                         parameter_file=PARAMETER_FILE, generators=GENERATOR_NAMES[:self.generators],
                         battery_modules=self.battery_modules, power_switch=self.power_switch,
                         external_generator=self.external_generator, complete=True)


def options_from_args(args: argparse.Namespace) -> SimulatorOptions:
    """Return the options given on the command line (add_simulator_arguments); exit 2 when they are invalid."""
    options = SimulatorOptions(
        host=args.host, port=args.port, name=args.name, generators=args.generators,
        battery_modules=args.battery_modules, power_switch=not args.no_power_switch,
        external_generator=args.external_generator, latency_ms=args.latency_ms,
        drop_rate=args.drop_rate, corrupt_rate=args.corrupt_rate, noise_rate=args.noise_rate,
        disconnect_every=args.disconnect_every, seed=args.seed, history_days=args.history_days, events=args.events,
        event_every=args.event_every, logger_step=args.logger_step, timezone=args.timezone,
        inverter_faults=tuple(args.inverter_fault))
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
    parser.add_argument("--inverter-fault", action="append", default=[], metavar="NAME",
                        help="a fault the inverter reports in fault[0..3].flt (a name of rctmon.faults, e.g. "
                             "grid_undervoltage_l1, or bit_<0..127>); may be given several times")
    add_records_arguments(parser)


def records_problems(options: SimulatorOptions) -> list[str]:
    """Return what is wrong with the options of the inverter's records (logger and event table)."""
    problems = []
    if not 0 < options.history_days <= 3660:
        problems.append(f"--history-days must be above 0 and at most 3660, got {options.history_days}")
    if not 0 <= options.events <= 100_000:
        problems.append(f"--events must be 0 to 100000, got {options.events}")
    if not (options.event_every == 0 or 1 <= options.event_every <= 86_400 * 365):
        problems.append(f"--event-every must be 0 (never) or at least 1 second, got {options.event_every}")
    if options.logger_step <= 0 or 900 % options.logger_step:
        problems.append(f"--logger-step must divide 900 seconds (300, 60, 10, ...), got {options.logger_step}")
    if options.timezone:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(options.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            problems.append(f"--timezone: unknown time zone {options.timezone!r} (an IANA name)")
    return problems


def add_records_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of the inverter's records: the logger's history and the event table."""
    parser.add_argument("--history-days", type=float, default=90.0, metavar="N",
                        help="days of 5-minute history the logger holds (default: %(default)g)")
    parser.add_argument("--events", type=int, default=20, metavar="N",
                        help="events in the event table at start (default: %(default)s)")
    parser.add_argument("--event-every", type=float, default=0.0, metavar="S",
                        help="raise a new event every S seconds while running (0: never)")
    parser.add_argument("--logger-step", type=int, default=300, metavar="S",
                        help="seconds between the logger's 5-minute entries (default: %(default)s)")
    parser.add_argument("--timezone", default="", metavar="ZONE",
                        help="IANA time zone of the inverter's clock (default: the host's)")

