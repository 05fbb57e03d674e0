"""The spool against a hostile disk (issue 11): damaged files, a full disk, a read-only spool, a locked one.

Real files in tmp_path, damaged the way disks and people damage them. A damaged file is moved aside (never deleted),
logged once at ERROR with what it held, counted, and a new spool takes over; a spool that cannot be written drops
and counts what it cannot store; nothing here may raise out of the Spool but SpoolLocked.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import shutil
import signal
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest

from rctmon.exporters.spool import FILE_NAME, Spool, SpoolLocked
from test_influxdb_exporter import INVERTER, Child, Readings, expected_sample, make_child, stored  # noqa: F401
from vmserver import VictoriaMetrics, victoria  # noqa: F401 - victoria is a fixture
from support import wait_for

pytestmark = pytest.mark.timeout(60)
SPOOL_LOG = "rctmon.influxdb.spool"


def lines(start: int, count: int) -> list[bytes]:
    return [f"grid,inverter=x power={i}.0 {1_700_000_000_000_000_000 + i}".encode()
            for i in range(start, start + count)]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / FILE_NAME


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger=SPOOL_LOG)
    return caplog


def spooled(path: Path, count: int = 1000) -> None:
    """Leave a spool holding `count` points at `path` (closed cleanly: everything in the main file)."""
    spool = Spool(path, 1_000_000)
    spool.append(lines(0, count))
    spool.close()


def _append_and_die(path: str, count: int) -> None:
    spool = Spool(path, 1_000_000)
    spool.append(lines(0, count))
    os.kill(os.getpid(), signal.SIGKILL)  # the points stay in the WAL, no checkpoint


def spooled_in_wal(path: Path, count: int = 1000) -> None:
    """Leave a spool whose points are only in its write-ahead log (the process was killed)."""
    child = multiprocessing.get_context("fork").Process(target=_append_and_die, args=(str(path), count))
    child.start()
    child.join(20)
    assert child.exitcode == -signal.SIGKILL
    assert Path(str(path) + "-wal").stat().st_size > 4096


def set_aside(path: Path) -> list[Path]:
    """Return the damaged spool files moved aside (without their -wal and -shm)."""
    return sorted(p for p in path.parent.glob(path.name + ".corrupt-*") if not p.name.endswith(("-wal", "-shm")))


def errors(logs: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in logs.records if r.name == SPOOL_LOG and r.levelno >= logging.ERROR]


def assert_fresh_and_working(spool: Spool) -> None:
    assert spool.count == 0 and spool.held_count == 0
    assert spool.append(lines(5000, 10)) >= 0
    assert list(spool.iter_lines()) == lines(5000, 10)


# --- damaged files at open -----------------------------------------------------------------------------------------

def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(64 * 1024))


def _not_sqlite(path: Path) -> None:
    path.write_text("influxdb.spool_path pointed at a text file\n" * 100)


def _truncated(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def _damaged_page(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(4096 * 3)
        f.write(os.urandom(4096))


DAMAGE: dict[str, Callable[[Path], None]] = {
    "garbage bytes": _garbage,
    "not sqlite at all": _not_sqlite,
    "truncated to half": _truncated,
    "a damaged page": _damaged_page,
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_file_is_set_aside_logged_once_counted_and_a_new_spool_started(
        kind: str, path: Path, logs: pytest.LogCaptureFixture) -> None:
    spooled(path)
    DAMAGE[kind](path)
    damaged = path.read_bytes()
    spool = Spool(path, 1_000_000)
    try:
        assert spool.corrupt_files_set_aside == 1
        (aside,) = set_aside(path)
        assert aside.read_bytes() == damaged  # moved, not rewritten: whatever can be recovered is still there
        assert re.fullmatch(rf"{FILE_NAME}\.corrupt-\d{{8}}T\d{{6}}Z", aside.name)
        (message,) = errors(logs)
        assert str(aside) in message and "damaged" in message
        assert re.search(r"\d[\d,]* (points|bytes)", message), message  # what was lost
        assert_fresh_and_working(spool)
    finally:
        spool.close()
    again = Spool(path, 1_000_000)  # the new spool is a good one: nothing more is set aside
    try:
        assert again.corrupt_files_set_aside == 0 and again.count == 10
    finally:
        again.close()
    assert len(set_aside(path)) == 1 and len(errors(logs)) == 1


def test_a_spool_emptied_to_0_bytes_is_not_recreated_silently(path: Path, logs: pytest.LogCaptureFixture) -> None:
    """Issue 11: sqlite opens a 0-byte file as a new database; the points it held vanished without a word."""
    spooled(path, 500)
    os.truncate(path, 0)
    spool = Spool(path, 1_000_000)
    try:
        assert spool.corrupt_files_set_aside == 1
        (aside,) = set_aside(path)
        assert aside.stat().st_size == 0
        (message,) = errors(logs)
        assert "0 bytes" in message and str(aside) in message
        assert_fresh_and_working(spool)
    finally:
        spool.close()


def test_an_empty_file_where_no_spool_was_before_is_simply_used(path: Path, logs: pytest.LogCaptureFixture) -> None:
    path.parent.mkdir(parents=True)
    path.touch()  # e.g. created by an installer
    spool = Spool(path, 1_000_000)
    try:
        assert spool.corrupt_files_set_aside == 0 and not set_aside(path) and not errors(logs)
        assert_fresh_and_working(spool)
    finally:
        spool.close()


def test_a_deleted_spool_is_noted_but_not_counted_as_damage(path: Path, logs: pytest.LogCaptureFixture) -> None:
    spooled(path, 10)
    path.unlink()  # what docs/operations.md tells to do to throw a backlog away
    spool = Spool(path, 1_000_000)
    try:
        assert spool.corrupt_files_set_aside == 0 and not errors(logs)
        assert any("gone" in r.getMessage() for r in logs.records if r.levelno == logging.WARNING)
        assert_fresh_and_working(spool)
    finally:
        spool.close()


@pytest.mark.parametrize("damage", ["garbage", "header"])
def test_a_write_ahead_log_that_does_not_fit_is_set_aside_with_its_database(
        damage: str, path: Path, logs: pytest.LogCaptureFixture) -> None:
    """sqlite silently ignores a WAL with a bad header, and every point committed in it since the last checkpoint."""
    path.parent.mkdir(parents=True)
    spooled_in_wal(path, 2000)
    wal = Path(str(path) + "-wal")
    with open(wal, "r+b") as f:
        f.write(os.urandom(wal.stat().st_size if damage == "garbage" else 32))
    Path(str(path) + "-shm").unlink(missing_ok=True)
    spool = Spool(path, 1_000_000)
    try:
        assert spool.corrupt_files_set_aside == 1
        (aside,) = set_aside(path)
        assert Path(str(aside) + "-wal").exists()  # the log went with its database
        assert "write-ahead log" in errors(logs)[0]
        assert_fresh_and_working(spool)
    finally:
        spool.close()


def test_a_write_ahead_log_from_a_crash_is_kept_and_its_points_survive(path: Path,
                                                                      logs: pytest.LogCaptureFixture) -> None:
    path.parent.mkdir(parents=True)
    spooled_in_wal(path, 2000)
    spool = Spool(path, 1_000_000)
    try:
        assert spool.corrupt_files_set_aside == 0 and not errors(logs)
        assert list(spool.iter_lines()) == lines(0, 2000)
    finally:
        spool.close()


def test_a_sqlite_file_that_is_no_spool_is_set_aside_with_what_it_held(path: Path,
                                                                       logs: pytest.LogCaptureFixture) -> None:
    spooled(path, 300)
    conn = sqlite3.connect(str(path))
    conn.execute("CREATE TABLE photos (name TEXT)")  # influxdb.spool_path pointed at somebody's database
    conn.commit()
    conn.close()
    spool = Spool(path, 1_000_000)
    try:
        assert spool.corrupt_files_set_aside == 1
        (message,) = errors(logs)
        assert "no rctmon spool" in message and "300 points" in message
        assert spool.append(lines(0, 1)) == 300  # the lost points reach the caller's drop counter
        assert spool.dropped == 300
    finally:
        spool.close()


def test_the_integrity_check_at_open_stops_at_its_time_budget(path: Path, logs: pytest.LogCaptureFixture) -> None:
    spooled(path, 20_000)
    spool = Spool(path, 1_000_000, check_seconds=0.0)
    try:
        assert any("integrity check" in r.getMessage() and "stopped" in r.getMessage() for r in logs.records)
        assert spool.count == 20_000 and spool.corrupt_files_set_aside == 0
    finally:
        spool.close()


# --- damage found while running ------------------------------------------------------------------------------------

def _damage_row(path: Path, line: bytes) -> None:
    """Make one row's record say its line is an integer, in the database file itself."""
    data = bytearray(path.read_bytes())
    at = data.find(line)
    assert at > 0 and data[at - 1] == 2 * len(line) + 12  # the record's serial type: a blob of this length
    data[at - 1] = 6
    with open(path, "r+b") as f:
        f.seek(at - 1)
        f.write(bytes(data[at - 1:at]))


def _make_it_read_again(path: Path) -> None:
    """Commit a change from another connection, so the spool's connection drops the pages it has cached."""
    conn = sqlite3.connect(str(path))
    conn.execute("PRAGMA user_version = 7")
    conn.commit()
    conn.close()


def test_a_damaged_row_while_draining_is_skipped_and_counted_not_fatal(path: Path,
                                                                       logs: pytest.LogCaptureFixture) -> None:
    spooled(path, 1000)
    spool = Spool(path, 1_000_000)  # the file was good when it was opened
    try:
        _damage_row(path, lines(500, 1)[0])
        _make_it_read_again(path)
        rows = spool.peek(5000)
        assert [line for _, line in rows] == lines(0, 500) + lines(501, 499)
        assert spool.unreadable_rows == 1 and spool.count == 999
        assert spool.append([]) == 1  # the skipped row reaches the caller's drop counter, once
        assert spool.append([]) == 0
        spool.remove(rows[0][0], rows[-1][0])
        assert spool.count == 0 and spool.peek(10) == []
        assert spool.corrupt_files_set_aside == 0
        assert len(errors(logs)) == 1
    finally:
        spool.close()


def test_a_file_damaged_while_running_is_replaced_without_stopping(path: Path,
                                                                   logs: pytest.LogCaptureFixture) -> None:
    spooled(path, 1000)
    spool = Spool(path, 1_000_000)
    try:
        in_flight = spool.peek(100)
        conn = sqlite3.connect(str(path))
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'points'").fetchone()[0]
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        conn.close()
        with open(path, "r+b") as f:  # the b-tree root of the points: every insert reads it
            f.seek((root - 1) * page_size)
            f.write(b"\xff" * 64)
        _make_it_read_again(path)
        assert spool.append(lines(2000, 5)) == 1000  # stored on a new spool; the 1000 old points are lost
        assert spool.corrupt_files_set_aside == 1 and len(set_aside(path)) == 1
        assert list(spool.iter_lines()) == lines(2000, 5)
        assert spool.remove(in_flight[0][0], in_flight[-1][0]) == 0  # a batch from the old file removes nothing new
        assert spool.count == 5
        (message,) = errors(logs)
        assert "1,000 points" in message
    finally:
        spool.close()


# --- a full disk, a read-only spool --------------------------------------------------------------------------------

def _conn(spool: Spool) -> sqlite3.Connection:
    conn = spool._db  # white box: the per-connection pragmas below are how sqlite's own tests make a disk full
    assert conn is not None
    return conn


def test_a_full_disk_drops_and_counts_what_cannot_be_stored_logs_once_and_recovers(
        path: Path, logs: pytest.LogCaptureFixture) -> None:
    spool = Spool(path, 1_000_000)
    try:
        spool.append(lines(0, 100))
        pages = _conn(spool).execute("PRAGMA page_count").fetchone()[0]
        _conn(spool).execute(f"PRAGMA max_page_count = {pages}")  # SQLITE_FULL as soon as the file must grow
        dropped = sum(spool.append(lines(100 + 500 * n, 500)) for n in range(6))
        assert dropped > 0 and spool.dropped == dropped
        assert spool.store_failure == "the disk is full"
        assert spool.count == 100 + 3000 - dropped
        assert len(errors(logs)) == 1  # once per episode, not once per batch
        rows = spool.peek(10_000)  # what is stored still drains
        assert spool.remove(rows[0][0], rows[-1][0]) == len(rows)
        _conn(spool).execute("PRAGMA max_page_count = 1073741823")
        assert spool.append(lines(9000, 10)) == 0
        assert spool.store_failure is None
        assert any("stores points again" in r.getMessage() and f"{dropped} were dropped" in r.getMessage()
                   for r in logs.records)
    finally:
        spool.close()


def test_a_read_only_spool_drops_new_points_and_never_sends_a_drained_batch_twice(
        path: Path, logs: pytest.LogCaptureFixture) -> None:
    spool = Spool(path, 1_000_000)
    try:
        spool.append(lines(0, 100))
        _conn(spool).execute("PRAGMA query_only = 1")  # SQLITE_READONLY, as on a file system remounted read-only
        assert spool.append(lines(100, 10)) == 10 and spool.hold([(1, 1.0, 1)]) == 1
        rows = spool.peek(50)
        assert spool.remove(rows[0][0], rows[-1][0]) == 50  # sent: it cannot be deleted, but is not read again
        assert [line for _, line in spool.peek(1000)] == lines(50, 50)
        assert spool.count == 50
        assert len(errors(logs)) == 1 and "readonly" in errors(logs)[0]
        _conn(spool).execute("PRAGMA query_only = 0")
        assert spool.append(lines(200, 1)) == 0
        assert list(spool.iter_lines()) == lines(50, 50) + lines(200, 1)
        assert _conn(spool).execute("SELECT min(id) FROM points").fetchone()[0] == 51  # deleted once it could be
    finally:
        spool.close()


def _open_read_only(directory: str, result: multiprocessing.queues.Queue) -> None:  # type: ignore[type-arg]
    if os.geteuid() == 0:  # root may write anything: be somebody else, as the service user would be
        os.setgid(65534)
        os.setuid(65534)
    logging.getLogger(SPOOL_LOG).setLevel(logging.INFO)
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger(SPOOL_LOG).addHandler(handler)
    spool = Spool(os.path.join(directory, FILE_NAME), 1_000_000, lock_timeout=1.0)
    result.put((spool.append(lines(0, 7)), spool.append(lines(7, 3)), spool.store_failure, messages))
    spool.close()


@pytest.fixture
def read_only_dir() -> Iterator[str]:
    """A spool directory this process may read but not write (outside pytest's private tmp, for another user)."""
    directory = tempfile.mkdtemp(prefix="rctmon-ro-spool-")
    try:
        os.chmod(directory, 0o755)
        yield directory
    finally:
        os.chmod(directory, 0o755)
        shutil.rmtree(directory, ignore_errors=True)


def test_a_spool_on_a_read_only_file_system_does_not_stop_the_exporter(read_only_dir: str) -> None:
    """The file can be read but nothing can be written: opening must not raise, every point is counted."""
    spooled(Path(read_only_dir) / FILE_NAME, 10)
    for name in os.listdir(read_only_dir):
        os.chmod(os.path.join(read_only_dir, name), 0o444)
    os.chmod(read_only_dir, 0o555)
    context = multiprocessing.get_context("fork")
    result = context.Queue()
    child = context.Process(target=_open_read_only, args=(read_only_dir, result))
    child.start()
    try:
        first, second, failure, messages = result.get(timeout=20)
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
    assert (first, second) == (7, 3)
    assert failure and "cannot be opened" in failure
    assert sum("cannot store points" in m for m in messages) == 1


# --- locked -------------------------------------------------------------------------------------------------------

def test_a_spool_held_by_another_process_says_who_holds_it_and_nothing_about_permissions(path: Path) -> None:
    spool = Spool(path, 1_000)
    try:
        context = multiprocessing.get_context("fork")
        result = context.Queue()

        def try_open() -> None:
            try:
                Spool(path, 1_000, lock_timeout=0.3)
                result.put("opened")
            except SpoolLocked as exc:
                result.put(str(exc))

        child = context.Process(target=try_open)
        child.start()
        child.join(20)
        message = result.get(timeout=5)
        assert f"pid {os.getpid()}" in message and "in use by another process" in message
        assert "permission" not in message
    finally:
        spool.close()


def _influxdb_child_on(spool_file: str, log_path: str) -> None:
    """Run the influxdb child as the supervisor does (its crash path included), logging to a file."""
    import functools

    from rctmon import supervisor
    from rctmon.channel import Channel
    from rctmon.config import Config, InfluxDBConfig
    from rctmon.exporters import influxdb, spool
    from rctmon.registry import CHILD_BY_NAME

    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    logging.getLogger().handlers[:] = [handler]
    influxdb.Spool = functools.partial(spool.Spool, lock_timeout=0.3)  # type: ignore[misc]
    ours, theirs = Channel.pair()
    config = Config(influxdb=InfluxDBConfig(enable=True, url="http://127.0.0.1:9", spool_path=spool_file))
    supervisor._child_main(CHILD_BY_NAME["influxdb"], config, theirs, None, [])


def test_a_locked_spool_ends_the_influxdb_child_with_one_error_line_and_no_traceback(
        path: Path, tmp_path: Path) -> None:
    """A spool another process took is an expected condition: the child used to log "influxdb crashed" and a
    traceback; now one ERROR line says who holds it, and the child exits for a restart with backoff."""
    spool = Spool(path, 1_000)
    log_path = tmp_path / "child.log"
    try:
        child = multiprocessing.get_context("fork").Process(target=_influxdb_child_on, args=(str(path), str(log_path)))
        child.start()
        child.join(20)
        assert child.exitcode == 1
    finally:
        spool.close()
    log = log_path.read_text()
    errors = [line for line in log.splitlines() if line.startswith(("ERROR", "CRITICAL"))]
    assert len(errors) == 1 and "in use by another process" in errors[0] and "backoff" in errors[0]
    assert "Traceback" not in log and "crashed" not in log


# --- the exporter child ---------------------------------------------------------------------------------------------

@pytest.mark.timeout(90)
def test_the_influxdb_child_starts_on_a_corrupt_spool_and_writes(
        make_child: Callable[..., Child], victoria: VictoriaMetrics, tmp_path: Path) -> None:  # noqa: F811
    """Issue 11: a corrupt spool file made the influxdb child crash-loop forever, with a hint about permissions."""
    spool_file = tmp_path / "spool.sqlite"
    _garbage(spool_file)
    child = make_child(victoria.url).start()  # Started: it did not crash on the file
    from rctmon.inventory import Inventory

    assert child.channel is not None
    child.channel.send(Inventory(name=INVERTER, complete=True))
    readings = Readings()
    batch = readings.batch()
    child.wait_acked(child.send(batch))
    wait_for(lambda: {expected_sample(r) for r in batch} <= stored(victoria), 30, interval=0.5,
             message="the points written to victoria-metrics")
    assert child.stop() < 5.0
    assert len(set_aside(spool_file)) == 1
    log = child.log()
    assert log.count("is damaged") == 1 and "permission" not in log and "crashed" not in log
