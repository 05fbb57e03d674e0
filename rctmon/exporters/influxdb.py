"""The `influxdb` child process: receive readings, make them durable, acknowledge; a thread writes them out.

    supervisor --ReadingBatch(seq)--> child's loop --lines--> spool (sqlite, WAL) --Ack(seq)--> supervisor
                                                               spool --drain thread--> InfluxDB

The child's loop (rctmon.child, in the main thread) never talks to InfluxDB, so a hung, absent or refusing InfluxDB
cannot delay an acknowledgement, and the supervisor's backlog (which holds every batch until its Ack) stays small.
An Ack is sent only after the batch (and every earlier one) is committed to the spool, so a batch is always either
in the supervisor's backlog or in the spool: kill -9 of this process loses nothing, and the supervisor replays
unacknowledged batches to the next incarnation. A batch replayed after being spooled (the Ack was lost with the
process) is written twice with the same series and timestamps, which InfluxDB stores as one point.

Readings that arrive before the inverter's name (the `inverter` tag) is known are held in the spool as raw
readings and become points as soon as an Inventory names the inverter.

With `history.backfill`, this child also keeps the history record (rctmon/history/record.py): BackfillBatches (the
collector's backfill from the inverter's logger) arrive in the same numbered stream; their lines are committed to
the spool, then what they fill is marked in the record and the record saved, then the batch is acknowledged.

The inverter's events (InverterEvents, numbered and acknowledged like batches) become `inverter_event` points
exactly as `rctmon history` writes them (rctmon.history.outputs.LineFormat), except those not to be stored (`store`
false: the table's past, which is the backfill's to fill).
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import time
from typing import TYPE_CHECKING, Callable, Union
from collections.abc import Awaitable, Sequence

from rctmon.child import ChildContext, ChildFailed, Job
from rctmon.exporters.influxwriter import Drainer, InfluxSender, StatsBox
from rctmon.exporters.lineprotocol import EXPORTED_IDS, LineEncoder, inverter_tag
from rctmon.exporters.spool import Spool, SpoolLocked, spool_path
from rctmon.history.record import Keeper
from rctmon.inventory import Inventory
from rctmon.messages import Ack, BackfillBatch, InverterEvents, ReadingBatch, Stats
from rctmon.statedir import record_path

if TYPE_CHECKING:
    from rctmon.history.events import Event
    from rctmon.history.outputs import LineFormat

log = logging.getLogger("rctmon.influxdb")

FINAL_FLUSH = 1.0  # seconds a healthy writer gets on Stop to send what the last flush interval collected
STOP_JOIN = 0.5  # seconds to wait for the drain thread after that (a write in flight is abandoned)
MAX_READINGS_PER_COMMIT = 20000  # a long replay is committed (and acknowledged) in slices
Numbered = Union[ReadingBatch, InverterEvents, BackfillBatch]


def _size(batch: Numbered) -> int:
    """Return what a pending batch counts for in a slice: its readings, events or history lines."""
    if isinstance(batch, ReadingBatch):
        return len(batch.readings)
    return len(batch.events) if isinstance(batch, InverterEvents) else len(batch.lines)


class Receiver:
    """The main thread's work: turn batches into spooled points (or held readings) and track what to ack.

    While the spool cannot store (disk full, read-only), what arrived stays pending and unacknowledged, so that the
    supervisor's backlog keeps it (bounded there, and counted when it overflows); every commit offers it again.
    Beyond one slice (MAX_READINGS_PER_COMMIT) newer batches are let go rather than held twice, here and in the
    supervisor: `forgot_after` says from where the supervisor must send them again once the pending ones are stored.
    """

    def __init__(self, spool: Spool, stats: StatsBox, on_spooled: Callable[[], None] | None = None,
                 keeper: Keeper | None = None) -> None:
        """`on_spooled` runs after every commit that added points: the drain thread sleeps until told (it does
        not poll an empty spool). `keeper` is the history record, if the backfill is on."""
        self.spool = spool
        self.stats = stats
        self._on_spooled = on_spooled
        self.keeper = keeper
        self.encoder: LineEncoder | None = None
        self.acked = 0  # highest seq made durable
        self.unstored = False  # the last commit could not store what is pending
        self.forgot_after: int | None = None  # batches after this seq were let go while the spool could not store
        self._events_format: LineFormat | None = None
        self._pending: list[Numbered] = []
        self._pending_readings = 0  # readings, events and history lines

    def add(self, batch: Numbered) -> None:
        """Queue a batch for the next commit; commit early when a slice is full."""
        if self.forgot_after is not None:
            return  # sent again once the pending batches are stored
        if self.unstored and self._pending_readings >= MAX_READINGS_PER_COMMIT:
            self.forgot_after = self._pending[-1].seq
            return
        self._pending.append(batch)
        self._pending_readings += _size(batch)
        if self._pending_readings >= MAX_READINGS_PER_COMMIT:
            self.commit()

    @property
    def pending_readings(self) -> int:
        return self._pending_readings

    def commit(self) -> int:
        """Make every queued batch durable in one transaction; return the seq that may now be acknowledged."""
        if not self._pending:
            return self.acked
        readings = [r for batch in self._pending if isinstance(batch, ReadingBatch) for r in batch.readings]
        # the backfill's lines are ready; with live points they are stored in one transaction
        history = [line for batch in self._pending if isinstance(batch, BackfillBatch) for line in batch.lines]
        events = [e for batch in self._pending if isinstance(batch, InverterEvents) and batch.store
                  for e in batch.events]
        dropped: int | None
        if self.encoder is not None:
            # Encoded again on every attempt: batches pending when the inverter's name changes get the new one.
            invalid_before = self.encoder.invalid
            lines = self.encoder.encode_all(readings) + self._event_lines(events)
            dropped = self.spool.try_append(lines + history)
            if dropped is None:
                self.encoder.invalid = invalid_before  # counted once they are stored
            else:
                self._note_invalid(self.encoder.invalid - invalid_before)
                if lines or history:
                    self._spooled()
        else:
            dropped = self.spool.try_hold([r for r in readings if r[0] in EXPORTED_IDS])
            if dropped is not None and history:
                more = self.spool.try_append(history)  # held readings stored again with them are one point each
                dropped = None if more is None else dropped + more
                if more is not None:
                    self._spooled()
            if dropped is not None and events:  # the collector sends none before the name; never silent
                log.warning("%d inverter events arrived before the inverter's name; dropped", len(events))
                dropped += len(events)
        self.unstored = dropped is None
        if dropped is None:
            return self.acked
        self.stats.dropped(dropped)
        if self.keeper is not None:
            self._mark_record(self.keeper)
        self.acked = max(self.acked, max(batch.seq for batch in self._pending))
        self._pending.clear()
        self._pending_readings = 0
        return self.acked

    def _event_lines(self, events: list[Event]) -> list[bytes]:
        """Return the events' `inverter_event` points, as `rctmon history` writes them."""
        if not events or self.encoder is None:
            return []
        from rctmon.history.outputs import LineFormat  # here: only a child that gets events needs it

        if self._events_format is None or self._events_format.inverter != self.encoder.inverter:
            self._events_format = LineFormat(self.encoder.inverter)
        return [self._events_format.event(event) for event in events]

    def _mark_record(self, keeper: Keeper) -> None:
        """Mark in the history record what the batches just stored fill, in the order they came; save it."""
        for batch in self._pending:
            if isinstance(batch, BackfillBatch):
                keeper.apply(batch)
            elif isinstance(batch, ReadingBatch) and batch.readings:  # events tell nothing of the record's progress
                keeper.live(max(r[2] for r in batch.readings) // 1_000_000_000)
        keeper.save(time.monotonic())

    def inventory(self, inventory: Inventory) -> None:
        """Tag readings with the inverter's name from now on; turn held readings into points."""
        name = inverter_tag(inventory)
        if name is None or (self.encoder is not None and self.encoder.inverter == name):
            return
        self.commit()  # batches received before this message belong to the previous name (or are held)
        if self.encoder is not None:
            log.info("the inverter is now called %r; new points carry inverter=%r", name, name)
        self.encoder = LineEncoder(name)
        encoder = self.encoder
        if self.spool.held_count:
            invalid_before = encoder.invalid
            released = self.spool.release_held(encoder.encode_all)
            self._note_invalid(encoder.invalid - invalid_before)
            self._spooled()
            log.info("%d readings taken before the inverter's name was known are now points (inverter=%r)",
                     released, name)

    def _spooled(self) -> None:
        if self._on_spooled is not None:
            self._on_spooled()

    def _note_invalid(self, count: int) -> None:
        if count:
            # NaN, infinite or absurd values and strings where numbers belong cannot be fields; never silent.
            self.stats.dropped(count)
            log.debug("%d readings with values InfluxDB cannot store were dropped", count)


class InfluxExporter(Job):
    """The influxdb child's job: spool what arrives and acknowledge it; the drain thread writes it out."""

    def __init__(self, context: ChildContext) -> None:
        super().__init__(context)
        settings = context.config.influxdb
        self.path = spool_path(settings)
        # Expected conditions, not bugs: one ERROR line each, no traceback; the supervisor restarts the child with
        # backoff until they are over (preflight refuses both at start; at run time another process may take the
        # spool, or its directory may go away).
        try:
            self.spool = Spool(self.path, settings.spool_max_points, keep_unstored=True)
        except SpoolLocked as exc:
            log.error("%s; exiting, the supervisor starts this child again with backoff", exc)  # says who holds it
            raise ChildFailed(str(exc)) from exc
        except (OSError, sqlite3.Error) as exc:
            log.error("cannot open the InfluxDB spool %s: %s; check the directory's permissions and free space, or "
                      "set influxdb.spool_path", self.path, exc)
            raise ChildFailed(str(exc)) from exc
        self.counters = StatsBox()
        # Without the thread nothing reaches InfluxDB: its end ends the child, and the supervisor starts a fresh one.
        self.drainer = Drainer(self.spool, lambda: InfluxSender(settings), settings, self.counters,
                               on_exit=lambda: context.fail("the InfluxDB drain thread has ended"))
        # the history record lives beside the spool whose points it describes
        self.keeper = Keeper(record_path(self.path), time.time()) if context.config.history.backfill else None
        self.receiver = Receiver(self.spool, self.counters, self.drainer.points_spooled, self.keeper)
        self.ack_sent = 0
        self.awaiting_resend = False  # asked the supervisor to send again what was let go; its Ack marks the start

    async def start(self) -> Sequence[Awaitable[object]]:
        settings = self.context.config.influxdb
        log.info("writing to InfluxDB at %s (bucket %s); spool %s holds %d points", settings.url, settings.bucket,
                 self.path, self.spool.count + self.spool.held_count)
        self.drainer.start()
        return ()

    def receive(self, messages: Sequence[object]) -> None:
        for message in messages:
            if isinstance(message, (ReadingBatch, InverterEvents, BackfillBatch)):
                if not self.awaiting_resend:  # else it was sent before the resend began, and comes again
                    self.receiver.add(message)
            elif isinstance(message, Ack):
                self.awaiting_resend = False  # the supervisor sends again from here
            elif isinstance(message, Inventory):
                self.receiver.inventory(message)
            # DeviceStatus: readings simply stop while the inverter is away; nothing to do here
        self._acknowledge()

    def _acknowledge(self) -> None:
        """Commit what arrived and acknowledge it; an Ack the full channel refused goes with the next one.

        Nothing is acknowledged while the spool cannot store it. Once the pending batches are stored, an Ack with
        `resend` asks the supervisor for those let go meanwhile (Receiver).
        """
        acked = self.receiver.commit()
        if self.receiver.forgot_after is not None:
            if not self.receiver.unstored and self.context.send(Ack(acked, resend=True)):
                self.receiver.forgot_after = None
                self.awaiting_resend = True
                self.ack_sent = acked
        elif acked > self.ack_sent and self.context.send(Ack(acked)):
            self.ack_sent = acked

    def stats(self) -> Stats:
        snapshot = self.counters.snapshot(self.spool.count + self.spool.held_count)
        snapshot.spool_corrupt_files = self.spool.corrupt_files_set_aside
        snapshot.spool_unreadable_points = self.spool.unreadable_rows
        if self.keeper is not None:
            snapshot.history_backfill_points = self.keeper.points
            snapshot.history_backfill_pending_seconds = self.keeper.pending_seconds
        return dataclasses.asdict(snapshot)

    async def stop(self) -> None:
        self._acknowledge()
        if self.drainer.healthy and self.spool.count:
            self.drainer.wait_drained(FINAL_FLUSH)

    def close(self) -> None:
        self.receiver.commit()  # what arrived is durable, whoever is left to acknowledge it to
        if self.keeper is not None:
            self.keeper.save(float("inf"))  # live progress the last throttled save left out
        if self.receiver.unstored:
            log.warning("%d readings could not be stored in the spool (%s); the supervisor keeps them for the next "
                        "start of this child", self.receiver.pending_readings, self.spool.store_failure)
        if self.drainer.stop(STOP_JOIN):
            self.spool.close()  # otherwise the thread may still use it; the process is about to end anyway
        log.info("stopped; %d points stay in the spool", self.spool.count + self.spool.held_count)


__all__ = ["InfluxExporter", "Receiver"]
