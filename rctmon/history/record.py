"""The history record: up to when InfluxDB holds everything, and which spans the backfill has yet to fill.

The daemon's record of a plant is complete while the collector is connected and the influxdb child makes its
readings durable; a stop, a network outage or a first install leaves a hole. The record says where:

- `complete_until`: InfluxDB holds everything before this instant, apart from the spans below (the newest live
  reading made durable, or the end of the last gap declared);
- `missing`: per logger object (rctclient name of a 5-minute series, or the event table), the spans the backfill
  has not filled yet, disjoint and sorted.

The influxdb child keeps it: it applies every BackfillBatch (rctmon.messages) after the batch's lines are committed
to the spool and before it acknowledges the batch, and saves the file (write, fsync, rename), so a span is marked
filled only once its points are durable. The collector reads the file when it starts and keeps a copy it updates
with what it sends. The file is JSON, small (a few spans per object), and read defensively: a file that is not
what this module writes is reported in one log line and ignored, a time in the future is clamped to now.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterable, Sequence

from rctmon.history.protocol import EARLIEST_STAMP
from rctmon.history.series import EVENT_OBJECT, rows_for
from rctmon.messages import BackfillBatch, RecordSpan

log = logging.getLogger("rctmon.history")

FORMAT = 1
#: What the backfill fills: every 5-minute series and the event table (rctclient names).
BACKFILLED: tuple[str, ...] = (*(row.object_name for row in rows_for("minutes")), EVENT_OBJECT)
#: Spans kept per object; beyond it the two closest are joined (asking again for what lies between is harmless).
MAX_SPANS = 64
#: A file larger than this is not ours.
MAX_FILE_BYTES = 256 * 1024
#: How far ahead of this host's clock a time in the file may lie before it counts as future-dated.
CLOCK_SLACK = 300

Span = tuple[int, int]


@dataclass
class Record:
    """What InfluxDB holds: complete before `complete_until` (None: never recorded), except the `missing` spans."""

    complete_until: int | None = None
    missing: dict[str, list[Span]] = field(default_factory=dict)

    def declare(self, names: Iterable[str], start: int, end: int) -> None:
        """Mark [start, end) missing for each object: a gap in the record that the backfill is to fill."""
        if start < end:
            for name in names:
                self.missing[name] = _add(self.missing.get(name, []), start, end)
        self.live(end)

    def live(self, instant: int) -> None:
        """Note that everything live before `instant` is durable."""
        if self.complete_until is None or instant > self.complete_until:
            self.complete_until = instant

    def filled(self, name: str, start: int, end: int) -> None:
        """Mark [start, end) of one object filled."""
        spans = _remove(self.missing.get(name, []), start, end)
        if spans:
            self.missing[name] = spans
        else:
            self.missing.pop(name, None)

    def trim(self, since: int) -> None:
        """Forget what is missing before `since` (history.max_gap: never asked for)."""
        for name in list(self.missing):
            self.filled(name, EARLIEST_STAMP, since)

    def apply(self, batch: BackfillBatch) -> None:
        """Apply what a batch says about the record (its lines are durable by now)."""
        if batch.since is not None:
            self.trim(batch.since)
        for name, start, end in batch.gaps:
            self.declare((name,), start, end)
        for name, start, end in batch.done:
            self.filled(name, start, end)

    def spans(self) -> list[RecordSpan]:
        """Return every missing span, newest first."""
        spans = [(name, start, end) for name, pieces in self.missing.items() for start, end in pieces]
        return sorted(spans, key=lambda span: (-span[2], span[0]))

    def pending_seconds(self) -> int:
        """Return the time the record lacks: the length of the union of every object's missing spans."""
        merged: list[Span] = []
        for start, end in sorted(s for pieces in self.missing.values() for s in pieces):
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        return sum(end - start for start, end in merged)

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "complete_until": self.complete_until,
                           "missing": {name: [list(span) for span in spans] for name, spans in self.missing.items()}},
                          sort_keys=True)


def _add(spans: Sequence[Span], start: int, end: int) -> list[Span]:
    """Return the union of disjoint sorted spans and [start, end), disjoint and sorted, at most MAX_SPANS long."""
    merged: list[Span] = []
    for a, b in sorted([*spans, (start, end)]):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    while len(merged) > MAX_SPANS:
        i = min(range(len(merged) - 1), key=lambda k: merged[k + 1][0] - merged[k][1])
        merged[i:i + 2] = [(merged[i][0], merged[i + 1][1])]
    return merged


def _remove(spans: Sequence[Span], start: int, end: int) -> list[Span]:
    """Return disjoint sorted spans without [start, end)."""
    kept: list[Span] = []
    for a, b in spans:
        if b <= start or a >= end:
            kept.append((a, b))
            continue
        if a < start:
            kept.append((a, start))
        if b > end:
            kept.append((end, b))
    return kept


class BadRecord(ValueError):
    """The file is not a record this module wrote; the message says what is wrong."""


def _instant(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not EARLIEST_STAMP <= value < 2**32:
        raise BadRecord(f"{what} is not a time ({value!r:.40})")
    return value


def parse(text: str) -> Record:
    """Return the record a file holds; raise BadRecord when it is not one."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise BadRecord(f"not JSON ({exc})") from None
    except RecursionError:
        raise BadRecord("nested too deeply") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BadRecord(f"not a record of format {FORMAT}")
    until = data.get("complete_until")
    record = Record(None if until is None else _instant(until, "complete_until"))
    missing = data.get("missing", {})
    if not isinstance(missing, dict):
        raise BadRecord("missing is not a mapping")
    for name, spans in missing.items():
        if name not in BACKFILLED:
            raise BadRecord(f"unknown object {name!r:.60}")
        if not isinstance(spans, list) or len(spans) > MAX_SPANS:
            raise BadRecord(f"the spans of {name} are not a list of at most {MAX_SPANS}")
        for span in spans:
            if not isinstance(span, list) or len(span) != 2:
                raise BadRecord(f"a span of {name} is not [start, end]")
            start, end = _instant(span[0], "a span's start"), _instant(span[1], "a span's end")
            if start < end:
                record.missing[name] = _add(record.missing.get(name, []), start, end)
    return record


def load(path: Path, now: float, report: bool = True) -> Record:
    """Return the record saved at `path`; an absent, unreadable or corrupt file is an empty record.

    A bad file is logged as a warning if `report` (by the process that keeps the record), else at debug level.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            raise BadRecord(f"larger than {MAX_FILE_BYTES} bytes")
        record = parse(raw.decode("utf-8"))
    except FileNotFoundError:
        return Record()
    except (OSError, UnicodeDecodeError, BadRecord) as exc:
        log.log(logging.WARNING if report else logging.DEBUG, "ignoring the history record %s: %s; the backfill "
                "starts as on a first install (history.first_start)", path, exc)
        return Record()
    return _clamped(record, path, int(now))


def _clamped(record: Record, path: Path, now: int) -> Record:
    """Return the record with nothing after `now`: a clock set back since it was written must not hide a gap."""
    latest = max([record.complete_until or 0, *(end for spans in record.missing.values() for _, end in spans)])
    if latest <= now + CLOCK_SLACK:
        return record
    log.warning("the history record %s reaches %d s into the future (was the clock set back?); taking it as "
                "complete only until now", path, latest - now)
    clamped = Record(None if record.complete_until is None else min(record.complete_until, now))
    for name, spans in record.missing.items():
        kept = [(start, min(end, now)) for start, end in spans if start < now]
        if kept:
            clamped.missing[name] = kept
    return clamped


def save(path: Path, record: Record) -> None:
    """Write the record atomically: a temporary file beside it, flushed to disk, renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(record.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise


#: Seconds between saves that only move `complete_until` with live readings (a record behind by that much is
#: merely asked a few entries too many after a crash; a save per commit would cost an fsync per commit).
LIVE_SAVE_EVERY = 10.0


class Keeper:
    """The influxdb child's record: applied after each commit to the spool, saved before the commit is acked."""

    def __init__(self, path: Path, now: float) -> None:
        self.path = path
        self.record = load(path, now)
        self.points = 0  # backfill points put into the spool by this process
        self._dirty = False
        self._saved_at = float("-inf")
        self._failed = False

    def apply(self, batch: BackfillBatch) -> None:
        self.record.apply(batch)
        self.points += len(batch.lines)
        self._dirty = True
        self._saved_at = float("-inf")  # a change to the spans is saved with this commit

    def live(self, instant: int) -> None:
        before = self.record.complete_until
        self.record.live(instant)
        self._dirty = self._dirty or self.record.complete_until != before

    def save(self, now: float) -> None:
        """Save what changed: at once when spans changed, live progress at most every LIVE_SAVE_EVERY seconds."""
        if not self._dirty or now - self._saved_at < LIVE_SAVE_EVERY:
            return
        try:
            save(self.path, self.record)
        except OSError as exc:
            if not self._failed:  # once, until it works again: the spool's own checks say more about the disk
                log.error("cannot save the history record %s: %s; after a restart the backfill asks again for "
                          "what it has filled since", self.path, exc)
            self._failed = True
            return
        self._failed = False
        self._dirty = False
        self._saved_at = now

    @property
    def pending_seconds(self) -> int:
        return self.record.pending_seconds()
