"""The durable spool of the influxdb exporter: line-protocol points waiting for InfluxDB, in a sqlite file.

Why sqlite in WAL mode: a committed transaction survives the death of the process (kill -9, OOM, a crash) because
it is in the WAL file in the kernel's page cache the moment COMMIT returns; readers never block the writer, so the
drain thread can read the oldest points while the main thread appends new ones. `synchronous=NORMAL` syncs the WAL
to the disk only at checkpoints, not at every commit: after a power loss or kernel crash the transactions since
the last checkpoint may be gone (the database itself stays consistent). `synchronous=FULL` would close that window
at the price of an fsync per batch, which wears out the SD cards rctmon typically runs on. The exporter
acknowledges a batch only after its COMMIT, so the supervisor forgets nothing that is not at least this durable.

Two tables:
- `points`: one row per point, the line ready to send, ids strictly increasing (AUTOINCREMENT: an id is never
  reused, so "everything up to id N" always means the same rows). Draining is `SELECT ... ORDER BY id LIMIT n`,
  join, POST, `DELETE ... BETWEEN first AND last`.
- `held`: raw readings that arrived before the inverter's name (the `inverter` tag) was known; they become points
  when it is.

Both are bounded by `max_points`: when an append would exceed it, the oldest rows go, counted in `dropped`.

Every write transaction and the in-memory counts are guarded by one lock, so both threads see exact counts; reads
use a connection of their own per thread and take no lock.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable
from collections.abc import Mapping
from collections.abc import Iterator, Sequence

from rctmon.config import InfluxDBConfig
from rctmon.messages import Reading

log = logging.getLogger("rctmon.influxdb.spool")

FILE_NAME = "influxdb-spool.sqlite"
SCHEMA_VERSION = 1
LOCK_TIMEOUT = 10.0  # seconds to wait for another process (a dying predecessor) to let go of the spool
_VACUUM_FREE_PAGES = 2048  # give free pages back to the file system once the spool is empty and this many are free
_VACUUM_CHUNK = 1024  # pages per incremental_vacuum step, so the write lock is never held long

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS points (id INTEGER PRIMARY KEY AUTOINCREMENT, line BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS held (id INTEGER PRIMARY KEY AUTOINCREMENT, object_id INTEGER NOT NULL,"
    " value, timestamp_ns INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value)",
)


class SpoolLocked(RuntimeError):
    """Another process holds the spool (two writers would send every point twice)."""


def default_path(environ: Mapping[str, str] | None = None) -> Path:
    """Return where the spool lives when `influxdb.spool_path` is empty.

    $STATE_DIRECTORY is what systemd's StateDirectory= sets (the first entry if it lists several); otherwise the
    XDG state directory of the user.
    """
    env = os.environ if environ is None else environ
    state = env.get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return Path(state) / FILE_NAME
    return Path.home() / ".local" / "state" / "rctmon" / FILE_NAME


def spool_path(config: InfluxDBConfig, environ: Mapping[str, str] | None = None) -> Path:
    """Return the spool file configured, or the default one."""
    return Path(config.spool_path).expanduser() if config.spool_path else default_path(environ)


class Spool:
    """Points waiting for InfluxDB, durable across restarts; safe to use from two threads."""

    def __init__(self, path: str | os.PathLike[str], max_points: int,
                 lock_timeout: float = LOCK_TIMEOUT) -> None:
        self.path = Path(path)
        self.max_points = max_points
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        self._lock_file = self._take_file_lock(lock_timeout)
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self.dropped = 0  # points and held readings dropped because the spool was full (since open)
        conn = self._conn()
        with self._write_lock:
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,))
            self._count = conn.execute("SELECT count(*) FROM points").fetchone()[0]
            self._held = conn.execute("SELECT count(*) FROM held").fetchone()[0]

    # --- connections ----------------------------------------------------------------------------------------------

    def _take_file_lock(self, timeout: float) -> int:
        fd = os.open(str(self.path) + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise SpoolLocked(f"{self.path} is in use by another process") from None
                time.sleep(0.1)

    def _conn(self) -> sqlite3.Connection:
        """Return this thread's connection (sqlite connections must not be shared between threads)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: no implicit transactions; every write below says BEGIN IMMEDIATE itself, and a
            # read never leaves a transaction open that would stop checkpoints.
            conn = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None, check_same_thread=False)
            # auto_vacuum only takes effect on a new file, before the WAL switch and the first table; then the
            # file can shrink again after a long backlog has drained (a no-op on an existing file).
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA journal_size_limit=67108864")  # truncate the WAL to 64 MiB after checkpoints
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    def _transaction(self) -> _Transaction:
        return _Transaction(self._conn(), self._write_lock, self._recount)

    def _recount(self, conn: sqlite3.Connection) -> None:
        """Re-read the counts after a rolled-back transaction changed them in memory only."""
        self._count = conn.execute("SELECT count(*) FROM points").fetchone()[0]
        self._held = conn.execute("SELECT count(*) FROM held").fetchone()[0]

    # --- counts ---------------------------------------------------------------------------------------------------

    @property
    def count(self) -> int:
        """Points waiting to be sent."""
        return int(self._count)

    @property
    def held_count(self) -> int:
        """Readings waiting for the inverter's name."""
        return int(self._held)

    # --- appending --------------------------------------------------------------------------------------------------

    def append(self, lines: Sequence[bytes]) -> int:
        """Store points durably (one transaction); drop the oldest beyond max_points. Return how many were dropped."""
        if not lines:
            return 0
        with self._transaction() as conn:
            conn.executemany("INSERT INTO points(line) VALUES (?)", ((line,) for line in lines))
            self._count += len(lines)
            dropped = self._trim(conn, "points", self._count - self.max_points)
            self._count -= dropped
        return self._note_dropped(dropped, "points")

    def hold(self, readings: Sequence[Reading]) -> int:
        """Store readings that cannot become points yet (no inverter name). Return how many were dropped."""
        if not readings:
            return 0
        rows = [(oid, _storable(value), ts) for oid, value, ts in readings]
        with self._transaction() as conn:
            conn.executemany("INSERT INTO held(object_id, value, timestamp_ns) VALUES (?, ?, ?)", rows)
            self._held += len(rows)
            dropped = self._trim(conn, "held", self._held - self.max_points)
            self._held -= dropped
        return self._note_dropped(dropped, "held readings")

    def release_held(self, encode: Callable[[list[Reading]], list[bytes]], chunk: int = 10000) -> int:
        """Turn held readings into points with `encode`, oldest first; return how many readings were released."""
        released = 0
        while self._held:
            with self._transaction() as conn:
                rows = conn.execute("SELECT id, object_id, value, timestamp_ns FROM held ORDER BY id LIMIT ?",
                                    (chunk,)).fetchall()
                if not rows:
                    self._held = 0
                    break
                lines = encode([(oid, value, ts) for _, oid, value, ts in rows])
                conn.executemany("INSERT INTO points(line) VALUES (?)", ((line,) for line in lines))
                conn.execute("DELETE FROM held WHERE id <= ?", (rows[-1][0],))
                self._held -= len(rows)
                self._count += len(lines)
                dropped = self._trim(conn, "points", self._count - self.max_points)
                self._count -= dropped
            self._note_dropped(dropped, "points")
            released += len(rows)
        return released

    def _trim(self, conn: sqlite3.Connection, table: str, excess: int) -> int:
        if excess <= 0:
            return 0
        cursor = conn.execute(
            f"DELETE FROM {table} WHERE id <= (SELECT id FROM {table} ORDER BY id LIMIT 1 OFFSET ?)", (excess - 1,))
        return max(cursor.rowcount, 0)

    def _note_dropped(self, dropped: int, what: str) -> int:
        if dropped:
            self.dropped += dropped
            log.debug("spool full (%d points): dropped the %d oldest %s", self.max_points, dropped, what)
        return dropped

    # --- draining ---------------------------------------------------------------------------------------------------

    def peek(self, limit: int) -> list[tuple[int, bytes]]:
        """Return up to `limit` of the oldest points as (id, line), oldest first, without removing them."""
        return self._conn().execute("SELECT id, line FROM points ORDER BY id LIMIT ?", (limit,)).fetchall()

    def remove(self, first_id: int, last_id: int) -> int:
        """Remove the points with ids first_id..last_id (InfluxDB accepted them); return how many were removed."""
        with self._transaction() as conn:
            removed = max(conn.execute("DELETE FROM points WHERE id BETWEEN ? AND ?",
                                       (first_id, last_id)).rowcount, 0)
            self._count -= removed
        if self._count == 0:
            self._shrink()
        return removed

    def _shrink(self) -> None:
        """Give the pages of a drained backlog back to the file system, a chunk at a time."""
        conn = self._conn()
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        if free < _VACUUM_FREE_PAGES or conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
            return
        while free > 0 and self._count == 0:
            with self._write_lock:
                conn.execute(f"PRAGMA incremental_vacuum({_VACUUM_CHUNK})").fetchall()
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        # the file itself is truncated when the WAL is checkpointed
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        log.debug("spool drained; file shrunk to %d bytes", self.path.stat().st_size)

    def iter_lines(self) -> Iterator[bytes]:
        """Yield every spooled line, oldest first (for tests and diagnosis)."""
        for _, line in self._conn().execute("SELECT id, line FROM points ORDER BY id").fetchall():
            yield line

    # --- closing ----------------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close every connection and let go of the file lock."""
        with self._connections_lock:
            for conn in self._connections:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._connections.clear()
        self._local = threading.local()
        if self._lock_file >= 0:
            os.close(self._lock_file)
            self._lock_file = -1


def _storable(value: Any) -> Any:
    """Return a value sqlite can store; anything else becomes NULL (and later an invalid, counted reading)."""
    if isinstance(value, (str, bytes, float)):
        return value
    if isinstance(value, int) and -(1 << 63) <= value < (1 << 63):
        return value
    return None


class _Transaction:
    """`with` block: the spool's write lock plus BEGIN IMMEDIATE ... COMMIT.

    The counts are updated inside the block, under the lock, so they are exact for the other thread; on an error
    the transaction is rolled back and the counts are read again from the database.
    """

    def __init__(self, conn: sqlite3.Connection, lock: threading.Lock,
                 on_rollback: Callable[[sqlite3.Connection], None]) -> None:
        self._conn = conn
        self._lock = lock
        self._on_rollback = on_rollback

    def __enter__(self) -> sqlite3.Connection:
        self._lock.acquire()
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._lock.release()
            raise
        return self._conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                try:
                    self._conn.execute("COMMIT")
                    return
                except BaseException:
                    self._rollback()
                    raise
            self._rollback()
        finally:
            self._lock.release()

    def _rollback(self) -> None:
        try:
            self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # COMMIT may have failed in a way that already ended the transaction
        self._on_rollback(self._conn)
