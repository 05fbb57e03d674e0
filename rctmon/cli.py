"""The `rctmon` command line: parse arguments, load the configuration, hand over to one command.

Commands import their modules lazily so that `rctmon --help` and the supervisor stay light.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable

from rctmon import __version__
from rctmon.config import DEFAULT_CONFIG_PATH, Config, ConfigError, dump, load
from rctmon.logsetup import setup_logging
from rctmon.history.options import add_history_arguments
from rctmon.simulator.options import add_simulator_arguments

log = logging.getLogger("rctmon")

def _cmd_daemon(args: argparse.Namespace, config: Config) -> int:
    from rctmon.supervisor import run_daemon

    return run_daemon(config, config_path=args.config, debug=args.debug, frame_debug=args.frame_debug)


def _cmd_check_config(args: argparse.Namespace, config: Config) -> int:
    sys.stdout.write(dump(config))
    return 0


def _cmd_inventory(args: argparse.Namespace, config: Config) -> int:
    from rctmon.collector.oneshot import inventory_command

    return inventory_command(config, frame_debug=args.frame_debug)


def _cmd_read(args: argparse.Namespace, config: Config) -> int:
    from rctmon.collector.oneshot import read_command

    return read_command(config, args.names, frame_debug=args.frame_debug)


def _cmd_history(args: argparse.Namespace, config: Config) -> int:
    from rctmon.history.command import history_command

    return history_command(config, args)


def _cmd_simulator(args: argparse.Namespace, config: Config) -> int:
    from rctmon.simulator import options_from_args, run_simulator

    return run_simulator(options_from_args(args))


def _cmd_demo(args: argparse.Namespace, config: Config) -> int:
    from rctmon.demo import run_demo

    return run_demo(config, port=args.port, debug=args.debug)


COMMANDS: dict[str, Callable[[argparse.Namespace, Config], int]] = {
    "daemon": _cmd_daemon,
    "check-config": _cmd_check_config,
    "inventory": _cmd_inventory,
    "read": _cmd_read,
    "history": _cmd_history,
    "simulator": _cmd_simulator,
    "demo": _cmd_demo,
}
#: Commands that run without a configuration file (they use the defaults when none is given).
NO_CONFIG_NEEDED = {"simulator", "demo"}
#: Commands that first check that this machine can run what the configuration enables (rctmon.preflight).
PREFLIGHT = {"daemon", "check-config"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rctmon", description="Monitoring daemon for RCT Power inverters.")
    parser.add_argument("-c", "--config", default=None,
                        help=f"configuration file (default: {DEFAULT_CONFIG_PATH})")
    parser.add_argument("--debug", action="store_true", help="log (almost) everything at DEBUG level")
    parser.add_argument("--frame-debug", action="store_true", help="log every frame sent and received")
    parser.add_argument("--version", action="version", version=f"rctmon {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    sub.add_parser("daemon", help="run the monitoring daemon in the foreground")
    sub.add_parser("check-config", help="validate the configuration and print it, secrets masked")
    sub.add_parser("inventory", help="connect once, print what is attached and the current values")
    read = sub.add_parser("read", help="read objects by their rctclient name and print the values")
    read.add_argument("names", nargs="+", metavar="NAME")
    add_history_arguments(sub.add_parser("history", help="import the inverter's own records (logger, events)"))
    add_simulator_arguments(sub.add_parser("simulator", help="run the built-in inverter simulator"))
    demo = sub.add_parser("demo", help="run the simulator and the daemon with exposition on")
    demo.add_argument("--port", type=int, default=None, help="metrics port (default: prometheus.bind_port)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    path = args.config
    if path is None and args.command not in NO_CONFIG_NEEDED:
        path = DEFAULT_CONFIG_PATH
    try:
        config = load(path) if path else Config()
    except ConfigError as exc:
        print(f"rctmon: {exc}", file=sys.stderr)
        return 2
    if args.command in PREFLIGHT:
        from rctmon.preflight import preflight

        problems = preflight(config, clashes=args.command == "daemon")  # check-config: its daemon may run
        if problems:
            print(f"rctmon: {ConfigError(problems, source=path or 'configuration')}", file=sys.stderr)
            return 2
    args.config = path
    try:
        setup_logging(config, debug=args.debug, frame_debug=args.frame_debug)
    except (ValueError, TypeError, AttributeError, ImportError) as exc:
        print(f"rctmon: logging: invalid configuration: {exc}", file=sys.stderr)
        return 2
    for warning in config.warnings:
        log.warning("%s", warning)
    try:
        return COMMANDS[args.command](args, config)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `rctmon inventory | head`: the reader left; that is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
