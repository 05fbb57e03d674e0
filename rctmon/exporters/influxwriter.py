"""The drain thread of the influxdb exporter: spool -> InfluxDB, oldest first, with retries that never give up.

It runs beside the main thread (which receives, spools and acknowledges) so that a hung or absent InfluxDB can
never delay an acknowledgement. When points arrive it waits `flush_interval`, so that the readings of one poll (and
whatever else comes meanwhile) go out in one request, then sends what waits in batches of `batch_size`; while full
batches keep coming (a backlog after an outage) it sends them back to back, and while points remain after a pass the
next one follows `flush_interval` later. A point leaves the spool only after InfluxDB accepted it.

While the spool is empty the thread sleeps without a timeout until the main thread reports a commit
(`Drainer.points_spooled`): at the default tiers readings come in bursts every 10 s, and a thread that looked into
the empty spool every second in between was most of what the idle child cost (issue 6).

What InfluxDB answers decides what happens (one place, `classify`):

- connection refused/reset, timeouts, 5xx, 429: transient; retried with exponential backoff and jitter (tenacity),
  honouring Retry-After; logged once per outage, and once more when writes succeed again.
- 401, 403, 404 (and other 4xx): retrying will not fix them soon (bad token, missing permission, unknown bucket,
  org or database); logged once with the fix to try, points kept, retried every SLOW_RETRY seconds.
- 400, 413, 422: InfluxDB refuses some lines (malformed, field type conflict, beyond retention, too large). The
  batch is bisected until the refused lines are isolated; those are dropped and counted, the rest is written.
  InfluxDB may already have stored the good lines of a partial write, so some are sent twice: a point with the
  same series and timestamp overwrites itself, which is harmless.
"""

from __future__ import annotations

import dataclasses
import email.utils
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential, wait_random

from rctmon.config import InfluxDBConfig
from rctmon.exporters.spool import Spool

log = logging.getLogger("rctmon.influxdb")

BACKOFF_MULTIPLIER = 0.5  # seconds: the first retry after a transient error comes after 0.5-1.5 s
BACKOFF_MAX = 15.0  # seconds: during an outage of hours a retry every ~15 s costs nothing and recovers fast
BACKOFF_JITTER = 1.0
SLOW_RETRY = 30.0  # seconds between attempts while InfluxDB refuses the token, bucket or org
RETRY_AFTER_MAX = 600.0  # a Retry-After beyond this is not believed
REJECT_LOG_INTERVAL = 60.0  # at most one log line per minute about dropped lines (each is counted)

Rows = list[tuple[int, bytes]]
#: What the exporter reports as its state (the systemd status shows it) for each kind of failed write.
STATE_OF_KIND = {"connection": "unreachable", "timeout": "timeout", "server": "server_error",
                 "rate_limited": "rate_limited", "unauthorized": "unauthorized", "forbidden": "forbidden",
                 "not_found": "not_found"}


class WriteFailure(Exception):
    """A write InfluxDB did not accept; `kind` labels rctmon_influxdb_write_errors_total."""

    def __init__(self, kind: str, detail: str, status: int = 0, retry_after: float | None = None) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.status = status
        self.retry_after = retry_after


class Transient(WriteFailure):
    """Retry soon: the server is away, slow, overloaded or rate limiting."""


class Refused(WriteFailure):
    """Retry slowly: the server refuses this client (credentials, permissions, bucket); a human must act."""


class Rejected(WriteFailure):
    """The server refuses (some of) the lines themselves; retrying the same lines cannot help."""


class _Stopping(Exception):
    """The exporter is stopping; abandon the write (the points stay in the spool)."""


def _retry_after(value: Any) -> float | None:
    """Parse a Retry-After header (seconds or an HTTP date) into seconds from now."""
    if value is None:
        return None
    text = str(value).strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), RETRY_AFTER_MAX)


def _body_message(exc: Any) -> str:
    message = getattr(exc, "message", None) or getattr(exc, "body", None) or getattr(exc, "reason", None) or ""
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    return " ".join(str(message).split())[:300]


def classify(exc: BaseException) -> WriteFailure:
    """Map what influxdb-client (or urllib3 beneath it) raised onto Transient, Refused or Rejected."""
    import urllib3.exceptions as u3

    if isinstance(exc, WriteFailure):
        return exc
    status = getattr(exc, "status", None)
    if isinstance(status, int) and status > 0:
        detail = f"HTTP {status} {_body_message(exc)}".strip()
        retry_after = _retry_after(getattr(exc, "retry_after", None))
        if status == 429:
            return Transient("rate_limited", detail, status, retry_after)
        if status >= 500:
            return Transient("server", detail, status, retry_after)
        if status in (400, 413, 422):
            return Rejected("rejected", detail, status)
        kind = {401: "unauthorized", 403: "forbidden", 404: "not_found"}.get(status, f"http_{status}")
        return Refused(kind, detail, status)
    if isinstance(exc, u3.NewConnectionError):  # a subclass of ConnectTimeoutError, so first
        return Transient("connection", str(exc))
    if isinstance(exc, (u3.TimeoutError, TimeoutError)):
        return Transient("timeout", str(exc))
    if isinstance(exc, (u3.HTTPError, OSError)):
        return Transient("connection", str(exc))
    if status == 0:  # influxdb-client's wrapper around TLS errors
        return Transient("connection", _body_message(exc))
    return Transient("other", f"{type(exc).__name__}: {exc}")


class InfluxSender:
    """POST line protocol through influxdb-client in synchronous mode (its own retries off: ours are above it)."""

    def __init__(self, config: InfluxDBConfig) -> None:
        # Imported here, in the child, so that the supervisor never loads influxdb-client.
        from influxdb_client import InfluxDBClient, WritePrecision  # type: ignore[attr-defined]
        from influxdb_client.client.write_api import SYNCHRONOUS

        self._bucket = config.bucket
        self._org = config.org
        self._precision = WritePrecision.NS
        # InfluxDB 1.8 takes "username:password" as the token (its /api/v2/write compatibility endpoint) and
        # ignores org; an empty token sends no Authorization header at all (an InfluxDB without auth).
        self._client = InfluxDBClient(url=config.url, token=config.token, org=config.org,
                                      timeout=max(1, int(config.timeout * 1000)))
        self._api = self._client.write_api(write_options=SYNCHRONOUS)

    def send(self, body: bytes) -> None:
        """Write one request body; raise a WriteFailure when InfluxDB did not accept it."""
        try:
            self._api.write(bucket=self._bucket, org=self._org, record=body,
                            write_precision=self._precision)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - every failure is classified; none may kill the thread
            raise classify(exc) from exc

    def close(self) -> None:
        try:
            self._client.close()  # type: ignore[no-untyped-call]
        except Exception:  # noqa: BLE001 - closing an idle pool cannot matter
            pass


@dataclass
class InfluxStats:
    """Cumulative counters of the influxdb exporter process since it started (the spool size is a gauge)."""

    points_written: int = 0
    write_errors: dict[str, int] = field(default_factory=dict)  # kind -> count
    spool_points: int = 0
    points_dropped: int = 0
    spool_corrupt_files: int = 0  # the spool's own counters (Spool.corrupt_files_set_aside, .unreadable_rows)
    spool_unreadable_points: int = 0
    last_write_timestamp: float = 0.0  # epoch seconds of the last accepted write; 0: none yet
    #: for the systemd status: starting, ok, unreachable, timeout, server_error, rate_limited, unauthorized,
    #: forbidden, not_found, http_<status>, other
    state: str = "starting"
    #: the daemon's backfill (rctmon/history/record.py): points it put into the spool, time the record still lacks
    history_backfill_points: int = 0
    history_backfill_pending_seconds: int = 0


@dataclass
class StatsBox:
    """The exporter's counters, shared by both threads; `snapshot` is what the heartbeat carries."""

    stats: InfluxStats = field(default_factory=InfluxStats)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def written(self, points: int) -> None:
        with self.lock:
            self.stats.points_written += points
            self.stats.last_write_timestamp = time.time()
            self.stats.state = "ok"

    def error(self, kind: str) -> None:
        with self.lock:
            self.stats.write_errors[kind] = self.stats.write_errors.get(kind, 0) + 1
            if kind != "rejected":  # InfluxDB answered and took the other lines: the state stays what it was
                self.stats.state = STATE_OF_KIND.get(kind, kind)

    def dropped(self, points: int) -> None:
        if points:
            with self.lock:
                self.stats.points_dropped += points

    def snapshot(self, spool_points: int) -> InfluxStats:
        with self.lock:
            return dataclasses.replace(self.stats, write_errors=dict(self.stats.write_errors),
                                       spool_points=spool_points)


def _fix_hint(failure: WriteFailure, config: InfluxDBConfig) -> str:
    """Return what the user should try for an answer that retrying cannot fix."""
    if failure.kind == "unauthorized":
        return ("check influxdb.token (or influxdb.token_file / RCTMON_INFLUXDB_TOKEN): InfluxDB 2.x wants an API "
                f"token with write access to bucket '{config.bucket}', InfluxDB 1.8 wants 'username:password'")
    if failure.kind == "forbidden":
        return f"give the token write permission on bucket '{config.bucket}' (org '{config.org}')"
    if failure.kind == "not_found":
        return (f"create bucket '{config.bucket}' in org '{config.org}' or fix influxdb.bucket / influxdb.org "
                "(InfluxDB 1.8: the bucket is the database, e.g. 'rct' or 'rct/autogen'); "
                "rctmon never creates buckets or databases")
    return f"check influxdb.url ({config.url}): is it InfluxDB's write API?"


class Drainer:
    """The thread that drains the spool into InfluxDB."""

    def __init__(self, spool: Spool, sender: Callable[[], Any], config: InfluxDBConfig, stats: StatsBox,
                 on_exit: Callable[[], None] | None = None) -> None:
        """`sender` makes the object whose send(body) writes; it runs in the thread, so that importing
        influxdb-client (a quarter of a second) does not delay the child's Started and first Ack. `on_exit` runs
        in the thread when it ends, however it ends."""
        self.spool = spool
        self._on_exit = on_exit
        self._make_sender = sender
        self.sender: Any = None
        self.config = config
        self.stats = stats
        self._stopping = threading.Event()
        # Two events, because the thread waits for two different things: `_arrived` ends the sleep of an empty
        # spool (the main thread committed points); `_hurry` ends the flush interval early (flush_soon, stop, a
        # backlog at start). Commits during the flush interval set only `_arrived`, so they do not wake the thread.
        self._arrived = threading.Event()
        self._hurry = threading.Event()
        self._idle = threading.Condition()
        self._passes = 0  # drain passes completed, for wait_drained
        self._busy = False  # a drain pass is running
        self._thread = threading.Thread(target=self._run, name="influxdb-drain", daemon=True)
        self._backoff = wait_exponential(multiplier=BACKOFF_MULTIPLIER, max=BACKOFF_MAX) + wait_random(
            0, BACKOFF_JITTER)
        # one "episode" runs from the first failed write to the next accepted one
        self._failing_since: float | None = None
        self._failed_attempts = 0
        self._logged: set[str] = set()
        self._last_reject_log = 0.0
        self._rejects_unlogged = 0
        self.healthy = False  # the last write was accepted

    # --- control (main thread) ----------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def points_spooled(self) -> None:
        """Tell the thread that points were committed to the spool (main thread, after every commit that added some).

        The thread does not poll the spool: without this call points would wait until the next flush_soon or the
        next restart. Cheap enough to call after every commit (an Event.set).
        """
        self._arrived.set()

    def flush_soon(self) -> None:
        """Start a drain pass now instead of at the end of the flush interval (even if the spool looks empty)."""
        self._hurry.set()
        self._arrived.set()  # after _hurry: the thread, woken from an empty spool, must see that it is to hurry

    def wait_drained(self, timeout: float) -> bool:
        """Ask for a drain pass and wait up to `timeout` s for it to finish; return whether the spool is empty.

        Waiting for the pass (not just for an empty spool) means the counters are up to date afterwards.
        """
        deadline = time.monotonic() + timeout
        with self._idle:
            # a pass already running may have read the spool before the last append: wait for the one after it
            target = self._passes + (2 if self._busy else 1)
            self.flush_soon()
            while self._passes < target and self._thread.is_alive():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._idle.wait(remaining)
        return self.spool.count == 0

    def stop(self, timeout: float = 0.5) -> bool:
        """Tell the thread to stop and wait up to `timeout` s; return whether it ended.

        A write in flight is abandoned (the thread is a daemon and the points stay in the spool); if InfluxDB
        accepted it before the process ended, its points are sent once more after the restart.
        """
        self._stopping.set()
        self.flush_soon()  # ends whichever wait the thread is in; the backoff sleeps wait on _stopping itself
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    # --- the thread ---------------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self.sender = self._make_sender()
            if self.spool.count:  # a backlog from before the restart: start on it at once
                self._hurry.set()
            while not self._stopping.is_set():
                self._await_pass()
                if self._stopping.is_set():
                    break
                with self._idle:
                    # Cleared under the lock that wait_drained holds while it reads _busy and calls flush_soon, so
                    # its request is either served by this pass (it sees _busy False and sets _hurry before this)
                    # or counted as needing the next one (it sees _busy True). Points committed after the clear of
                    # _arrived set it again and are found by the next pass.
                    self._hurry.clear()
                    self._arrived.clear()
                    self._busy = True
                self._drain()
                with self._idle:
                    self._busy = False
                    self._passes += 1
                    self._idle.notify_all()
        except _Stopping:
            pass
        except Exception:  # noqa: BLE001 - logged here; on_exit tells the child, which exits
            log.exception("the InfluxDB drain thread failed; points stay in the spool")
        finally:
            with self._idle:
                self._idle.notify_all()
            if self._on_exit is not None:
                self._on_exit()

    def _await_pass(self) -> None:
        """Return when the next drain pass is due.

        At once after flush_soon or stop. Otherwise `flush_interval` after points are there: after the commit that
        put the first point into an empty spool, or after the previous pass if it left points behind. That
        interval is what batches the writes; commits during it do not wake the thread.

        While the spool is empty this waits without a timeout, so an idle child with a healthy InfluxDB has no
        periodic wake-up at all. Points appear in the spool only through the main thread (which calls
        points_spooled after each commit) or stay after a pass (the count is then non-zero), so none can be
        missed: the count is checked after every wake, and an `_arrived` set between the check and the wait makes
        the wait return at once.
        """
        while not self.spool.count and not self._hurry.is_set():
            self._arrived.wait()
            self._arrived.clear()
        if not self._hurry.is_set():
            self._hurry.wait(self.config.flush_interval)

    def _drain(self) -> None:
        """Send full batches back to back, then the partial one that remains."""
        size = self.config.batch_size
        while not self._stopping.is_set():
            rows = self.spool.peek(size)
            if not rows:
                return
            self._deliver(rows)
            if len(rows) < size:
                return

    def _deliver(self, rows: Rows) -> None:
        """Write rows (retrying as long as it takes) and remove them; bisect when InfluxDB rejects lines."""
        try:
            self._send_with_retries(b"\n".join(line for _, line in rows))
        except Rejected as exc:
            if len(rows) == 1:
                self._drop_rejected(rows[0], exc)
                return
            middle = len(rows) // 2
            self._deliver(rows[:middle])
            self._deliver(rows[middle:])
            return
        self.spool.remove(rows[0][0], rows[-1][0])
        self.stats.written(len(rows))

    def _drop_rejected(self, row: tuple[int, bytes], exc: WriteFailure) -> None:
        removed = self.spool.remove(row[0], row[0])
        self.stats.dropped(removed)
        self._rejects_unlogged += removed
        now = time.monotonic()
        if now - self._last_reject_log >= REJECT_LOG_INTERVAL:
            log.warning("InfluxDB rejected %d line(s) (%s); they are dropped and counted in "
                        "rctmon_influxdb_points_dropped_total; the latest: %s",
                        self._rejects_unlogged, exc.detail, row[1].decode("utf-8", "replace")[:300])
            self._last_reject_log = now
            self._rejects_unlogged = 0

    def _send_with_retries(self, body: bytes) -> None:
        retrying = Retrying(
            retry=retry_if_exception_type((Transient, Refused)),
            wait=self._wait,
            stop=lambda _state: self._stopping.is_set(),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            retrying(self._attempt, body)
        except (Transient, Refused) as exc:  # only when stopping
            raise _Stopping() from exc

    def _attempt(self, body: bytes) -> None:
        if self._stopping.is_set():
            raise _Stopping()
        try:
            self.sender.send(body)
        except WriteFailure as failure:
            self._note_failure(failure)
            raise
        self._note_success()

    def _wait(self, state: RetryCallState) -> float:
        failure = state.outcome.exception() if state.outcome else None
        if isinstance(failure, Refused):
            return SLOW_RETRY
        if isinstance(failure, WriteFailure) and failure.retry_after is not None:
            return failure.retry_after
        return float(self._backoff(state))

    def _sleep(self, seconds: float) -> None:
        if self._stopping.wait(seconds):
            raise _Stopping()

    # --- telling people -------------------------------------------------------------------------------------------

    def _note_failure(self, failure: WriteFailure) -> None:
        self.stats.error(failure.kind)
        self.healthy = False
        self._failed_attempts += 1
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        if isinstance(failure, Rejected) or failure.kind in self._logged:
            log.debug("InfluxDB write failed: %s", failure)
            return
        self._logged.add(failure.kind)
        waiting = self.spool.count
        if isinstance(failure, Refused):
            log.error("InfluxDB at %s refused the write (%s): %s; %d points are kept in the spool and retried "
                      "every %g s", self.config.url, failure.detail, _fix_hint(failure, self.config), waiting,
                      SLOW_RETRY)
        else:
            log.warning("cannot write to InfluxDB at %s (%s: %s); %d points are kept in the spool and retried "
                        "with backoff (at most %g s apart)", self.config.url, failure.kind, failure.detail,
                        waiting, BACKOFF_MAX)

    def _note_success(self) -> None:
        self.healthy = True
        if self._failing_since is None:
            return
        if self._logged:
            log.info("InfluxDB at %s accepts writes again after %d failed attempts over %.0f s; %d points in the "
                     "spool", self.config.url, self._failed_attempts, time.monotonic() - self._failing_since,
                     self.spool.count)
        self._failing_since = None
        self._failed_attempts = 0
        self._logged.clear()
