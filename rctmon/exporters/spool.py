"""The durable spool of the influxdb exporter: line-protocol points waiting for InfluxDB, in a sqlite file.

Why sqlite in WAL mode: a committed transaction survives the death of the process (kill -9, OOM, a crash) because
it is in the WAL file in the kernel's page cache the moment COMMIT returns. `synchronous=NORMAL` syncs the WAL
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

The file is input like any other (issue 11): a file that is damaged, cut short, emptied, not sqlite at all or
paired with a write-ahead log that does not belong to it is moved aside (`<name>.corrupt-<UTC time>`, with its
`-wal` and `-shm`), logged once at ERROR with what it held, counted in `corrupt_files_set_aside`, and a new spool
is started; sqlite's own `quick_check` runs at every open, for at most `check_seconds`. A spool that cannot be
written (disk full, read-only file system, I/O errors) costs the points that cannot be stored, counted as dropped
and logged once per episode; the exporter keeps running. Rows that cannot be read while draining are skipped and
counted. Only a spool held by another process (`SpoolLocked`) stops the exporter.

Both threads of the exporter use one connection, one statement at a time under one lock: that is what lets a
damaged file be replaced while the exporter runs, and the counts are exact for both threads.
"""

from __future__ import annotations

import datetime
import fcntl
import logging
import os
import sqlite3
import struct
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Callable, TypeVar
from collections.abc import Iterator, Mapping, Sequence

from rctmon import statedir
from rctmon.config import InfluxDBConfig
from rctmon.messages import Reading

log = logging.getLogger("rctmon.influxdb.spool")

T = TypeVar("T")

FILE_NAME = "influxdb-spool.sqlite"
SCHEMA_VERSION = 1
LOCK_TIMEOUT = 10.0  # seconds to wait for another process (a dying predecessor) to let go of the spool
#: Longest the integrity check at open may take. It reads the whole file: a 2-million-point spool (173 MB) takes
#: about 0.4 s from the page cache and 0.6 s from the disk on the benchmark machine (bench/spool_open.py); the budget
#: keeps a slow SD card from delaying the child's start towards the supervisor's 20 s heartbeat limit.
CHECK_SECONDS = 8.0
REOPEN_INTERVAL = 60.0  # seconds between attempts to open a spool that could not be opened
BUSY_TIMEOUT = 5.0  # seconds a write waits for another process's lock (an admin's sqlite3 shell) before it gives up
#: Ids read one at a time past damage in one drain pass before the file counts as beyond use and is set aside.
MAX_UNREADABLE_IDS = 10_000
_VACUUM_FREE_PAGES = 2048  # give free pages back to the file system once the spool is empty and this many are free
_VACUUM_CHUNK = 1024  # pages per incremental_vacuum step, so the lock is never held long
#: First line of the lock file once a spool has been created beside it: a spool file that is then empty or missing
#: lost what it held (sqlite itself would silently start an empty database in a 0-byte file).
_MARKER = b"rctmon influxdb spool\n"

# sqlite's primary result codes (sqlite3.h)
_SQLITE_INTERRUPT, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_NOTADB = 9, 11, 13, 26
_WAL_MAGIC = (0x377F0682, 0x377F0683)
_WAL_VERSION = 3007000
_WAL_HEADER = 32

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS points (id INTEGER PRIMARY KEY AUTOINCREMENT, line BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS held (id INTEGER PRIMARY KEY AUTOINCREMENT, object_id INTEGER NOT NULL,"
    " value, timestamp_ns INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value)",
)
_TABLES = frozenset({"points", "held", "meta"})
_PEEK = "SELECT id, CAST(line AS BLOB) FROM points WHERE id > ? ORDER BY id LIMIT ?"


class SpoolLocked(RuntimeError):
    """Another process holds the spool (two writers would send every point twice)."""


class _Damaged(Exception):
    """The spool file is not a usable spool; the message says why, `held` how many points it held (if known)."""

    def __init__(self, reason: str, held: int | None = None) -> None:
        super().__init__(reason)
        self.held = held


def default_path(environ: Mapping[str, str] | None = None) -> Path:
    """Return where the spool lives when `influxdb.spool_path` is empty: in the state root (`rctmon.statedir`).

    That is $STATE_DIRECTORY (what systemd's StateDirectory= sets; the first entry if it lists several), otherwise
    the XDG state directory of the user. A configuration loaded from a file whose instance keeps its state in a
    directory of its own has `influxdb.spool_path` set to it already (`rctmon.config.DERIVED`).
    """
    return statedir.state_root(environ) / FILE_NAME


def spool_path(config: InfluxDBConfig, environ: Mapping[str, str] | None = None, adopt: bool = True) -> Path:
    """Return the spool file configured, or the default one.

    With `adopt` (what the influxdb child wants before it opens the spool), a spool in an instance's directory that
    does not exist yet first takes over the one an earlier rctmon kept in the state root, so an upgrade loses no
    point (`rctmon.statedir.adopt_earlier`). Checks that must change nothing pass `adopt=False`.
    """
    path = Path(config.spool_path).expanduser() if config.spool_path else default_path(environ)
    if adopt:
        statedir.adopt_earlier(path, environ)
    return path


def _result_code(exc: BaseException) -> int | None:
    """Return sqlite's primary result code of an error (Python 3.11+ carries it; older ones only the message)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return int(code) & 0xFF
    text = str(exc).lower()
    for words, code in (("malformed", _SQLITE_CORRUPT), ("not a database", _SQLITE_NOTADB),
                        ("is full", _SQLITE_FULL), ("interrupted", _SQLITE_INTERRUPT)):
        if words in text:
            return code
    return None


def _is_damage(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.DatabaseError) and _result_code(exc) in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


def _wal_problem(wal: Path, db: Path) -> str | None:
    """Return why the write-ahead log beside the spool cannot belong to it, or None.

    sqlite ignores a log whose header is invalid, and with it every transaction committed since the last
    checkpoint, without a word. A valid header has the magic number, the format version, a page size that is a
    power of two (the database's own, if the database has a header) and a checksum over the first 24 bytes.
    """
    try:
        size = wal.stat().st_size
    except FileNotFoundError:
        return None
    if size <= _WAL_HEADER:  # empty after a checkpoint, or torn while being started: no commit can be in it
        return None
    with open(wal, "rb") as f:
        header = f.read(_WAL_HEADER)
    magic, version, page_size = struct.unpack(">III", header[:12])
    if magic not in _WAL_MAGIC or version != _WAL_VERSION:
        return "its write-ahead log (-wal) is not one"
    if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
        return "its write-ahead log (-wal) has an impossible page size"
    order = ">" if magic & 1 else "<"
    words = struct.unpack(order + "6I", header[:24])
    first = second = 0
    for i in range(0, 6, 2):
        first = (first + words[i] + second) & 0xFFFFFFFF
        second = (second + words[i + 1] + first) & 0xFFFFFFFF
    if (first, second) != struct.unpack(">II", header[24:32]):
        return "the header of its write-ahead log (-wal) is damaged"
    try:
        with open(db, "rb") as f:
            db_header = f.read(100)
    except FileNotFoundError:
        return "its database file is missing while its write-ahead log (-wal) is there"
    if len(db_header) >= 18 and db_header.startswith(b"SQLite format 3\x00"):
        db_page_size = struct.unpack(">H", db_header[16:18])[0]
        if (65536 if db_page_size == 1 else db_page_size) != page_size:
            return "its write-ahead log (-wal) was written for a database with another page size"
    return None


class Spool:
    """Points waiting for InfluxDB, durable across restarts; safe to use from two threads.

    Counters for the exporter's metrics: `dropped` (points and held readings the spool let go of: full, disk full or
    unwritable, unreadable rows, the contents of a file set aside), `corrupt_files_set_aside` and `unreadable_rows`.
    `store_failure` says why points cannot be stored right now (None while they can).
    """

    def __init__(self, path: str | os.PathLike[str], max_points: int, lock_timeout: float = LOCK_TIMEOUT,
                 check_seconds: float = CHECK_SECONDS, keep_unstored: bool = False) -> None:
        """`keep_unstored`: the owner stores with try_append/try_hold and keeps what could not be stored (the log
        says so instead of counting it as dropped)."""
        self.path = Path(path)
        self.max_points = max_points
        self.keep_unstored = keep_unstored
        self.check_seconds = check_seconds
        self.dropped = 0  # points and held readings let go of since open (see the class docstring)
        self.corrupt_files_set_aside = 0  # damaged spool files moved aside since open
        self.unreadable_rows = 0  # rows skipped while draining because they could not be read
        self.store_failure: str | None = None  # why points cannot be stored right now
        self._unreported = 0  # drops found while draining or at open, returned by the next append or hold
        self._failure_dropped = 0  # points dropped during the current store failure
        self._lock = threading.RLock()  # every use of the database, from either thread
        self._db: sqlite3.Connection | None = None
        self._generation = 0  # incremented when the file is replaced; a batch read before is not removed after
        self._peeked: list[tuple[int, bytes]] = []  # the batch peek returned last
        self._peeked_generation = 0
        self._count = 0  # points waiting (ids above _gone)
        self._held = 0
        self._last_id = 0  # highest point id in the file
        self._gone = 0  # points up to this id were sent or found unreadable, even where deleting them failed
        self._gone_on_disk = 0  # ... and up to this id they are deleted
        self._next_open = 0.0  # monotonic time of the next attempt to open a spool that could not be opened
        self._lock_file = self._take_file_lock(lock_timeout)
        with self._lock:
            self._open()

    # --- opening ----------------------------------------------------------------------------------------------------

    def _take_file_lock(self, timeout: float) -> int:
        """Lock `<spool>.lock` against other processes; return its descriptor (-1 where no lock file can exist)."""
        name = str(self.path) + ".lock"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError:
            try:  # a read-only file system: flock works on a descriptor opened for reading too
                fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return -1  # nothing can be written here anyway; _open says why
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = self._holder(fd)
                    os.close(fd)
                    raise SpoolLocked(
                        f"the spool {self.path} is in use by another process{holder} (two processes would send "
                        "every point twice): stop it, or give each its own influxdb.spool_path") from None
                time.sleep(0.1)

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            text = os.pread(fd, 256, 0).decode("ascii", "replace")
        except OSError:
            return ""
        pid = next((line[4:].strip() for line in text.splitlines() if line.startswith("pid ")), "")
        return f" (pid {pid})" if pid.isdigit() else ""

    def _write_marker(self) -> None:
        """Note in the lock file that a spool exists here, and who holds it."""
        if self._lock_file < 0:
            return
        try:
            content = _MARKER + f"pid {os.getpid()}\n".encode()
            os.pwrite(self._lock_file, content, 0)
            os.ftruncate(self._lock_file, len(content))
        except OSError:
            pass

    def _had_spool(self) -> bool:
        if self._lock_file < 0:
            return False
        try:
            return os.pread(self._lock_file, len(_MARKER), 0) == _MARKER
        except OSError:
            return False

    def _open(self) -> None:
        """Open the spool; set a damaged file aside and start a new one; without a usable file, note why."""
        self._next_open = time.monotonic() + REOPEN_INTERVAL
        try:
            try:
                self._inspect_files()
                counts = self._inspect_database()
                self._db = self._connect()
            except _Damaged as damage:
                self._set_aside(str(damage), damage.held)
                counts = None
                self._db = self._connect()
            if counts is None:
                counts = self._counts(self._db)
            self._count, self._held, self._last_id = counts
            self._gone = self._gone_on_disk = 0
            self._write_marker()
        except (sqlite3.Error, OSError, _Damaged) as exc:
            self._close_db()
            self._store_failed(f"the spool cannot be opened ({exc})", 0)
            return
        self._generation += 1
        log.debug("spool %s open: %d points, %d held readings", self.path, self._count, self._held)

    def _inspect_files(self) -> None:
        """Find what sqlite would not complain about: a spool emptied to 0 bytes, a write-ahead log not its own."""
        try:
            size: int | None = self.path.stat().st_size
        except FileNotFoundError:
            size = None
        if size == 0 and self._had_spool():
            raise _Damaged("it is empty (0 bytes) although it held a spool")
        if size is None and self._had_spool():
            log.warning("the InfluxDB spool %s is gone (deleted?); starting a new one", self.path)
        problem = _wal_problem(Path(str(self.path) + "-wal"), self.path)
        if problem is not None:
            raise _Damaged(problem)

    def _inspect_database(self) -> tuple[int, int, int] | None:
        """Check the file read-only (so a damaged one is set aside as it was); return its counts if it is a spool.

        None when there is no spool in it yet, or when it cannot even be read (opening it read-write says why).
        """
        try:
            conn = sqlite3.connect(f"file:{urllib.parse.quote(str(self.path))}?mode=ro", uri=True,
                                   timeout=BUSY_TIMEOUT)
        except sqlite3.Error:
            return None
        conn.text_factory = bytes
        deadline = time.monotonic() + self.check_seconds
        try:
            self._read_ahead(deadline)
            self._check(conn, deadline)
            tables = {row[0].decode() for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables:
                return None
            if tables - _TABLES - {"sqlite_sequence"} or "meta" not in tables:
                raise _Damaged(f"it is no rctmon spool (tables: {', '.join(sorted(tables))})")
            return self._counts(conn)
        except _Damaged as damage:
            damage.held = self._count_in(conn)
            raise
        except sqlite3.Error as exc:
            if _is_damage(exc):
                raise _Damaged(f"sqlite: {exc}", self._count_in(conn)) from exc
            return None
        finally:
            conn.close()

    @staticmethod
    def _counts(conn: sqlite3.Connection) -> tuple[int, int, int]:
        """Return (points, held readings, highest point id)."""
        row = conn.execute("SELECT (SELECT count(*) FROM points), (SELECT count(*) FROM held),"
                           " (SELECT coalesce(max(id), 0) FROM points)").fetchone()
        return int(row[0]), int(row[1]), int(row[2])

    @staticmethod
    def _count_in(conn: sqlite3.Connection) -> int | None:
        """Return how many points and held readings a damaged file holds, if sqlite can still count them."""
        try:
            return int(conn.execute("SELECT (SELECT count(*) FROM points) + (SELECT count(*) FROM held)")
                       .fetchone()[0])
        except sqlite3.Error:
            return None

    def _connect(self) -> sqlite3.Connection:
        """Open the connection both threads use, in WAL mode, with the tables created."""
        # isolation_level=None: no implicit transactions; every write says BEGIN IMMEDIATE itself.
        conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
        conn.text_factory = bytes  # a line stored as text by someone else is still the same bytes
        try:
            # auto_vacuum only takes effect on a new file, before the WAL switch and the first table; then the
            # file can shrink again after a long backlog has drained (a no-op on an existing file).
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA journal_size_limit=67108864")  # truncate the WAL to 64 MiB after checkpoints
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,))
            conn.execute("COMMIT")
        except BaseException as exc:
            conn.close()
            if _is_damage(exc):
                raise _Damaged(f"sqlite: {exc}") from exc
            raise
        return conn

    def _read_ahead(self, deadline: float) -> None:
        """Read the files once from start to end before the check walks their pages in b-tree order.

        From a cold page cache this took a 2-million-point spool from 3.5 s to 0.5 s (bench/spool_open.py):
        the disk reads sequentially instead of a page at a time.
        """
        chunk = bytearray(1 << 20)
        for suffix in ("", "-wal"):
            try:
                with open(str(self.path) + suffix, "rb", buffering=0) as f:
                    while f.readinto(chunk) and time.monotonic() < deadline:
                        pass
            except OSError:
                pass

    def _check(self, conn: sqlite3.Connection, deadline: float) -> None:
        """Run sqlite's quick_check until `deadline` at most; raise _Damaged with what it found."""
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
        try:
            problems = [row[0].decode("utf-8", "replace") for row in conn.execute("PRAGMA quick_check(3)")]
        except sqlite3.OperationalError as exc:
            if _result_code(exc) != _SQLITE_INTERRUPT:
                raise
            log.warning("the integrity check of the InfluxDB spool %s (%d MB) was stopped after %.0f s; damage will "
                        "be found when the rows are read", self.path, self._size() // 2**20, self.check_seconds)
            return
        finally:
            conn.set_progress_handler(None, 0)
        if problems != ["ok"]:
            raise _Damaged("sqlite's integrity check: " + "; ".join(problems))

    def _size(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.stat(str(self.path) + suffix).st_size
            except OSError:
                pass
        return total

    def _set_aside(self, reason: str, held: int | None = None) -> None:
        """Move the damaged file (and its -wal, -shm) aside, count it, and log it once with what it held."""
        self._close_db()
        size = self._size()
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
            n += 1
        for suffix in ("", "-wal", "-shm"):
            source = Path(str(self.path) + suffix)
            if source.exists():
                os.replace(source, str(target) + suffix)  # OSError: the caller cannot use the spool at all
        self.corrupt_files_set_aside += 1
        self._unreported += held or 0
        self.dropped += held or 0
        lost = f"{held:,} points and held readings" if held is not None else f"{size:,} bytes, points not countable"
        log.error("the InfluxDB spool %s is damaged (%s): moved it to %s with what it held (%s, not sent to "
                  "InfluxDB) and started a new spool; docs/operations.md says how to recover its points",
                  self.path, reason, target, lost)

    def _close_db(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None

    def _connection(self) -> sqlite3.Connection | None:
        """Return the open connection; after a failed open, try again once REOPEN_INTERVAL has passed."""
        if self._db is None and time.monotonic() >= self._next_open:
            self._open()
        return self._db

    # --- failures ---------------------------------------------------------------------------------------------------

    def _store_failed(self, reason: str, dropped: int) -> None:
        """Count points that could not be stored; log the first of an episode at ERROR."""
        if self.store_failure is None:
            log.error("cannot store points in the InfluxDB spool %s: %s; %s until it works again", self.path, reason,
                      "new points wait, unacknowledged, in rctmon's memory" if self.keep_unstored else
                      "points that cannot be stored are dropped and counted in rctmon_influxdb_points_dropped_total")
            self._failure_dropped = 0
        self.store_failure = reason
        self._failure_dropped += dropped

    def _stored(self) -> None:
        if self.store_failure is not None:
            log.info("the InfluxDB spool %s stores points again%s (%s)", self.path,
                     "" if self.keep_unstored else f"; {self._failure_dropped} were dropped meanwhile",
                     self.store_failure)
            self.store_failure = None

    def _write(self, work: Callable[[sqlite3.Connection], T], dropped: int) -> T | None:
        """Run `work` in one write transaction (lock held); None if it could not be stored (`dropped` points lost).

        A damaged file is set aside and the work done once more on the new spool; any other failure (disk full,
        read-only, I/O) is an episode: counted, logged once, and the spool stays open for the next attempt.
        """
        for attempt in (1, 2):
            conn = self._connection()
            if conn is None:
                break
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = work(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass  # a failed COMMIT may have ended the transaction already
                    raise
            except sqlite3.Error as exc:
                if _is_damage(exc) and attempt == 1:
                    self._replace_damaged(f"sqlite: {exc}")
                    continue
                code = _result_code(exc)
                self._store_failed("the disk is full" if code == _SQLITE_FULL else str(exc), dropped)
                return None
            self._stored()
            self._delete_gone(conn)
            return result
        self._store_failed(self.store_failure or "the spool cannot be opened", dropped)
        return None

    def _replace_damaged(self, reason: str) -> None:
        """Set the open file aside while the exporter runs and continue on a new one (lock held)."""
        held = self._count + self._held
        last_id = self._last_id
        try:
            self._set_aside(reason, held)
        except OSError as exc:
            self._store_failed(f"the spool is damaged ({reason}) and cannot be moved aside ({exc})", 0)
            return
        self._open()
        if self._db is not None and last_id:
            # New ids continue above the old ones, so the batch in flight can never remove a new point.
            try:
                self._db.execute("INSERT INTO sqlite_sequence(name, seq) VALUES ('points', ?)", (last_id,))
                self._last_id = last_id
            except sqlite3.Error:
                pass

    def _delete_gone(self, conn: sqlite3.Connection) -> None:
        """Delete points sent (or unreadable) whose deletion failed before; harmless if it fails again."""
        if self._gone <= self._gone_on_disk:
            return
        try:
            conn.execute("DELETE FROM points WHERE id <= ?", (self._gone,))
            self._gone_on_disk = self._gone
        except sqlite3.Error:
            pass

    def _take_unreported(self) -> int:
        unreported, self._unreported = self._unreported, 0
        return unreported

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
        """Store points durably (one transaction); drop the oldest beyond max_points.

        Return how many points were dropped: the oldest ones, these lines if they could not be stored, and what
        was lost since the last call while draining or to a damaged file (so the caller counts every drop).
        """
        dropped = self.try_append(lines)
        if dropped is None:
            self.dropped += len(lines)
            return len(lines) + self._take_unreported()
        return dropped

    def try_append(self, lines: Sequence[bytes]) -> int | None:
        """Store points as `append` does, but return None, counting nothing, when they could not be stored.

        The caller still has them and may offer them again (the exporter leaves them unacknowledged).
        """
        with self._lock:
            if lines:
                def work(conn: sqlite3.Connection) -> tuple[int, int, int]:
                    conn.executemany("INSERT INTO points(line) VALUES (?)", ((line,) for line in lines))
                    last_id = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
                    dropped = self._trim(conn, "points", self._count + len(lines) - self.max_points)
                    return self._count + len(lines) - dropped, last_id, dropped

                result = self._write(work, 0 if self.keep_unstored else len(lines))
                if result is None:
                    return None
                self._count, self._last_id, dropped = result
                self._note_dropped(dropped, "points")
            else:
                dropped = 0
            return dropped + self._take_unreported()

    def hold(self, readings: Sequence[Reading]) -> int:
        """Store readings that cannot become points yet (no inverter name). Return how many were dropped (as append)."""
        dropped = self.try_hold(readings)
        if dropped is None:
            self.dropped += len(readings)
            return len(readings) + self._take_unreported()
        return dropped

    def try_hold(self, readings: Sequence[Reading]) -> int | None:
        """Hold readings as `hold` does, but return None, counting nothing, when they could not be stored."""
        with self._lock:
            if readings:
                rows = [(oid, _storable(value), ts) for oid, value, ts in readings]

                def work(conn: sqlite3.Connection) -> tuple[int, int]:
                    conn.executemany("INSERT INTO held(object_id, value, timestamp_ns) VALUES (?, ?, ?)", rows)
                    dropped = self._trim(conn, "held", self._held + len(rows) - self.max_points)
                    return self._held + len(rows) - dropped, dropped

                result = self._write(work, 0 if self.keep_unstored else len(rows))
                if result is None:
                    return None
                self._held, dropped = result
                self._note_dropped(dropped, "held readings")
            else:
                dropped = 0
            return dropped + self._take_unreported()

    def release_held(self, encode: Callable[[list[Reading]], list[bytes]], chunk: int = 10000) -> int:
        """Turn held readings into points with `encode`, oldest first; return how many readings were released.

        Readings that cannot be released now (the spool cannot be written) stay held for a later call.
        """
        released = 0
        while True:
            with self._lock:
                if not self._held:
                    break

                def work(conn: sqlite3.Connection) -> tuple[int, int, int, int]:
                    rows = conn.execute("SELECT id, object_id, value, timestamp_ns FROM held ORDER BY id LIMIT ?",
                                        (chunk,)).fetchall()
                    if not rows:
                        return 0, 0, self._count, self._last_id
                    lines = encode([(oid, _value(value), ts) for _, oid, value, ts in rows])
                    conn.executemany("INSERT INTO points(line) VALUES (?)", ((line,) for line in lines))
                    last_id = conn.execute("SELECT last_insert_rowid()").fetchone()[0] if lines else self._last_id
                    conn.execute("DELETE FROM held WHERE id <= ?", (rows[-1][0],))
                    dropped = self._trim(conn, "points", self._count + len(lines) - self.max_points)
                    return len(rows), dropped, self._count + len(lines) - dropped, last_id

                result = self._write(work, 0)
                if result is None:
                    break
                taken, dropped, self._count, self._last_id = result
                if not taken:
                    self._held = 0
                    break
                self._held -= taken
                self._note_dropped(dropped, "points")
                self._unreported += dropped
                released += taken
        return released

    def _trim(self, conn: sqlite3.Connection, table: str, excess: int) -> int:
        if excess <= 0:
            return 0
        cursor = conn.execute(
            f"DELETE FROM {table} WHERE id <= (SELECT id FROM {table} ORDER BY id LIMIT 1 OFFSET ?)", (excess - 1,))
        return max(cursor.rowcount, 0)

    def _note_dropped(self, dropped: int, what: str) -> None:
        if dropped:
            self.dropped += dropped
            log.debug("spool full (%d points): dropped the %d oldest %s", self.max_points, dropped, what)

    # --- draining ---------------------------------------------------------------------------------------------------

    def peek(self, limit: int) -> list[tuple[int, bytes]]:
        """Return up to `limit` of the oldest points as (id, line), oldest first, without removing them.

        Rows that cannot be read (a damaged record or page) are skipped and counted.
        """
        with self._lock:
            conn = self._connection()
            if conn is None:
                return []
            rows: list[tuple[int, bytes]] | None
            try:
                # CAST: a line that is no blob (only someone else can have stored one) is sent as its bytes, and
                # InfluxDB's rejection is counted; NOT NULL keeps out None, and quick_check a record that breaks it.
                rows = conn.execute(_PEEK, (self._gone, limit)).fetchall()
            except sqlite3.Error as exc:
                if not _is_damage(exc):
                    log.debug("cannot read the spool: %s", exc)
                    return []
                rows = self._read_around_damage(conn, limit)
            if rows is None:
                return []
            self._peeked = rows
            self._peeked_generation = self._generation
            return rows

    def _read_around_damage(self, conn: sqlite3.Connection, limit: int) -> list[tuple[int, bytes]] | None:
        """Read the oldest rows one at a time, stepping over ids that cannot be read; None if the file was set aside.

        Ids are consecutive (rows leave the spool oldest first), so an id that cannot be read was a point.
        """
        rows: list[tuple[int, bytes]] = []
        skipped: list[int] = []
        at = self._gone
        while len(rows) < limit and at < self._last_id:
            try:
                row = conn.execute(_PEEK, (at, 1)).fetchone()
            except sqlite3.Error as exc:
                if not _is_damage(exc):
                    break
                at += 1
                skipped.append(at)
                if len(skipped) > MAX_UNREADABLE_IDS:
                    self._replace_damaged(f"more than {MAX_UNREADABLE_IDS:,} points in a row cannot be read")
                    return None
                continue
            if row is None:
                break
            at = row[0]
            if isinstance(row[1], bytes):
                rows.append(row)
            else:
                skipped.append(at)
        if skipped:
            self._unreadable(skipped, conn)
        return rows

    def _unreadable(self, ids: list[int], conn: sqlite3.Connection) -> None:
        """Count rows that cannot be sent; delete them, or at least never read them again."""
        self.unreadable_rows += len(ids)
        self.dropped += len(ids)
        self._unreported += len(ids)
        self._count = max(0, self._count - len(ids))
        log.error("%d points in the InfluxDB spool %s cannot be read (ids %d to %d); they are skipped and counted "
                  "in rctmon_influxdb_points_dropped_total", len(ids), self.path, ids[0], ids[-1])
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("DELETE FROM points WHERE id = ?", ((row_id,) for row_id in ids))
            conn.execute("COMMIT")
        except sqlite3.Error:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            # The ids before these are either already sent or in the batch being read now, which the drain thread
            # removes before it reads the next one.
            self._gone = max(self._gone, ids[-1])

    def remove(self, first_id: int, last_id: int) -> int:
        """Remove the points with ids first_id..last_id (InfluxDB accepted them); return how many were removed.

        If the file cannot be written they are still never read again; a batch read from a file that has been set
        aside since removes nothing.
        """
        with self._lock:
            if self._peeked_generation != self._generation:
                return 0
            removed = self._write(
                lambda conn: max(conn.execute("DELETE FROM points WHERE id BETWEEN ? AND ?",
                                              (first_id, last_id)).rowcount, 0), 0)
            if removed is None:
                self._gone = max(self._gone, last_id)
                removed = sum(1 for row_id, _ in self._peeked if first_id <= row_id <= last_id)
            self._count = max(0, self._count - removed)
            empty = self._count == 0
        if empty:
            self._shrink()
        return removed

    def _shrink(self) -> None:
        """Give the pages of a drained backlog back to the file system, a chunk at a time."""
        try:
            with self._lock:
                conn = self._db
                if conn is None or conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
                    return
                free = conn.execute("PRAGMA freelist_count").fetchone()[0]
            if free < _VACUUM_FREE_PAGES:
                return
            while free > 0:
                with self._lock:
                    if self._count or self._db is not conn:
                        return
                    conn.execute(f"PRAGMA incremental_vacuum({_VACUUM_CHUNK})").fetchall()
                    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
            with self._lock:
                if self._db is conn:  # the file itself is truncated when the WAL is checkpointed
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            log.debug("spool drained; file shrunk to %d bytes", self._size())
        except sqlite3.Error as exc:
            log.debug("spool not shrunk: %s", exc)

    def iter_lines(self) -> Iterator[bytes]:
        """Yield every spooled line, oldest first (for tests and diagnosis)."""
        with self._lock:
            conn = self._connection()
            rows = [] if conn is None else conn.execute(
                "SELECT line FROM points WHERE id > ? ORDER BY id", (self._gone,)).fetchall()
        for (line,) in rows:
            yield line

    # --- closing ----------------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection and let go of the file lock."""
        with self._lock:
            self._close_db()
            self._next_open = float("inf")  # closed for good
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


def _value(stored: Any) -> Any:
    """Return a held value as it was stored (text comes back as bytes from the connection; see text_factory)."""
    if isinstance(stored, bytes):
        try:
            return stored.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return stored
