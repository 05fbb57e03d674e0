"""The collector's backfill (rctmon/collector/backfill.py) alone: the hole it declares, a logger that never answers.

A logger that never answers cannot be made with the simulator (its --drop-rate drops live requests too), so these
use a querier that answers nothing; everything else (the record, the reader, the line format) is the real code.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from rctmon.collector import backfill as backfill_module
from rctmon.collector.backfill import FLUSH_EVERY, RETRY_WAIT, RETRY_WAIT_MAX, Backfill
from rctmon.config import Config
from rctmon.history.record import BACKFILLED, Record, save
from rctmon.inventory import Inventory
from rctmon.messages import BackfillBatch, CollectorStats

NOW = 1_796_000_000


class Sink:
    def __init__(self, accept: bool = True) -> None:
        self.batches: list[BackfillBatch] = []
        self.accept = accept

    def backfill(self, batch: BackfillBatch) -> bool:
        if self.accept:
            self.batches.append(batch)
        return self.accept


class Silent:
    """A logger that never answers (the poller gave up on every query)."""

    def __init__(self) -> None:
        self.queries = 0

    async def query(self, object_id: int, timestamp: int) -> bytes | None:
        self.queries += 1
        return None


def make(tmp_path: Path, sink: Sink, first_start: float = 86400.0, max_gap: float = 7 * 86400.0,
         clock: list[float] | None = None) -> Backfill:
    """Return a backfill whose clock is `clock[0]` (NOW unless given)."""
    config = Config()
    config.device.timezone = "UTC"
    config.history.first_start = first_start
    config.history.max_gap = max_gap
    now = clock if clock is not None else [float(NOW)]
    return Backfill(config, sink, CollectorStats(), tmp_path / "history-record.json", now=lambda: now[0])


def test_a_first_install_declares_first_start_back(tmp_path: Path) -> None:
    sink = Sink()
    backfill = make(tmp_path, sink, first_start=6 * 3600)
    backfill.connected(0)
    (batch,) = sink.batches
    assert batch.gaps == tuple((name, NOW - 6 * 3600, NOW) for name in BACKFILLED)
    assert batch.since == NOW - 7 * 86400 and not batch.lines and not batch.done


def test_the_hole_begins_at_the_newest_live_reading_and_reaches_back_max_gap_at_most(tmp_path: Path) -> None:
    save(tmp_path / "history-record.json", Record(NOW - 30 * 86400))  # away for a month
    sink = Sink()
    clock = [float(NOW)]
    backfill = make(tmp_path, sink, max_gap=2 * 86400, clock=clock)
    backfill.connected(0)
    assert {(start, end) for _, start, end in sink.batches[0].gaps} == {(NOW - 2 * 86400, NOW)}
    # live readings until NOW + 500, then the connection is lost; a reconnect at NOW + 600
    clock[0] = NOW + 600
    backfill.connected((NOW + 500) * 1_000_000_000 + 123)
    assert {(start, end) for _, start, end in sink.batches[1].gaps} == {(NOW + 500, NOW + 600)}
    assert {name for name, _, _ in sink.batches[1].gaps} == set(BACKFILLED)


def test_first_start_0_declares_nothing(tmp_path: Path) -> None:
    sink = Sink()
    backfill = make(tmp_path, sink, first_start=0)
    backfill.connected(0)
    assert sink.batches[0].gaps == () and backfill.record is not None and not backfill.record.missing


def test_a_logger_that_never_answers_is_asked_less_and_less_and_logged_once_a_pass(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    sink = Sink()
    clock = [float(NOW)]
    backfill = make(tmp_path, sink, first_start=3600, clock=clock)
    backfill.connected(0)
    clock[0] += 1000  # the newest logger step of the hole is long written: only the silence makes it wait
    waits: list[float] = []

    class Enough(Exception):
        pass

    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        if seconds == FLUSH_EVERY:  # the flusher's tick, not a wait between passes
            await real_sleep(0.01)
            return
        waits.append(seconds)
        if len(waits) == 4:
            raise Enough

    monkeypatch.setattr(backfill_module.asyncio, "sleep", sleep)
    querier = Silent()
    with caplog.at_level(logging.INFO):
        with pytest.raises(Enough):
            asyncio.run(backfill.run(querier, Inventory(name="PS 6.0")))
    assert waits == [RETRY_WAIT, 2 * RETRY_WAIT, 4 * RETRY_WAIT, 8 * RETRY_WAIT]
    assert min(RETRY_WAIT * 2 ** 8, RETRY_WAIT_MAX) == RETRY_WAIT_MAX
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 4 and all("could not read 23 spans" in r.getMessage() for r in warnings)
    assert querier.queries == 4 * 23 * 4  # passes x chains x MAX_UNANSWERED
    assert backfill.record is not None and backfill.record.pending_seconds() == 3600  # nothing marked filled


def test_a_batch_the_channel_refuses_is_not_marked_filled(tmp_path: Path) -> None:
    sink = Sink(accept=False)
    backfill = make(tmp_path, sink, first_start=3600)
    backfill.connected(0)
    backfill._done.append((BACKFILLED[0], NOW - 3600, NOW))  # what a chain reported read
    backfill.flush()
    assert backfill.record is not None and backfill.record.missing[BACKFILLED[0]] == [(NOW - 3600, NOW)]
    sink.accept = True
    backfill._done.append((BACKFILLED[0], NOW - 3600, NOW))
    backfill.flush()
    assert BACKFILLED[0] not in backfill.record.missing
