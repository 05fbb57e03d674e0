"""`rctmon inventory` and `rctmon read`: connect once, ask, print, exit. What a user runs first.

Both use the daemon's own connection, framer and poller, so a successful `rctmon inventory` shows that the daemon
will be able to talk to the inverter. Failures end with one line naming the address and the reason.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any, Callable, TextIO, TypeVar
from collections.abc import Awaitable, Mapping, Sequence

from rctclient.registry import REGISTRY

from rctmon.catalog import CELL, OBJECTS, SERIES, Kind, Series, enabled_objects, enabled_series
from rctmon.collector.connection import InverterConnection, LinkDown, open_connection
from rctmon.collector.discovery import INVENTORY_IDS, NoAnswer, discover
from rctmon.collector.framer import INVALID, Decoder, Frame
from rctmon.collector.scheduler import Poller, Window
from rctmon.config import Config
from rctmon.inventory import Inventory
from rctmon.messages import CollectorStats

log = logging.getLogger("rctmon.collector.oneshot")
T = TypeVar("T")

#: Rounds (each: `request_timeout` x attempts) the name may take to answer before the inverter counts as mute.
NAME_ROUNDS = 2

class Unreachable(Exception):
    """The inverter could not be reached or did not answer; the message is the reason."""


class _Session:
    """One connection with a poller that collects every decoded answer for the wanted objects."""

    def __init__(self, config: Config, wanted: Sequence[int]) -> None:
        self.config = config
        self.stats = CollectorStats()
        self.values: dict[int, object] = {}
        self._wanted = frozenset(wanted)
        self._decoder = Decoder(self.stats.decode_errors)
        self.connection: InverterConnection | None = None
        self.poller: Poller | None = None

    async def open(self) -> None:
        device = self.config.device
        try:
            self.connection = await open_connection(device.host, device.port, device.connect_timeout, self.stats,
                                                    self._on_frames)
        except LinkDown as exc:
            raise Unreachable(str(exc)) from exc
        assert self.connection.link is not None
        self.poller = Poller(self.connection.link, Window(device.max_in_flight), self.stats, device.request_timeout)

    def _on_frames(self, frames: list[Frame], arrived_ns: int) -> None:
        assert self.poller is not None
        now = asyncio.get_running_loop().time()
        self.poller.heard()
        for object_id, payload in frames:
            if object_id in self._wanted:
                value = self._decoder.decode(object_id, payload)
                if value is not INVALID:
                    self.values[object_id] = value
                self.poller.resolve(object_id, value, now)

    async def until_closed(self, work: Awaitable[T]) -> T:
        """Await `work`, unless the connection goes away first."""
        assert self.connection is not None
        task = asyncio.ensure_future(work)
        waiters: list[asyncio.Future[Any]] = [task, self.connection.closed]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            reason = self.connection.closed.result()
            raise Unreachable(str(reason))
        return task.result()

    def close(self) -> None:
        if self.poller is not None:
            self.poller.close()
        if self.connection is not None:
            self.connection.close()


async def _inventory(config: Config) -> tuple[Inventory, list[Series], _Session]:
    session = _Session(config, tuple(INVENTORY_IDS) + tuple(s.object_id for s in SERIES))
    await session.open()
    try:
        assert session.poller is not None
        try:
            inventory = await session.until_closed(discover(session.poller, name_rounds=NAME_ROUNDS))
        except NoAnswer as exc:
            raise Unreachable(f"connected, but {exc}") from exc
        series = list(enabled_series(inventory))
        await session.until_closed(session.poller.read(enabled_objects(inventory)))
    finally:
        session.close()
    return inventory, series, session


async def _read(config: Config, object_ids: Sequence[int]) -> _Session:
    session = _Session(config, object_ids)
    await session.open()
    try:
        assert session.poller is not None
        await session.until_closed(session.poller.read(object_ids))
    finally:
        session.close()
    return session


def _number(value: object, decimals: int | None = None) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if decimals is not None:
        return f"{value:.{decimals}f}"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _display(series: Series, raw: object) -> str:
    """Return a value as a person reads it: in the unit the catalog shows people, or why there is none."""
    samples = series.display_samples(raw)
    if not samples:
        return "(implausible value)"
    unit = series.row.display_unit
    symbol = f" {unit.symbol}" if unit is not None else ""
    if series.row.per_element:
        values = [v for _, v in samples]
        decimals = unit.precision if unit is not None else None
        return (f"{len(values)} cells, {_number(min(values), decimals)} to {_number(max(values), decimals)}{symbol}"
                " (table below)")
    value = samples[0][1]
    return _number(value) + ("" if isinstance(value, str) else symbol)


def _labels(series: Series) -> str:
    labels = list(series.labels)
    if series.row.kind is Kind.INFO:
        labels.append(("field", series.row.field))
    return ",".join(f"{k}={v}" for k, v in labels) or "-"


def _print_inventory(out: TextIO, address: str, inventory: Inventory) -> None:
    rows = (
        ("Inverter", inventory.name or "?"),
        ("Address", address),
        ("Serial", inventory.serial or "?"),
        ("Software", inventory.software_version or "?"),
        ("Parameter file", inventory.parameter_file or "?"),
        ("Generators", ", ".join(g.upper() for g in inventory.generators) or "none"),
        ("Battery", inventory.describe_battery()),
        ("Power Switch", "present" if inventory.power_switch else "none"),
        ("External", "generator on the S0 input" if inventory.external_generator else "none"),
        ("Inventory", "complete" if inventory.complete else "incomplete (some objects did not answer)"),
    )
    for key, value in rows:
        out.write(f"{key + ':':<16}{value}\n")


def _table(out: TextIO, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i]) for i in range(len(header))]
    for row in (header, *rows):
        out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() + "\n")


#: Cells worth pointing out in a module's cell table: (catalog field, which extreme, note).
CELL_MARKS: tuple[tuple[str, Callable[..., Any], str], ...] = (
    ("voltage", min, "lowest voltage"),
    ("resistance", max, "highest resistance"),
)


def _cell_tables(out: TextIO, series: Sequence[Series], values: Mapping[int, object]) -> None:
    """Print a table of every cell per battery module (one column per catalog row that yields a value per cell)."""
    columns_by_module: dict[int, list[Series]] = {}
    for s in series:
        if s.row.per_element and s.index is not None:
            columns_by_module.setdefault(s.index, []).append(s)
    for module, columns in sorted(columns_by_module.items()):
        shown = [dict(s.display_samples(values[s.object_id])) if s.object_id in values else {} for s in columns]
        keys = [labels for labels in columns[0].element_labels]
        notes: dict[int, list[str]] = {}
        for field, extreme, note in CELL_MARKS:
            for column, by_labels in zip(columns, shown):
                if column.row.field == field and by_labels:
                    labels = extreme(by_labels, key=by_labels.__getitem__)
                    notes.setdefault(keys.index(labels), []).append(note)
        header = ["CELL"] + [f"{c.row.field.upper()} ({_symbol(c)})" for c in columns] + ["NOTE"]
        rows = []
        for i, labels in enumerate(keys):
            cells = [_number(by_labels[labels], _decimals(c)) if labels in by_labels else "-"
                     for c, by_labels in zip(columns, shown)]
            rows.append([CELL.values[i]] + cells + [", ".join(notes.get(i, []))])
        out.write(f"\nBattery module {module}:\n")
        _table(out, header, rows)


def _symbol(series: Series) -> str:
    unit = series.row.display_unit
    return unit.symbol if unit else ""


def _decimals(series: Series) -> int | None:
    unit = series.row.display_unit
    return unit.precision if unit else None


def _summary(stats: CollectorStats) -> str:
    errors = ", ".join(f"{k} {v}" for k, v in sorted(stats.decode_errors.items())) or "none"
    return f"{stats.frames_sent} requests, {stats.request_timeouts} timeouts, skipped frames: {errors}"


def _fail(config: Config, reason: object) -> int:
    print(f"rctmon: cannot read the inverter at {config.device.host}:{config.device.port}: {reason}",
          file=sys.stderr)
    return 1


def _enable_frame_debug(frame_debug: bool) -> None:
    if frame_debug:
        logging.getLogger("rctmon.frames").setLevel(logging.DEBUG)


def inventory_command(config: Config, frame_debug: bool = False, out: TextIO | None = None) -> int:
    """Print the inventory and the value of every catalog series it enables; 0 on success."""
    _enable_frame_debug(frame_debug)
    out = out or sys.stdout
    try:
        inventory, series, session = asyncio.run(_inventory(config))
    except Unreachable as exc:
        return _fail(config, exc)
    _print_inventory(out, f"{config.device.host}:{config.device.port}", inventory)
    out.write("\n")
    rows = [(s.object_name, s.metric, _labels(s),
             _display(s, session.values[s.object_id]) if s.object_id in session.values else "(no answer)")
            for s in series]
    _table(out, ("OBJECT", "METRIC", "LABELS", "VALUE"), rows)
    _cell_tables(out, series, session.values)
    missing = sum(1 for s in series if s.object_id not in session.values)
    out.write(f"\n{len(series) - missing} of {len(series)} enabled catalog series answered; "
              f"{_summary(session.stats)}\n")
    return 0


def read_command(config: Config, names: Sequence[str], frame_debug: bool = False,
                 out: TextIO | None = None) -> int:
    """Read objects by rctclient name and print their values; 0 when every one answered."""
    _enable_frame_debug(frame_debug)
    out = out or sys.stdout
    infos = []
    for name in names:
        try:
            infos.append(REGISTRY.get_by_name(name))
        except KeyError:
            print(f"rctmon: unknown object {name!r} (names as in rctclient's registry, e.g. battery.soc)",
                  file=sys.stderr)
            return 2
    try:
        session = asyncio.run(_read(config, [info.object_id for info in infos]))
    except Unreachable as exc:
        return _fail(config, exc)
    rows = []
    for info in infos:
        value = session.values.get(info.object_id, INVALID)
        series = OBJECTS.get(info.object_id, ())
        if value is INVALID:
            rows.append((info.name, "(no answer)"))
        elif series:  # the catalog knows its real unit (the registry calls a 0..1 ratio "%")
            rows += [(info.name, _display(s, value) if len(series) == 1 else f"{s.row.field}: {_display(s, value)}")
                     for s in series]
        else:
            rows.append((info.name, f"{value} {info.unit or ''}".rstrip()))
    _table(out, ("OBJECT", "VALUE"), rows)
    _cell_tables(out, [s for info in infos for s in OBJECTS.get(info.object_id, ())], session.values)
    return 0 if all(info.object_id in session.values for info in infos) else 1
