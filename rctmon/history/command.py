"""`rctmon history`: read the inverter's records for a window and write them to InfluxDB or to a file.

    rctmon -c FILE history [--since WHEN] [--until WHEN] [--what minutes,day,month,year,events]
                           [--output FILE --format line-protocol|openmetrics|csv]

WHEN is a date (`2026-09-01`: local midnight in the inverter's zone), a date and time (`2026-09-01T06:00`), or a
span back from now (`36h`, `14d`, `90m`). Without --output the records go to the configured InfluxDB through a
spool of the import's own (`history-spool.sqlite` beside the daemon's spool: a spool belongs to one process, and
the import may run while the daemon does), drained with the daemon's retries; the import ends when InfluxDB has
taken everything. Ctrl-C while it waits keeps the spool: the next `rctmon history` sends those points first.

A progress bar on a terminal (queries, points, rate, time left), plain log lines otherwise; a summary at the end.
Exit status: 0 when everything in the window was read and written; 1 when the inverter could not be reached or a
span could not be read; 2 for a usage error; 130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO
from collections.abc import Sequence

from rctmon.config import Config, device_timezone
from rctmon.durations import parse_duration
from rctmon.history.engine import Reader
from rctmon.history.outputs import InfluxOutput, Output, file_output
from rctmon.history.protocol import BAD_ANSWER_KINDS
from rctmon.history.options import WHAT
from rctmon.history.series import EVENT_MEASUREMENT, LoggerRow, rows_for
from rctmon.history.session import Session, Unreachable
from rctmon.history.summary import Summary, Tee
from rctmon.history.timezone import InverterClock, utc_text

log = logging.getLogger("rctmon.history")

HISTORY_SPOOL = "history-spool.sqlite"
#: How far back the inverter can remember at most: its records start in 2000 (the year series).
EARLIEST = 946_684_800
PROGRESS_EVERY = 0.25  # seconds between progress bar updates on a terminal
LOG_EVERY = 10.0  # seconds between progress lines in a log


class UsageError(ValueError):
    """A command-line value that makes no sense; the message says which."""


def parse_when(text: str, zone: datetime.tzinfo, now: float) -> int:
    """Return the instant a WHEN means: a span back from `now` (rctmon.durations), or a local date or date and
    time."""
    try:
        return int(now - parse_duration(text))
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"{text!r} is neither a date (2026-09-01), a date and time (2026-09-01T06:00) nor a span "
                         "(36h, 14d)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return int(moment.timestamp())


def parse_what(text: str) -> tuple[list[str], bool]:
    """Return the resolutions and whether events are wanted, from a --what list."""
    wanted = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in wanted if item not in WHAT]
    if unknown or not wanted:
        raise UsageError(f"--what takes {', '.join(WHAT)}; got {text!r}")
    return [w for w in WHAT if w in wanted and w != "events"], "events" in wanted


@dataclass
class Plan:
    """What one run reads and where it goes."""

    start: int
    end: int
    rows: list[LoggerRow]
    events: bool
    output: str | None
    format: str


def plan_from_args(args: argparse.Namespace, zone: datetime.tzinfo, now: float) -> Plan:
    """Return the plan the arguments ask for; raise UsageError when they make no sense."""
    if args.format is not None and args.output is None:
        raise UsageError("--format needs --output FILE")
    start = parse_when(args.since, zone, now)
    end = int(now) if args.until is None else min(parse_when(args.until, zone, now), int(now))
    start = max(start, EARLIEST)
    if start >= end:
        raise UsageError(f"the window is empty: --since {args.since} is not before --until {args.until or 'now'}")
    resolutions, events = parse_what(args.what)
    rows = [row for what in resolutions for row in rows_for(what)]
    return Plan(start, end, rows, events, args.output, args.format or "line-protocol")


# --- progress ------------------------------------------------------------------------------------------------------


class Progress:
    """A progress bar on a terminal, log lines otherwise."""

    WIDTH = 24

    def __init__(self, reader: Reader, stream: TextIO) -> None:
        self._reader = reader
        self._stream = stream
        self.tty = stream.isatty()
        self._started = time.monotonic()
        self._shown = False
        self.note = ""

    def line(self) -> str:
        stats = self._reader.stats
        share = self._reader.progress
        elapsed = time.monotonic() - self._started
        rate = stats.points / elapsed if elapsed > 0 else 0.0
        left = elapsed * (1 - share) / share if share > 0.001 else None
        eta = _duration(left) if left is not None else "?"
        filled = int(share * self.WIDTH)
        bar = "#" * filled + "." * (self.WIDTH - filled)
        text = (f"[{bar}] {share * 100:3.0f}%  {stats.queries:,} queries  {stats.points:,} points  "
                f"{rate:,.0f} points/s  {eta} left")
        return f"{text}  {self.note}" if self.note else text

    def show(self) -> None:
        if self.tty:
            self._stream.write("\r\033[K" + self.line())
            self._stream.flush()
            self._shown = True
        else:
            log.info("%s", self.line())

    def done(self) -> None:
        if self.tty and self._shown:
            self._stream.write("\r\033[K")
            self._stream.flush()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    return f"{seconds // 60}:{seconds % 60:02d}"


# --- the run -------------------------------------------------------------------------------------------------------


class _Influx:
    """The InfluxDB output with its spool and drain thread, opened for one run."""

    def __init__(self, config: Config, inverter: str, progress_note: list[str]) -> None:
        from rctmon.exporters.influxwriter import Drainer, InfluxSender, StatsBox
        from rctmon.exporters.spool import Spool, spool_path

        settings = config.influxdb
        self.path = spool_path(settings, adopt=False).with_name(HISTORY_SPOOL)
        self.spool = Spool(self.path, settings.spool_max_points)
        self.url = settings.url
        self.drainer = Drainer(self.spool, lambda: InfluxSender(settings), settings, StatsBox())
        self.waiting_before = self.spool.count
        if self.waiting_before:
            log.info("%d points of an earlier import wait in %s; they go first", self.waiting_before, self.path)

        def paused(count: int) -> None:
            progress_note[:] = [f"(waiting for InfluxDB: {count:,} points in the spool)"]

        def committed() -> None:
            progress_note[:] = []
            self.drainer.points_spooled()

        self.output = InfluxOutput(self.spool, inverter, settings.spool_max_points * 3 // 4, committed, paused)
        self.drainer.start()

    async def drain(self, out: TextIO) -> None:
        """Wait until InfluxDB has taken every spooled point, saying so while it takes long."""
        shown = 0.0
        while self.spool.count:
            if time.monotonic() - shown > LOG_EVERY:
                out.write(f"rctmon history: waiting for InfluxDB at {self.url} to take {self.spool.count:,} points "
                          f"(Ctrl-C keeps them in {self.path} for the next `rctmon history`)\n")
                out.flush()
                shown = time.monotonic()
            await asyncio.to_thread(self.drainer.wait_drained, 1.0)

    def close(self) -> None:
        if self.drainer.stop(1.0):
            self.spool.close()


async def _import(config: Config, plan: Plan, out: TextIO, err: TextIO) -> int:
    clock = InverterClock(device_timezone(config.device))
    session = Session(config)
    influx: _Influx | None = None
    output: Output | None = None
    note: list[str] = []
    try:
        inventory = await session.open()
        from rctmon.exporters.lineprotocol import inverter_tag

        inverter = inverter_tag(inventory) or "unknown"
        if plan.output is None:
            influx = _Influx(config, inverter, note)
            output = influx.output
        else:
            output = file_output(plan.format, plan.output, inverter)
        summary = Summary()
        reader = Reader(session, clock, Tee(output, summary), concurrency=2 * config.device.max_in_flight)
        progress = Progress(reader, err)
        log.info("reading %s from %s (%s) into %s", _what(plan), inverter, session.address,
                 plan.output or f"InfluxDB at {config.influxdb.url}")
        ticker = asyncio.ensure_future(_tick(progress, note))
        started = time.monotonic()
        try:
            await reader.run(plan.rows, plan.events, plan.start, plan.end)
            await output.finish()
        finally:
            ticker.cancel()
            progress.done()
        seconds = time.monotonic() - started
        session.close()
        if influx is not None:
            await influx.drain(err)
        _print_summary(out, plan, inverter, session, reader, summary, seconds, influx)
        return 1 if reader.unread else 0
    except Unreachable:
        if influx is not None and influx.spool.count:
            log.warning("%d points read so far stay in %s and go first with the next `rctmon history`",
                        influx.spool.count, influx.path)
        raise
    finally:
        session.close()
        if output is not None:
            output.close()
        if influx is not None:
            influx.close()


async def _tick(progress: Progress, note: list[str]) -> None:
    while True:
        await asyncio.sleep(PROGRESS_EVERY if progress.tty else LOG_EVERY)
        progress.note = note[0] if note else ""
        progress.show()


def _what(plan: Plan) -> str:
    parts = sorted({row.resolution.name for row in plan.rows}, key=WHAT.index) + (["events"] if plan.events else [])
    return f"{', '.join(parts)} from {utc_text(plan.start)} to {utc_text(plan.end)}"


def _print_summary(out: TextIO, plan: Plan, inverter: str, session: Session, reader: Reader, summary: Summary,
                   seconds: float, influx: _Influx | None) -> None:
    stats = reader.stats
    target = plan.output if plan.output is not None else f"InfluxDB ({influx.url if influx else '?'})"
    out.write(f"Read {_what(plan)} from {inverter} at {session.address} into {target} in {seconds:.1f} s.\n")
    bad = ", ".join(f"{kind} {stats.bad_answers.get(kind, 0)}" for kind in BAD_ANSWER_KINDS
                    if stats.bad_answers.get(kind))
    out.write(f"{stats.queries:,} queries, {stats.answers:,} answers used, {stats.reasked} answers re-asked"
              f"{f' ({bad})' if bad else ''}, {stats.unanswered} unanswered, {session.reconnects} reconnects; "
              f"{stats.invalid_values} values that were no number dropped, {session.unmatched} logger answers "
              "that answered no question of ours\n\n")
    rows = []
    for row in plan.rows:
        tally = summary.series.get(row)
        if tally is None or not tally.count:
            rows.append((row.resolution.measurement, row.field, "0", "-", "-", "-"))
            continue
        gaps = tally.gaps()
        missing = sum(b - a - row.resolution.step for a, b in gaps)
        gap_text = f"{len(gaps)} ({_duration(missing)} without entries)" if gaps else "none"
        rows.append((row.resolution.measurement, row.field, f"{tally.count:,}", utc_text(min(tally.instants)),
                     utc_text(max(tally.instants)), gap_text))
    if rows:
        _table(out, ("MEASUREMENT", "FIELD", "POINTS", "FIRST", "LAST", "GAPS IN THE INVERTER'S RECORD"), rows)
    if plan.events:
        kinds = ", ".join(f"{name} {count}" for name, count in sorted(summary.event_types.items())) or "none"
        span = (f", first {utc_text(summary.first_event)}, last {utc_text(summary.last_event)}"
                if summary.first_event is not None and summary.last_event is not None else "")
        out.write(f"\n{EVENT_MEASUREMENT}: {summary.events_total} events ({kinds}){span}\n")
    _print_gaps(out, summary)
    if reader.unread:
        out.write(f"\nNOT READ ({len(reader.unread)} spans; run the same command again to try them once more):\n")
        for unread in reader.unread[:20]:
            out.write(f"  {unread.what} {utc_text(unread.start)} .. {utc_text(unread.end)}: {unread.reason}\n")
    if influx is not None and influx.output.dropped:
        out.write(f"\nthe spool was full: {influx.output.dropped} points were dropped\n")


def _print_gaps(out: TextIO, summary: Summary, limit: int = 10) -> None:
    """List the inverter's own gaps once for all 5-minute series that share them."""
    shared: dict[tuple[int, int], list[str]] = {}
    for tally in summary.tallies():
        for gap in tally.gaps():
            shared.setdefault(gap, []).append(f"{tally.row.resolution.measurement}.{tally.row.field}")
    if not shared:
        return
    out.write("\nGaps in the inverter's own record (it logged nothing there):\n")
    for (before, after), fields in sorted(shared.items())[:limit]:
        who = "every series read" if len(fields) == len(summary.series) else ", ".join(fields[:4]) + (
            f" and {len(fields) - 4} more" if len(fields) > 4 else "")
        out.write(f"  after {utc_text(before)} until {utc_text(after)}: {who}\n")
    if len(shared) > limit:
        out.write(f"  and {len(shared) - limit} more\n")


def _table(out: TextIO, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]
    for row in (header, *rows):
        out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() + "\n")


def history_command(config: Config, args: argparse.Namespace, out: TextIO | None = None,
                    err: TextIO | None = None) -> int:
    """Run `rctmon history`; return the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        plan = plan_from_args(args, device_timezone(config.device), time.time())
    except (UsageError, ValueError) as exc:
        print(f"rctmon history: {exc}", file=err)
        return 2
    if plan.output is None and not config.influxdb.enable:
        print("rctmon history: InfluxDB is not enabled in the configuration (influxdb.enable); enable it, or write "
              "to a file with --output FILE --format line-protocol|openmetrics|csv", file=err)
        return 2
    if plan.output is not None and not Path(plan.output).resolve().parent.is_dir():
        print(f"rctmon history: --output: no directory {Path(plan.output).parent}", file=err)
        return 2
    try:
        return asyncio.run(_import(config, plan, out, err))
    except Unreachable as exc:
        print(f"rctmon history: cannot read the inverter at {config.device.host}:{config.device.port}: {exc}",
              file=err)
        return 1
    except KeyboardInterrupt:
        if plan.output is None:
            from rctmon.exporters.spool import spool_path

            path = spool_path(config.influxdb, adopt=False).with_name(HISTORY_SPOOL)
            print(f"\nrctmon history: interrupted; points not yet in InfluxDB stay in {path} and go first with the "
                  "next `rctmon history`", file=err)
        else:
            print("\nrctmon history: interrupted; no file written", file=err)
        return 130
    except OSError as exc:  # the spool's directory, the output file
        print(f"rctmon history: {exc}", file=err)
        return 1
    except RuntimeError as exc:  # SpoolLocked: another import holds the history spool
        print(f"rctmon history: {exc} (is another `rctmon history` running?)", file=err)
        return 1
