"""Where an instance of rctmon keeps its state (the InfluxDB spool, the history record): one directory per instance.

Several daemons may run on one host, one per inverter, each with a configuration file of its own. The *instance* is
that file's name without its directory and suffix (`/etc/rctmon/garage.yml` -> `garage`); it is known at start,
before anything connects (the inverter's serial is not: it cannot name a file the influxdb child opens at its start).

The state of an instance lives in `<root>/<instance>`, where the root is `$STATE_DIRECTORY` (what systemd's
`StateDirectory=` sets) or `~/.local/state/rctmon`. Two exceptions keep paths short and old installs as they were:
- the instance `rctmon` (`/etc/rctmon.yml`, or no file at all) keeps its state in the root itself, as every daemon
  did before instances existed;
- a root that already carries the instance's name is the instance's own directory: the template unit's
  `StateDirectory=rctmon/%i` gives `/var/lib/rctmon/garage` to `garage`.
A daemon whose file has another name kept its state in the root before: `adopt_earlier` moves it into the
instance's directory once, so an upgrade loses nothing.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

log = logging.getLogger("rctmon.statedir")

#: The instance of the default configuration file, /etc/rctmon.yml (and of a run without any file).
DEFAULT_INSTANCE = "rctmon"
#: The InfluxDB spool's file name in the state directory.
SPOOL_FILE = "influxdb-spool.sqlite"
#: The history record (rctmon/history/record.py): up to when InfluxDB holds everything, and what the backfill lacks.
#: It lives beside the spool, whose points it describes, wherever `influxdb.spool_path` puts that.
RECORD_FILE = "history-record.json"
#: The files sqlite keeps beside a database: they move with it (the WAL holds committed transactions).
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")
MAX_INSTANCE_LENGTH = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def instance_name(config_path: str | None) -> str:
    """Return the instance a configuration file stands for: its name without directory and suffix, made safe.

    The name becomes a directory and part of the MQTT client id, so anything but ASCII letters, digits, `_`, `.`
    and `-` becomes `_`, leading dots go (no hidden directory, never `..`), and it is cut to 64 characters.
    """
    if not config_path:
        return DEFAULT_INSTANCE
    stem = os.path.splitext(os.path.basename(config_path.rstrip("/")))[0]
    safe = _UNSAFE.sub("_", stem).lstrip(".")[:MAX_INSTANCE_LENGTH]
    return safe or DEFAULT_INSTANCE


def state_root(environ: Mapping[str, str] | None = None) -> Path:
    """Return the directory every instance's state lives under: $STATE_DIRECTORY, else ~/.local/state/rctmon.

    $STATE_DIRECTORY lists several directories, `:`-separated, when a unit names several: the first is ours.
    Raise RuntimeError when there is neither (no home directory to be found).
    """
    env = os.environ if environ is None else environ
    state = env.get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return Path(state)
    home = env.get("HOME") or str(Path.home())
    return Path(home) / ".local" / "state" / "rctmon"


def state_dir(instance: str, environ: Mapping[str, str] | None = None) -> Path:
    """Return the directory the state of `instance` lives in (see the module's docstring)."""
    root = state_root(environ)
    return root if instance in (DEFAULT_INSTANCE, root.name) else root / instance


def state_file(instance: str, name: str, environ: Mapping[str, str] | None = None) -> Path:
    """Return the path of one of the instance's state files, e.g. `state_file(config.instance, SPOOL_FILE)`."""
    return state_dir(instance, environ) / name


def record_path(spool: Path) -> Path:
    """Return where the history record of the spool `spool` lives: beside it."""
    return spool.with_name(RECORD_FILE)


def earlier_path(path: Path, environ: Mapping[str, str] | None = None) -> Path | None:
    """Return where the state file `path` lived before state was kept per instance, or None if it lived there.

    Only a file directly in an instance's directory below the root has an earlier place: the root itself.
    """
    try:
        root = state_root(environ)
    except (RuntimeError, KeyError):
        return None
    if path.parent.parent != root or path.parent == root:
        return None
    return root / path.name


def adopt_earlier(path: Path, environ: Mapping[str, str] | None = None,
                  companions: Sequence[str] = SQLITE_COMPANIONS) -> Path | None:
    """Move the state file an earlier rctmon kept in the root to `path`, once; return where it came from, or None.

    Nothing moves when `path` already exists, when there is no earlier file, or when a process holds either file's
    lock (`<file>.lock`, which the spool takes): a running daemon's file is never pulled away. The companions move
    first and the file itself last, so that an adoption cut short (a crash, a kill) is completed by the next one:
    it is still missing at `path`, and whatever already moved is not moved back. The earlier lock file stays, emptied:
    what the spool notes in it (that a spool exists there) no longer holds.
    """
    earlier = earlier_path(path, environ)
    if earlier is None or path.exists() or not earlier.exists():
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        with _Locked(earlier) as before, _Locked(path) as after:
            if not (before.free and after.free):
                log.info("not moving %s to %s: another process holds it", earlier, path)
                return None
            if path.exists() or not earlier.exists():  # another process of this instance was quicker
                return None
            for suffix in (*companions, ""):
                source = Path(f"{earlier}{suffix}")
                if source.exists():
                    os.rename(source, f"{path}{suffix}")
            os.ftruncate(before.fd, 0)
    except OSError as exc:
        # EXDEV: the instance's directory is another file system; moving across is not atomic, so leave it.
        how = "it is on another file system" if exc.errno == errno.EXDEV else (exc.strerror or str(exc))
        log.warning("cannot move %s, kept by an earlier rctmon, to %s: %s; move it by hand while rctmon is stopped",
                    earlier, path, how)
        return None
    log.warning("moved %s, kept by an earlier rctmon, to %s: the state of each instance lives in a directory of its "
                "own now", earlier, path)
    return earlier


class _Locked:
    """Hold `<path>.lock` (the lock the spool takes) if nobody else does; `free` says whether it was."""

    def __init__(self, path: Path) -> None:
        self._path = f"{path}.lock"
        self.fd = -1
        self.free = False

    def __enter__(self) -> _Locked:
        self.fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.free = True
        except BlockingIOError:
            self.free = False
        return self

    def __exit__(self, *exc_info: object) -> None:
        os.close(self.fd)  # closing the descriptor releases the lock
