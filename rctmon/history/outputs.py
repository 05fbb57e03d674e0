"""Where imported records go: InfluxDB line protocol (to a file or to InfluxDB through a spool), OpenMetrics, CSV.

Every output writes the same schema (docs/history.md, generated from `series` and `events`):

- time series: measurement `history_5min`, `history_day`, `history_month` or `history_year`, tag `inverter` (the
  same value the live measurements carry), one field per logger series, the entry's true instant as timestamp;
- events: measurement `inverter_event`, tags `inverter` and `type`, the decoded fields, the event's start.

An import is idempotent: the same window read twice gives the same measurement, tags and timestamps, so InfluxDB
overwrites instead of duplicating (a value still being logged, today's energy, is overwritten with a newer one).

OpenMetrics is what `promtool tsdb create-blocks-from openmetrics` reads (Prometheus' documented backfill): one
gauge family per series, samples grouped by family and ordered by time, `# EOF` at the end, so that output is built
in memory (about 16 bytes per value) and written when the import ends. CSV has one row per measurement and
timestamp. Files are written to a temporary name and renamed when complete.
"""

from __future__ import annotations

import array
import asyncio
import csv
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Protocol
from collections.abc import Sequence

from rctmon.history.events import EVENT_FIELDS, Event, FieldValue
from rctmon.history.series import EVENT_MEASUREMENT, LOGGER_SERIES, RESOLUTIONS, LoggerRow
from rctmon.history.timezone import utc_text

log = logging.getLogger("rctmon.history")

#: The OpenMetrics family events are written as: one sample per event, at its start, valued with its duration.
EVENT_METRIC = "rctmon_history_inverter_event_duration_seconds"
_EVENT_FIELD_TYPES = {name: kind for name, kind, _ in EVENT_FIELDS}
_NS = 1_000_000_000


class Output(Protocol):
    """What the importer hands records to; `finish` completes the output, `close` releases it either way."""

    async def points(self, row: LoggerRow, points: list[tuple[int, float]]) -> None: ...

    async def events(self, events: list[Event]) -> None: ...

    async def finish(self) -> None: ...

    def close(self) -> None: ...


# --- line protocol ----------------------------------------------------------------------------------------------


def escape_key(text: str) -> str:
    """Escape a measurement, tag key, tag value or field key (commas, equals signs, spaces; no line breaks)."""
    text = "".join(" " if ch in "\n\r\t" else ch for ch in text).rstrip("\\")
    return text.replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _field_value(kind: str, value: FieldValue) -> str:
    if kind == "string":
        text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ").replace("\r", " ")
        return f'"{text}"'
    if kind == "integer":
        return f"{int(value)}i"
    return repr(float(value))


class LineFormat:
    """Turn records into line-protocol lines for one inverter; per-series prefixes are built once."""

    def __init__(self, inverter: str) -> None:
        self.inverter = inverter
        self._tag = escape_key(inverter)
        self._prefixes: dict[LoggerRow, bytes] = {}

    def prefix(self, row: LoggerRow) -> bytes:
        prefix = self._prefixes.get(row)
        if prefix is None:
            prefix = self._prefixes[row] = (f"{escape_key(row.resolution.measurement)},inverter={self._tag} "
                                            f"{escape_key(row.field)}=").encode()
        return prefix

    def points(self, row: LoggerRow, points: Sequence[tuple[int, float]]) -> list[bytes]:
        prefix = self.prefix(row)
        return [prefix + f"{value!r} {instant * _NS}".encode() for instant, value in points]

    def event(self, event: Event) -> bytes:
        fields = ",".join(f"{name}={_field_value(_EVENT_FIELD_TYPES[name], value)}"
                          for name, value in sorted(event.fields.items()))
        return (f"{EVENT_MEASUREMENT},inverter={self._tag},type={escape_key(event.type)} {fields} "
                f"{event.start * _NS}").encode()


class _AtomicFile:
    """A file written under a temporary name beside its final one, renamed into place by `commit`."""

    def __init__(self, path: str | os.PathLike[str], binary: bool) -> None:
        self.path = Path(path)
        directory = self.path.parent if str(self.path.parent) else Path(".")
        fd, self._temp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=directory)
        self.file: IO[Any] = os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="")

    def commit(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self._temp, self.path)

    def discard(self) -> None:
        if not self.file.closed:
            self.file.close()
        try:
            os.unlink(self._temp)
        except FileNotFoundError:
            pass


class LineProtocolFile:
    """Line protocol, streamed to a file as records arrive."""

    def __init__(self, path: str | os.PathLike[str], inverter: str) -> None:
        self._format = LineFormat(inverter)
        self._file = _AtomicFile(path, binary=True)
        self._done = False

    async def points(self, row: LoggerRow, points: list[tuple[int, float]]) -> None:
        self._file.file.write(b"".join(line + b"\n" for line in self._format.points(row, points)))

    async def events(self, events: list[Event]) -> None:
        self._file.file.write(b"".join(self._format.event(e) + b"\n" for e in events))

    async def finish(self) -> None:
        self._file.commit()
        self._done = True

    def close(self) -> None:
        if not self._done:
            self._file.discard()


# --- OpenMetrics and CSV: built in memory, written at the end ------------------------------------------------------


class _Columns:
    """The values of one series: instants and values in two compact arrays."""

    __slots__ = ("instants", "values")

    def __init__(self) -> None:
        self.instants = array.array("q")
        self.values = array.array("d")

    def add(self, points: Sequence[tuple[int, float]]) -> None:
        for instant, value in points:
            self.instants.append(instant)
            self.values.append(value)

    def sorted(self) -> list[tuple[int, float]]:
        return sorted(zip(self.instants, self.values))


def _label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class OpenMetricsFile:
    """OpenMetrics text for `promtool tsdb create-blocks-from openmetrics`."""

    def __init__(self, path: str | os.PathLike[str], inverter: str) -> None:
        self._path = path
        self._inverter = inverter
        self._series: dict[LoggerRow, _Columns] = {}
        self._events: dict[tuple[str, int], float] = {}  # (type, start) -> longest duration

    async def points(self, row: LoggerRow, points: list[tuple[int, float]]) -> None:
        columns = self._series.get(row)
        if columns is None:
            columns = self._series[row] = _Columns()
        columns.add(points)

    async def events(self, events: list[Event]) -> None:
        for event in events:
            key = (event.type, event.start)  # one sample per series and second: the longer of two events wins
            self._events[key] = max(self._events.get(key, 0.0), event.duration or 0.0)

    async def finish(self) -> None:
        out = _AtomicFile(self._path, binary=False)
        try:
            write = out.file.write
            inverter = _label_value(self._inverter)
            for row in LOGGER_SERIES:  # catalog order: stable files
                columns = self._series.get(row)
                if columns is None:
                    continue
                write(f"# TYPE {row.metric} gauge\n# UNIT {row.metric} {row.unit.word}\n"
                      f"# HELP {row.metric} {row.help}\n")
                labels = f'{{inverter="{inverter}"}}'
                write("".join(f"{row.metric}{labels} {_number(v)} {t}\n" for t, v in columns.sorted()))
            if self._events:
                write(f"# TYPE {EVENT_METRIC} gauge\n# UNIT {EVENT_METRIC} seconds\n"
                      f"# HELP {EVENT_METRIC} Duration of each event the inverter logged, at its start "
                      "(0 for events without one).\n")
                by_type: dict[str, list[tuple[int, float]]] = {}
                for (name, start), duration in self._events.items():
                    by_type.setdefault(name, []).append((start, duration))
                for name in sorted(by_type):
                    labels = f'{{inverter="{inverter}",type="{_label_value(name)}"}}'
                    write("".join(f"{EVENT_METRIC}{labels} {_number(d)} {t}\n" for t, d in sorted(by_type[name])))
            write("# EOF\n")
            out.commit()
        except BaseException:
            out.discard()
            raise

    def close(self) -> None:
        self._series.clear()


class CsvFile:
    """CSV, one row per measurement and timestamp (events: one row per event), sorted by time."""

    def __init__(self, path: str | os.PathLike[str], inverter: str) -> None:
        self._path = path
        self._inverter = inverter
        self._rows: dict[tuple[str, int], dict[str, float]] = {}
        self._fields: dict[str, None] = {}  # the series fields seen, in catalog order once sorted
        self._events: list[Event] = []

    async def points(self, row: LoggerRow, points: list[tuple[int, float]]) -> None:
        measurement = row.resolution.measurement
        self._fields[row.field] = None
        for instant, value in points:
            key = (measurement, instant)
            values = self._rows.get(key)
            if values is None:
                values = self._rows[key] = {}
            values[row.field] = value

    async def events(self, events: list[Event]) -> None:
        self._events.extend(events)

    async def finish(self) -> None:
        order = {row.field: i for i, row in enumerate(LOGGER_SERIES)}
        fields = sorted(self._fields, key=lambda f: order.get(f, len(order)))
        event_fields = [name for name, _, _ in EVENT_FIELDS] if self._events else []
        measurements = {resolution.measurement: i for i, resolution in enumerate(RESOLUTIONS)}
        out = _AtomicFile(self._path, binary=False)
        try:
            writer = csv.writer(out.file)
            writer.writerow(["time", "epoch", "measurement", "inverter", *fields,
                             *(["type", *event_fields] if event_fields else [])])
            blank_events = [""] * (len(event_fields) + 1) if event_fields else []
            for (measurement, instant), values in sorted(self._rows.items(),
                                                         key=lambda item: (measurements[item[0][0]], item[0][1])):
                writer.writerow([utc_text(instant), instant, measurement, self._inverter,
                                 *(repr(values[f]) if f in values else "" for f in fields), *blank_events])
            for event in sorted(self._events, key=lambda e: (e.start, e.raw.key)):
                writer.writerow([utc_text(event.start), event.start, EVENT_MEASUREMENT, self._inverter,
                                 *([""] * len(fields)), event.type,
                                 *(_csv_value(event.fields.get(name)) for name in event_fields)])
            out.commit()
        except BaseException:
            out.discard()
            raise

    def close(self) -> None:
        self._rows.clear()


def _csv_value(value: FieldValue | None) -> str:
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


# --- InfluxDB, through a spool of the import's own ------------------------------------------------------------------


class SpoolSink(Protocol):
    """The part of rctmon.exporters.spool.Spool the InfluxDB output uses."""

    @property
    def count(self) -> int: ...

    def append(self, lines: Sequence[bytes]) -> int: ...


class InfluxOutput:
    """Line protocol into a spool that a Drainer empties into InfluxDB, with retries, as the daemon's exporter does.

    Reading waits while the spool holds `high_water` points (InfluxDB is slower than the inverter, or away), so an
    outage never makes the spool drop points: the import pauses, and goes on when InfluxDB takes writes again.
    """

    COMMIT_LINES = 5000

    def __init__(self, spool: SpoolSink, inverter: str, high_water: int, on_commit: Callable[[], None],
                 on_pause: Callable[[int], None] | None = None) -> None:
        self.spool = spool
        self._format = LineFormat(inverter)
        self._high_water = max(1, high_water)
        self._commit_lines = max(1, min(self.COMMIT_LINES, high_water // 4))
        self._on_commit = on_commit
        self._on_pause = on_pause
        self._pending: list[bytes] = []
        self.dropped = 0

    async def points(self, row: LoggerRow, points: list[tuple[int, float]]) -> None:
        self._pending.extend(self._format.points(row, points))
        if len(self._pending) >= self._commit_lines:
            await self._commit()

    async def events(self, events: list[Event]) -> None:
        self._pending.extend(self._format.event(e) for e in events)
        if len(self._pending) >= self._commit_lines:
            await self._commit()

    async def _commit(self) -> None:
        paused = False
        while self.spool.count + len(self._pending) > self._high_water and self.spool.count:
            if not paused and self._on_pause is not None:
                self._on_pause(self.spool.count)
            paused = True
            await asyncio.sleep(0.2)
        lines, self._pending = self._pending, []
        if lines:
            self.dropped += self.spool.append(lines)
            self._on_commit()

    async def finish(self) -> None:
        await self._commit()

    def close(self) -> None:
        self._pending.clear()


def file_output(fmt: str, path: str, inverter: str) -> Output:
    """Return the file output for a --format."""
    makers: dict[str, Callable[[str, str], Output]] = {
        "line-protocol": LineProtocolFile, "openmetrics": OpenMetricsFile, "csv": CsvFile}
    return makers[fmt](path, inverter)
