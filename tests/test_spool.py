"""The influxdb exporter's spool: durable, bounded oldest-first, drained in order."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import threading
from pathlib import Path

import pytest

from rctmon.config import InfluxDBConfig
from rctmon.exporters.spool import FILE_NAME, Spool, SpoolLocked, default_path, spool_path
from support import wait_for

pytestmark = pytest.mark.timeout(60)


def lines(start: int, count: int) -> list:
    return [f"grid,inverter=x power={i}.0 {1_700_000_000_000_000_000 + i}".encode()
            for i in range(start, start + count)]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / FILE_NAME


def test_points_survive_closing_and_reopening(path: Path) -> None:
    spool = Spool(path, 10_000)
    spool.append(lines(0, 100))
    spool.close()
    again = Spool(path, 10_000)
    try:
        assert again.count == 100
        assert list(again.iter_lines()) == lines(0, 100)
    finally:
        again.close()


def _append_then_die(path: str, ready: multiprocessing.synchronize.Event) -> None:
    spool = Spool(path, 10_000)
    spool.append(lines(0, 500))
    ready.set()
    signal.pause()  # killed with SIGKILL while the spool is open


def test_committed_points_survive_kill_9_of_the_process(path: Path) -> None:
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    child = context.Process(target=_append_then_die, args=(str(path), ready))
    child.start()
    try:
        assert ready.wait(20)
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
    finally:
        if child.is_alive():
            child.kill()
            child.join(5)
    spool = Spool(path, 10_000)  # the lock died with the process
    try:
        assert list(spool.iter_lines()) == lines(0, 500)
    finally:
        spool.close()


def test_full_spool_drops_the_oldest_and_counts_them(path: Path) -> None:
    spool = Spool(path, 1000)
    try:
        assert spool.append(lines(0, 800)) == 0
        assert spool.append(lines(800, 300)) == 100
        assert spool.count == 1000 and spool.dropped == 100
        assert list(spool.iter_lines()) == lines(100, 1000)
        assert spool.append(lines(1100, 2500)) == 2500  # one append larger than the bound keeps its newest
        assert list(spool.iter_lines()) == lines(2600, 1000)
        assert spool.dropped == 2600
    finally:
        spool.close()


def test_drain_takes_oldest_first_and_removes_only_what_was_sent(path: Path) -> None:
    spool = Spool(path, 10_000)
    try:
        spool.append(lines(0, 250))
        first = spool.peek(100)
        assert [line for _, line in first] == lines(0, 100)
        spool.append(lines(250, 10))  # arrives while the first batch is in flight
        assert spool.remove(first[0][0], first[-1][0]) == 100
        rest = spool.peek(1000)
        assert [line for _, line in rest] == lines(100, 160)
        assert spool.count == 160
    finally:
        spool.close()


def test_ids_are_never_reused_after_the_spool_ran_empty(path: Path) -> None:
    """A batch in flight is removed by id range; a reused id would remove a newer, unsent point."""
    spool = Spool(path, 10_000)
    try:
        spool.append(lines(0, 5))
        batch = spool.peek(5)
        spool.remove(batch[0][0], batch[-1][0])
        spool.append(lines(5, 1))
        assert spool.peek(1)[0][0] > batch[-1][0]
    finally:
        spool.close()


def test_held_readings_become_points_in_order(path: Path) -> None:
    spool = Spool(path, 10_000)
    try:
        spool.hold([(1, 1.5, 10), (2, True, 11), (3, "text", 12), (4, float("nan"), 13), (5, 1 << 70, 14)])
        assert spool.held_count == 5
        spool.close()
        spool = Spool(path, 10_000)
        assert spool.held_count == 5
        seen = []

        def encode(readings: list) -> list:
            seen.extend(readings)
            return [f"{oid} {value}".encode() for oid, value, _ in readings]

        assert spool.release_held(encode) == 5
        # sqlite keeps numbers and text; NaN and out-of-range integers come back as NULL (invalid, counted later)
        assert seen == [(1, 1.5, 10), (2, 1, 11), (3, "text", 12), (4, None, 13), (5, None, 14)]
        assert spool.held_count == 0 and spool.count == 5
    finally:
        spool.close()


def test_a_second_process_cannot_open_a_spool_in_use(path: Path) -> None:
    spool = Spool(path, 10_000)
    try:
        context = multiprocessing.get_context("fork")
        result = context.Queue()

        def try_open() -> None:
            try:
                Spool(path, 10_000, lock_timeout=0.3)
                result.put("opened")
            except SpoolLocked:
                result.put("locked")

        child = context.Process(target=try_open)
        child.start()
        child.join(20)
        assert result.get(timeout=5) == "locked"
    finally:
        spool.close()


def test_appending_and_draining_from_two_threads_keeps_exact_counts(path: Path) -> None:
    spool = Spool(path, 1_000_000)
    sent: list = []
    done = threading.Event()

    def drain() -> None:
        while not (done.is_set() and spool.count == 0):
            rows = spool.peek(333)
            if rows:
                sent.extend(line for _, line in rows)
                spool.remove(rows[0][0], rows[-1][0])

    thread = threading.Thread(target=drain)
    thread.start()
    try:
        for start in range(0, 20_000, 100):
            spool.append(lines(start, 100))
        done.set()
        thread.join(30)
        assert sent == lines(0, 20_000)
        assert spool.count == 0
        assert sqlite3.connect(str(path)).execute("SELECT count(*) FROM points").fetchone()[0] == 0
    finally:
        done.set()
        thread.join(5)
        spool.close()


def test_drained_spool_gives_its_pages_back(path: Path) -> None:
    spool = Spool(path, 1_000_000)
    try:
        spool.append([b"x" * 200] * 50_000)
        big = path.stat().st_size
        rows = spool.peek(100_000)
        spool.remove(rows[0][0], rows[-1][0])
        wait_for(lambda: path.stat().st_size < big / 4, 10, message="the spool file to shrink")
    finally:
        spool.close()


def test_spool_location_follows_config_then_state_directory_then_home(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    assert spool_path(InfluxDBConfig(spool_path=str(tmp_path / "x.sqlite"))) == tmp_path / "x.sqlite"
    assert default_path({"STATE_DIRECTORY": "/var/lib/rctmon:/other"}) == Path("/var/lib/rctmon") / FILE_NAME
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_path({}) == tmp_path / ".local" / "state" / "rctmon" / FILE_NAME
    spool = Spool(default_path({}), 1000)  # creates the directories
    spool.close()
    assert (tmp_path / ".local" / "state" / "rctmon" / FILE_NAME).exists()
