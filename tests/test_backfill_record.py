"""The history record (rctmon/history/record.py): span arithmetic, an atomic save, a defensive load."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from rctmon.history import record as records
from rctmon.history.record import BACKFILLED, MAX_SPANS, Keeper, Record, load, save
from rctmon.messages import BackfillBatch
from rctmon.registry import CHILD_BY_NAME

NOW = 1_796_000_000
A, B = BACKFILLED[0], BACKFILLED[-1]  # a 5-minute series and the event table


def test_a_gap_is_missing_until_filled_piece_by_piece() -> None:
    record = Record()
    record.declare((A, B), NOW - 3600, NOW)
    assert record.complete_until == NOW and record.pending_seconds() == 3600
    record.filled(A, NOW - 1200, NOW)
    assert record.missing[A] == [(NOW - 3600, NOW - 1200)] and record.pending_seconds() == 3600  # B lacks it all
    record.filled(B, NOW - 3600, NOW)
    record.filled(A, NOW - 2400, NOW - 1800)  # out of order: a chain of another day finished first
    assert record.spans() == [(A, NOW - 1800, NOW - 1200), (A, NOW - 3600, NOW - 2400)]
    assert record.pending_seconds() == 1800
    record.filled(A, NOW - 3600, NOW)
    assert record.missing == {} and record.pending_seconds() == 0


def test_apply_trims_declares_and_fills_in_that_order() -> None:
    record = Record(NOW - 7200, {A: [(NOW - 9000, NOW - 8000)]})
    record.apply(BackfillBatch(gaps=((A, NOW - 7200, NOW),), since=NOW - 8500))
    assert record.missing[A] == [(NOW - 8500, NOW - 8000), (NOW - 7200, NOW)]
    record.apply(BackfillBatch(lines=(b"x",), done=((A, NOW - 8500, NOW - 8000), (A, NOW - 60, NOW))))
    assert record.missing[A] == [(NOW - 7200, NOW - 60)]
    record.live(NOW + 5)
    assert record.complete_until == NOW + 5


def test_spans_stay_few_however_the_record_is_torn() -> None:
    record = Record()
    for index in range(3 * MAX_SPANS):
        record.declare((A,), NOW + 10 * index, NOW + 10 * index + 5)
    assert len(record.missing[A]) == MAX_SPANS
    first, last = record.missing[A][0], record.missing[A][-1]
    assert first[0] == NOW and last[1] == NOW + 10 * (3 * MAX_SPANS - 1) + 5  # joined, never lost


def test_save_then_load_round_trips_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "state" / "history-record.json"
    record = Record(NOW, {A: [(NOW - 600, NOW - 300)], B: [(NOW - 600, NOW)]})
    save(path, record)
    assert load(path, NOW) == record
    assert os.listdir(path.parent) == [path.name]


def test_an_absent_file_is_a_first_install(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        assert load(tmp_path / "nothing.json", NOW) == Record()
    assert not caplog.records


@pytest.mark.parametrize("content", [
    b"", b"{", b"\xff\xfe garbage", b"[]", b'{"format": 2}', b'{"format": 1, "complete_until": "soon"}',
    b'{"format": 1, "complete_until": true}', b'{"format": 1, "complete_until": -5}',
    b'{"format": 1, "missing": []}', b'{"format": 1, "missing": {"logger.buffer": []}}',
    b'{"format": 1, "missing": {"%s": [[1, 2, 3]]}}' % A.encode(),
    b'{"format": 1, "missing": {"%s": [["a", "b"]]}}' % A.encode(),
    b'{"format": 1, "missing": {"%s": [[1796000000, 1.5e300]]}}' % A.encode(),
    b'{"format": 1, "missing": {"%s": %s}}' % (A.encode(), json.dumps([[NOW, NOW + 1]] * (MAX_SPANS + 1)).encode()),
    b" " * (records.MAX_FILE_BYTES + 1),
    b"[" * 100_000,
])
def test_a_corrupt_file_is_one_log_line_and_no_record(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                      content: bytes) -> None:
    path = tmp_path / "history-record.json"
    path.write_bytes(content)
    with caplog.at_level(logging.INFO):
        assert load(path, NOW) == Record()
    assert len(caplog.records) == 1 and caplog.records[0].levelno == logging.WARNING
    assert caplog.records[0].exc_info is None and "Traceback" not in caplog.text
    assert str(path) in caplog.records[0].getMessage()


def test_a_file_from_the_future_is_clamped_to_now(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "history-record.json"
    save(path, Record(NOW + 86_400, {A: [(NOW - 600, NOW + 600)], B: [(NOW + 100, NOW + 900)]}))
    with caplog.at_level(logging.INFO):
        record = load(path, NOW)
    assert record == Record(NOW, {A: [(NOW - 600, NOW)]})
    assert len(caplog.records) == 1 and "future" in caplog.records[0].getMessage()


def test_a_record_within_the_clock_slack_is_taken_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "history-record.json"
    save(path, Record(NOW + 60))
    assert load(path, NOW) == Record(NOW + 60)


def test_the_keeper_saves_spans_at_once_and_live_progress_now_and_then(tmp_path: Path) -> None:
    path = tmp_path / "history-record.json"
    keeper = Keeper(path, NOW)
    keeper.live(NOW)
    keeper.save(100.0)
    assert load(path, NOW).complete_until == NOW
    keeper.live(NOW + 5)
    keeper.save(101.0)  # within LIVE_SAVE_EVERY: not yet
    assert load(path, NOW + 5).complete_until == NOW
    keeper.apply(BackfillBatch(lines=(b"a", b"b"), gaps=((A, NOW - 600, NOW),)))
    keeper.save(102.0)  # a change of spans is saved with its commit
    assert load(path, NOW + 5) == Record(NOW + 5, {A: [(NOW - 600, NOW)]})
    assert keeper.points == 2 and keeper.pending_seconds == 600


def test_a_record_that_cannot_be_saved_is_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    keeper = Keeper(blocker / "history-record.json", NOW)
    with caplog.at_level(logging.INFO):
        for second in range(3):
            keeper.apply(BackfillBatch(gaps=((A, NOW - 600, NOW),)))
            keeper.save(float(second))
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "cannot save" in errors[0].getMessage()


@pytest.mark.parametrize(("pending", "shown"), [
    (0, "InfluxDB ok"), (45, "InfluxDB ok, backfilling 45s"), (720, "InfluxDB ok, backfilling 12m"),
    (5 * 3600 + 12 * 60, "InfluxDB ok, backfilling 5h12m"), (3 * 86400 + 4 * 3600, "InfluxDB ok, backfilling 3d4h"),
])
def test_the_status_line_shows_the_backfill_while_it_runs(pending: int, shown: str) -> None:
    influxdb = CHILD_BY_NAME["influxdb"]
    assert influxdb.status is not None
    assert influxdb.status({"state": "ok", "history_backfill_pending_seconds": pending}) == shown
