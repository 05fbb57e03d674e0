"""The command line of `rctmon history`; kept free of heavy imports, as `rctmon --help` builds every subparser."""

from __future__ import annotations

import argparse

#: What can be read: the logger's four memories (by resolution) and the event table.
WHAT: tuple[str, ...] = ("minutes", "day", "month", "year", "events")
#: File formats of --output.
FORMATS: tuple[str, ...] = ("line-protocol", "openmetrics", "csv")
DEFAULT_SINCE = "1d"


def add_history_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `rctmon history` to its subparser."""
    parser.add_argument("--since", default=DEFAULT_SINCE, metavar="WHEN",
                        help="start of the window: a date (2026-09-01), a date and time (2026-09-01T06:00) or a span "
                             "back from now (36h, 14d) (default: %(default)s)")
    parser.add_argument("--until", default=None, metavar="WHEN", help="end of the window (default: now)")
    parser.add_argument("--what", default=",".join(WHAT), metavar="LIST",
                        help=f"what to read, comma-separated: {', '.join(WHAT)} (default: all)")
    parser.add_argument("--output", default=None, metavar="FILE",
                        help="write to FILE instead of the configured InfluxDB")
    parser.add_argument("--format", default=None, choices=FORMATS,
                        help="format of --output (default: line-protocol)")
