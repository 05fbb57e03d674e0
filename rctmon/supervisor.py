"""The supervisor: starts the children, routes their messages, watches them and restarts them.

One single-threaded loop waits on every child's channel, every child's process sentinel and a signal pipe at once
(`selectors`): messages, exits, signals and timers are all handled in one place, with no polling and no threads.
Having no threads is what makes `fork` safe here, and fork is what keeps memory low: children share the
supervisor's pages copy-on-write and import only what their own job needs (see docs/architecture.md).

The supervisor knows its children only through their registrations (rctmon/registry.py): what each needs (readings,
health, the latest values, a listening socket) and whether it acknowledges. Readings flow collector -> supervisor
-> every child that reads them. For a child that acknowledges, the supervisor keeps a bounded backlog that a batch
leaves only on the child's `Ack`, so no batch is lost between processes: a restarted child is replayed everything
it had not made durable. Any other reader gets batches while it runs, and the latest value of everything when it
starts.

Every process a child runs as is an `Incarnation`; everything the selector reports names the incarnation it is
about, so an exit or a message of an incarnation that has been replaced can never be taken for the current one's.
A child has at most one incarnation at a time: a new one is started only once the exit of the previous one has
been handled.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import multiprocessing
import os
import selectors
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Union
from collections.abc import Iterable

from rctmon import __version__
from rctmon import config as config_module
from rctmon.channel import Channel, ChannelClosed
from rctmon.config import Config, ConfigError
from rctmon.health_metrics import BACKLOG_FULL, SEND_FAILED, SUPERVISOR
from rctmon.inventory import Inventory
from rctmon.logsetup import setup_logging
from rctmon.messages import (Ack, BackfillBatch, DeviceStatus, Health, Heartbeat, InverterEvents, Reading,
                             ReadingBatch, Started, Stats, Stop)
from rctmon.proc import Every, become_child, resource_usage, set_title
from rctmon.recent_events import RecentEvents
from rctmon.registry import CHILDREN, ChildSpec
from rctmon.systemd import Notifier

log = logging.getLogger("rctmon.supervisor")

HEARTBEAT_TIMEOUT = 20.0  # seconds of silence (four heartbeats) after which a child is considered hung and killed
RESTART_DELAY_MIN = 0.25  # first restart after this many seconds, doubling per consecutive failure
RESTART_DELAY_MAX = 30.0
STABLE_AFTER = 60.0  # a child that ran this long has its restart delay reset
HEALTH_INTERVAL = 5.0  # seconds between Health (and systemd STATUS=) refreshes while nothing changes
HEALTH_MIN_GAP = 1.0  # a change (readings, a restart, the device) is sent this soon, coalesced
STOP_GRACE = 6.0  # seconds children get to exit after Stop before they are killed
#: SIGHUPs within this many seconds of the first are one reload: a burst of them (or an editor writing the file in
#: several steps) costs one reload, not one per signal.
RELOAD_SETTLE = 0.2
#: Seconds the checks of a new configuration may take on SIGHUP (at start they may take a minute: importing
#: influxdb-client from a cold SD card). Less than half of the unit's WatchdogSec=30.
RELOAD_PREFLIGHT_TIMEOUT = 10.0
BACKLOG_MAX_READINGS = 1_000_000  # per acknowledging child; beyond it the oldest batches are dropped and counted
#: The `message` label of rctmon_messages_dropped_total: the messages other than readings the supervisor sends.
MESSAGE_KINDS: dict[type, str] = {Inventory: "inventory", DeviceStatus: "device_status", Health: "health",
                                  Stop: "stop"}
_FORK = multiprocessing.get_context("fork")
#: What an acknowledging child's backlog holds: readings, the inverter's events, and (for the child that keeps the
#: history record) what the backfill read; all numbered from one sequence, so one Ack covers them.
Numbered = Union[ReadingBatch, InverterEvents, BackfillBatch]
#: What the supervisor numbers and routes to every reader of readings.
Routed = Union[ReadingBatch, InverterEvents]


def _size(batch: Numbered) -> int:
    """Return the readings (or events, or history lines) a backlog entry counts for."""
    if isinstance(batch, ReadingBatch):
        return len(batch.readings)
    return len(batch.events) if isinstance(batch, InverterEvents) else len(batch.lines)


@dataclass(eq=False)
class Incarnation:
    """One process of a child, from its start until the supervisor has handled its exit."""

    number: int
    process: Any  # multiprocessing Process
    channel: Channel
    spawned_at: float
    last_heard: float
    started: bool = False  # it sent Started
    stop_deadline: float | None = None  # Stop was sent: its exit is no failure; killed when this passes
    killed: bool = False
    sent_upto: int = 0  # highest seq of the backlog written to its channel
    resend_from: int | None = None  # it asked for the backlog after this seq again (Ack.resend)


@dataclass(eq=False)
class Child:
    """One supervised child and what the supervisor keeps for it across incarnations."""

    spec: ChildSpec
    incarnation: Incarnation | None = None
    incarnations: int = 0
    wanted: bool = True  # False: its exporter was disabled; it is removed once its incarnation has exited
    failed: bool = False  # the last incarnation ended unasked: the next start is a restart, and counted
    restart_at: float | None = None
    failures: int = 0  # consecutive failed incarnations, for the backoff
    restarts: int = 0
    dropped: collections.Counter[str] = field(default_factory=collections.Counter)  # reason -> readings
    #: message kind -> messages other than readings its channel refused (MESSAGE_KINDS)
    messages_dropped: collections.Counter[str] = field(default_factory=collections.Counter)
    backlog: collections.deque[Numbered] = field(default_factory=collections.deque)
    backlog_readings: int = 0
    rss_bytes: int = 0
    cpu_seconds: float = 0.0
    stats: Stats = field(default_factory=dict)  # from its latest heartbeat, kept until the next incarnation's

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def up(self) -> bool:
        return self.incarnation is not None and self.incarnation.started


class Supervisor:
    """Runs the daemon until SIGTERM or SIGINT; see the module docstring."""

    def __init__(self, config: Config, config_path: str | None = None,
                 notifier: Notifier | None = None, specs: tuple[ChildSpec, ...] = CHILDREN,
                 debug: bool = False, frame_debug: bool = False) -> None:
        self.config = config
        self.log_flags = (debug, frame_debug)
        self.specs = specs
        self.config_path = config_path
        self.notifier = notifier or Notifier()
        self.selector = selectors.DefaultSelector()
        self.children: dict[str, Child] = {}
        #: child name -> (address, listening socket) for every child that declares `listen`
        self.sockets: dict[str, tuple[tuple[str, int], socket.socket]] = {}
        self.inventory: Inventory | None = None
        self.device: DeviceStatus = DeviceStatus(up=False, reason="starting")
        self.seq = 0
        self.latest: dict[int, Reading] = {}  # object id -> latest reading, for new incarnations that replay it
        self.recent_events = RecentEvents()  # replayed with the latest readings
        # Counted here rather than taken from the collector's heartbeat: current at once, and a collector restart
        # does not reset the counter.
        self.readings_routed = 0
        self.last_reading_ns = 0
        self._health_dirty = False
        self._health_sent = 0.0
        self.ready_sent = False
        self.stopping = False
        self._signals: set[int] = set()  # written by the signal handlers only; the loop takes them
        self._reload_at: float | None = None
        self.readings_window: collections.deque[tuple[float, int]] = collections.deque()
        self._wakeup_r, self._wakeup_w = os.pipe()
        self._watchdog = Every(self.notifier.watchdog_interval) if self.notifier.watchdog_interval else None

    # --- start and stop -----------------------------------------------------------------------------------------

    def run(self) -> int:
        """Run until told to stop; return the exit status."""
        set_title("supervisor")
        enabled = [spec for spec in self.specs if spec.enabled(self.config)]
        # Bind before any child starts, so that a taken port fails the start with a clear message.
        self.sockets = self._bind_sockets(self.config, enabled, {})
        self._install_signals()
        _share_with_children()
        for spec in enabled:
            self._add(spec)
        log.info("rctmon supervisor started (pid %d), children: %s", os.getpid(), ", ".join(self.children))
        try:
            while not self.stopping:
                self._loop_once()
            self._shutdown()
        finally:
            self._close()
        return 0

    @staticmethod
    def _bind_sockets(config: Config, specs: Iterable[ChildSpec],
                      current: dict[str, tuple[tuple[str, int], socket.socket]],
                      ) -> dict[str, tuple[tuple[str, int], socket.socket]]:
        """Return the listening socket of every child that declares one: kept where its address is unchanged,
        bound anew otherwise. Raise OSError (closing what it bound) when an address cannot be bound."""
        from rctmon.exporters.listen import bind_endpoint

        result: dict[str, tuple[tuple[str, int], socket.socket]] = {}
        try:
            for spec in specs:
                if spec.listen is None:
                    continue
                address = spec.listen(config)
                kept = current.get(spec.name)
                result[spec.name] = kept if kept and kept[0] == address else (address, bind_endpoint(*address))
        except OSError:
            for name, (_, sock) in result.items():
                if current.get(name, (None, None))[1] is not sock:
                    sock.close()
            raise
        return result

    def _install_signals(self) -> None:
        os.set_blocking(self._wakeup_w, False)
        os.set_blocking(self._wakeup_r, False)
        # A burst of signals may fill the pipe; the handler has recorded each signal anyway, so stay quiet then.
        signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            # The handler only records the signal; the loop acts on it (a handler must do no work itself).
            signal.signal(signum, lambda s, _frame: self._signals.add(s))
        self.selector.register(self._wakeup_r, selectors.EVENT_READ, ("signal", None, None))

    def _add(self, spec: ChildSpec) -> None:
        child = self.children[spec.name] = Child(spec)
        self._spawn(child)

    def _spawn(self, child: Child) -> None:
        """Start a new incarnation with a fresh channel; give it what its registration says it needs."""
        assert child.incarnation is None, f"{child.name} has a running incarnation"
        if child.failed:
            child.restarts += 1
            child.failed = False
        child.restart_at = None
        ours, theirs = Channel.pair()
        listen = self.sockets.get(child.name)
        inherited = self._fds_to_close_in_child(ours, child)
        process = _FORK.Process(target=_child_main, name=f"rctmon-{child.name}",
                                args=(child.spec, self.config, theirs, listen[1] if listen else None, inherited))
        process.start()
        theirs.close()
        now = time.monotonic()
        child.incarnations += 1
        inc = child.incarnation = Incarnation(child.incarnations, process, ours, now, now)
        self.selector.register(ours.fileno(), selectors.EVENT_READ, ("channel", child, inc))
        self.selector.register(process.sentinel, selectors.EVENT_READ, ("exit", child, inc))
        log.info("started %s (pid %d)", child.name, process.pid)
        self._health_dirty = True
        spec = child.spec
        if spec.readings:
            if self.inventory is not None:
                self._send(child, self.inventory)
            self._send(child, self.device)
            if spec.replay_latest and self.latest:
                latest = ReadingBatch(tuple(self.latest.values()), seq=0)
                if not ours.send(latest):
                    child.dropped[SEND_FAILED] += len(latest.readings)
            if spec.replay_latest:
                for events in self.recent_events.replay():
                    if not ours.send(events):
                        child.dropped[SEND_FAILED] += len(events.events)
            self._send_backlog(child)
        if spec.health:
            # Last, so that the child has everything above before it sees its first Health: the endpoint answers
            # only once it has that, and never shows a restart count or a value the supervisor knows better.
            self._send(child, self.health())

    def _fds_to_close_in_child(self, own: Channel, child: Child) -> list[int]:
        """Return the supervisor's descriptors a forked child must not keep (channels, sentinels, others' ports)."""
        fds = [self._wakeup_r, self._wakeup_w, own.fileno()]
        for other in self.children.values():
            if other.incarnation is not None:
                fds += [other.incarnation.channel.fileno(), other.incarnation.process.sentinel]
        fds += [sock.fileno() for name, (_, sock) in self.sockets.items() if name != child.name]
        try:
            fds.append(self.selector.fileno())
        except (AttributeError, ValueError):
            pass
        return fds

    def _shutdown(self) -> None:
        """Stop the children that produce readings first (their last ones still get routed), then the rest."""
        self.notifier.stopping()
        log.info("stopping")
        producers = [c for c in self.children.values() if not c.spec.readings]
        for child in producers:
            self._request_stop(child)
        self._run_until(lambda: all(c.incarnation is None for c in producers), time.monotonic() + STOP_GRACE / 2)
        for child in self.children.values():
            self._request_stop(child)
        self._run_until(lambda: all(c.incarnation is None for c in self.children.values()),
                        time.monotonic() + STOP_GRACE)
        for child in self.children.values():
            if child.incarnation is not None:
                log.warning("%s did not stop in time; killing it", child.name)
                child.incarnation.process.kill()
                child.incarnation.process.join(2.0)
        log.info("stopped")

    def _run_until(self, done: Callable[[], bool], deadline: float) -> None:
        while not done() and time.monotonic() < deadline:
            self._loop_once(max_wait=min(0.2, max(0.0, deadline - time.monotonic())))

    def _request_stop(self, child: Child) -> None:
        """Send Stop to the child's incarnation (once); it is killed if it has not exited by STOP_GRACE."""
        inc = child.incarnation
        if inc is None or inc.stop_deadline is not None:
            return
        inc.stop_deadline = time.monotonic() + STOP_GRACE
        self._send(child, Stop())  # refused: it is killed when the deadline passes

    def _close(self) -> None:
        for child in self.children.values():
            if child.incarnation is not None:
                child.incarnation.channel.close()
        for _, sock in self.sockets.values():
            sock.close()
        signal.set_wakeup_fd(-1)
        self.selector.close()
        os.close(self._wakeup_r)
        os.close(self._wakeup_w)

    # --- the loop -------------------------------------------------------------------------------------------------

    def _loop_once(self, max_wait: float = 60.0) -> None:
        """Wait for the next message, exit, signal or timer (timers bound the wait; nothing polls) and handle it."""
        self._update_write_interest()
        for key, _events in self.selector.select(self._next_timeout(max_wait)):
            kind, child, inc = key.data
            if kind == "signal":
                self._drain_wakeup()
            elif child.incarnation is not inc:
                continue  # an incarnation handled earlier in this same round; nothing of it is current
            elif kind == "channel":
                self._read_channel(child, inc)
            else:
                self._on_exit(child, inc)
        self._handle_signals()
        self._tick()

    def _next_timeout(self, max_wait: float) -> float:
        now = time.monotonic()
        waits = [max_wait] + ([self._watchdog.remaining()] if self._watchdog is not None else [])
        gap = HEALTH_MIN_GAP if self._health_dirty else HEALTH_INTERVAL
        waits.append(self._health_sent + gap - now)
        if self._reload_at is not None and not self.stopping:
            waits.append(self._reload_at - now)
        for child in self.children.values():
            inc = child.incarnation
            if child.restart_at is not None:
                if not self.stopping:  # no restarts while stopping: a due one must not spin the loop
                    waits.append(child.restart_at - now)
            elif inc is not None and not inc.killed:
                waits.append((inc.stop_deadline or inc.last_heard + HEARTBEAT_TIMEOUT) - now)
        return max(0.0, min(waits))

    def _update_write_interest(self) -> None:
        for child in self.children.values():
            inc = child.incarnation
            if inc is None or inc.channel.closed:
                continue
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if inc.channel.pending_bytes else 0)
            if self.selector.get_key(inc.channel.fileno()).events != events:
                self.selector.modify(inc.channel.fileno(), events, ("channel", child, inc))

    def _read_channel(self, child: Child, inc: Incarnation) -> None:
        channel = inc.channel
        if channel.closed:
            return
        channel.flush()
        try:
            messages = channel.receive()
        except ChannelClosed:
            self._unregister(channel.fileno())  # the exit follows through the sentinel
            return
        if messages:
            inc.last_heard = time.monotonic()
        for message in messages:
            handler = self._handlers.get(type(message))
            if handler is None:
                log.warning("unexpected message from %s: %r", child.name, type(message).__name__)
            else:
                handler(self, child, message)

    def _unregister(self, fd: int) -> None:
        try:
            self.selector.unregister(fd)
        except (KeyError, ValueError):
            pass

    def _drain_wakeup(self) -> None:
        try:
            while os.read(self._wakeup_r, 512):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _handle_signals(self) -> None:
        pending, self._signals = self._signals, set()
        if pending & {signal.SIGTERM, signal.SIGINT} and not self.stopping:
            log.info("received %s", signal.Signals(max(pending - {signal.SIGHUP})).name)
            self.stopping = True
        if signal.SIGHUP in pending and self._reload_at is None and not self.stopping:
            self._reload_at = time.monotonic() + RELOAD_SETTLE

    def _tick(self) -> None:
        now = time.monotonic()
        if self._reload_at is not None and now >= self._reload_at and not self.stopping:
            self._reload_at = None
            self._reload()
        for child in list(self.children.values()):
            inc = child.incarnation
            if child.restart_at is not None and now >= child.restart_at and not self.stopping:
                self._spawn(child)
            elif inc is not None and not inc.killed:
                if inc.stop_deadline is not None and now >= inc.stop_deadline:
                    log.warning("%s did not stop within %.0f s; killing it", child.name, STOP_GRACE)
                    self._kill(inc)
                elif inc.stop_deadline is None and now - inc.last_heard > HEARTBEAT_TIMEOUT:
                    log.error("%s sent nothing for %.0f s; killing it", child.name, now - inc.last_heard)
                    self._kill(inc)
        if now - self._health_sent >= (HEALTH_MIN_GAP if self._health_dirty else HEALTH_INTERVAL):
            self._send_health()
            if self.notifier.address:  # the same tick, not a timer of its own: one wake-up fewer
                self.notifier.status(self.status_line())
        if self._watchdog is not None and self._watchdog.due():
            self.notifier.watchdog()

    @staticmethod
    def _kill(inc: Incarnation) -> None:
        inc.killed = True
        inc.process.kill()  # its exit arrives through the sentinel like any other

    # --- child exits and restarts ----------------------------------------------------------------------------------

    def _on_exit(self, child: Child, inc: Incarnation) -> None:
        self._read_channel(child, inc)  # the last messages it managed to send (an Ack, a final heartbeat)
        self._unregister(inc.channel.fileno())
        self._unregister(inc.process.sentinel)
        inc.channel.close()
        inc.process.join(0.5)  # the sentinel is readable: the process has exited, this only reaps it
        code = inc.process.exitcode
        try:
            inc.process.close()  # its sentinel now, not whenever the object is collected
        except ValueError:
            pass
        child.incarnation = None
        self._fold_reported_drops(child)
        self._health_dirty = True
        lived = time.monotonic() - inc.spawned_at
        asked = inc.stop_deadline is not None
        if self.stopping or asked:
            log.info("%s exited (status %s)", child.name, code)
        if self.stopping:
            return
        if not child.wanted:
            self._remove(child)
        elif asked:
            self._spawn(child)  # replaced by a reload: the new incarnation runs on the new configuration
        else:
            child.failed = True
            child.failures = 0 if lived > STABLE_AFTER else child.failures + 1
            delay = min(RESTART_DELAY_MAX, RESTART_DELAY_MIN * 2 ** max(0, child.failures - 1))
            log.error("%s died (status %s) after %.1f s; restarting in %.2f s", child.name, code, lived, delay)
            child.restart_at = time.monotonic() + delay

    def _fold_reported_drops(self, child: Child) -> None:
        """Keep what an ended incarnation reported dropping: its successor starts counting from zero."""
        reported = child.stats.get("readings_dropped")
        if isinstance(reported, dict) and reported:
            for reason, count in reported.items():
                child.dropped[str(reason)] += int(count)
            child.stats = {key: value for key, value in child.stats.items() if key != "readings_dropped"}

    def _remove(self, child: Child) -> None:
        """Forget a child whose exporter was disabled, and close its listening socket."""
        del self.children[child.name]
        kept = self.sockets.pop(child.name, None)
        if kept is not None:
            kept[1].close()
        log.info("%s is disabled and stopped", child.name)

    # --- message handlers ------------------------------------------------------------------------------------------

    def _on_batch(self, child: Child, batch: ReadingBatch) -> None:
        self.seq += 1
        batch = ReadingBatch(batch.readings, self.seq)
        self.readings_window.append((time.monotonic(), len(batch.readings)))
        if batch.readings:
            self.readings_routed += len(batch.readings)
            self.last_reading_ns = batch.readings[-1][2]
            self._health_dirty = True
        self.latest.update((reading[0], reading) for reading in batch.readings)
        self._route(batch)

    def _on_events(self, child: Child, events: InverterEvents) -> None:
        """Number the collector's events like a batch, remember them for replay, and route them like readings."""
        self.seq += 1
        numbered = InverterEvents(events.events, events.new, self.seq, events.store)
        self.recent_events.add(numbered)
        self._route(numbered)

    def _route(self, message: Routed) -> None:
        """Hand a numbered message to every reader: into the backlog of those that acknowledge, else directly."""
        for reader in self._readers():
            if reader.spec.acknowledges:
                reader.backlog.append(message)
                reader.backlog_readings += _size(message)
                self._trim_backlog(reader)
                self._send_backlog(reader)
            elif reader.incarnation is not None:
                channel = reader.incarnation.channel
                if not channel.send(message) and not channel.closed:
                    reader.dropped[SEND_FAILED] += _size(message)  # a closed one: its successor gets the latest

    def _on_backfill(self, child: Child, batch: BackfillBatch) -> None:
        """Number what the backfill read and keep it for the children that keep the history record, until acked."""
        self.seq += 1
        batch = dataclasses.replace(batch, seq=self.seq)
        for reader in self.children.values():
            if reader.spec.history:
                reader.backlog.append(batch)
                reader.backlog_readings += len(batch.lines)
                self._trim_backlog(reader)
                self._send_backlog(reader)

    def _trim_backlog(self, child: Child) -> None:
        while child.backlog_readings > BACKLOG_MAX_READINGS and len(child.backlog) > 1:
            old = child.backlog.popleft()
            child.backlog_readings -= _size(old)
            child.dropped[BACKLOG_FULL] += _size(old)

    def _send_backlog(self, child: Child) -> None:
        """Write every batch the current incarnation has not been sent yet (while its channel takes them)."""
        inc = child.incarnation
        if inc is None or inc.channel.closed:
            return
        if inc.resend_from is not None:
            if not inc.channel.send(Ack(inc.resend_from)):  # marks where the batches sent again begin
                return
            inc.sent_upto, inc.resend_from = inc.resend_from, None
        for batch in child.backlog:
            if batch.seq <= inc.sent_upto:
                continue
            if not inc.channel.send(batch):
                return  # the channel is full; the rest goes when the child catches up
            inc.sent_upto = batch.seq

    def _on_ack(self, child: Child, ack: Ack) -> None:
        while child.backlog and child.backlog[0].seq <= ack.seq:
            child.backlog_readings -= _size(child.backlog.popleft())
        if ack.resend and child.incarnation is not None:
            child.incarnation.resend_from = ack.seq
        self._send_backlog(child)

    def _on_inventory(self, child: Child, inventory: Inventory) -> None:
        if inventory != self.inventory:
            log.info("inventory: %s%s", inventory.summary(), "" if inventory.complete else " (incomplete)")
        self.inventory = inventory
        self._health_dirty = True
        self._broadcast(inventory)

    def _on_device_status(self, child: Child, status: DeviceStatus) -> None:
        if status.up != self.device.up:
            log.info("inverter %s%s", "connected" if status.up else "unreachable",
                     f": {status.reason}" if status.reason else "")
        self.device = status
        self._health_dirty = True
        self._broadcast(status)
        self.notifier.status(self.status_line())

    def _on_heartbeat(self, child: Child, beat: Heartbeat) -> None:
        # Counters ride on the periodic Health refresh; readings themselves mark a change.
        child.rss_bytes, child.cpu_seconds, child.stats = beat.rss_bytes, beat.cpu_seconds, beat.stats

    def _on_started(self, child: Child, started: Started) -> None:
        if child.incarnation is not None:
            child.incarnation.started = True
        self._health_dirty = True
        if not self.ready_sent and all(c.up for c in self.children.values() if c.wanted):
            self.ready_sent = True
            self.notifier.ready(self.status_line())
            log.info("ready")

    _handlers: dict[type, Callable[[Supervisor, Child, Any], None]] = {
        ReadingBatch: _on_batch,
        BackfillBatch: _on_backfill,
        InverterEvents: _on_events,
        Ack: _on_ack,
        Inventory: _on_inventory,
        DeviceStatus: _on_device_status,
        Heartbeat: _on_heartbeat,
        Started: _on_started,
    }

    def _readers(self) -> list[Child]:
        return [c for c in self.children.values() if c.spec.readings]

    def _broadcast(self, message: object) -> None:
        for reader in self._readers():
            self._send(reader, message)

    @staticmethod
    def _send(child: Child, message: object) -> bool:
        """Send a message other than readings to the child's incarnation; count it when an open channel refuses it.

        A closed channel is not counted: its successor gets the inventory, the device status and Health at its
        start, and a Stop is moot. A refused Inventory or DeviceStatus leaves the child on the previous one until
        the next change, a refused Health is replaced within HEALTH_INTERVAL, a refused Stop ends in a kill.
        """
        inc = child.incarnation
        if inc is None:
            return False
        if inc.channel.send(message):
            return True
        if not inc.channel.closed:
            # a kind added later without its row is still counted, by its class name, rather than a KeyError here
            child.messages_dropped[MESSAGE_KINDS.get(type(message), type(message).__name__)] += 1
        return False

    # --- health and status ------------------------------------------------------------------------------------------

    def health(self) -> Health:
        """Return every supervised process's latest figures, and the supervisor's own (see health_metrics.py)."""
        children = [c for c in self.children.values() if c.wanted]
        rss, cpu = resource_usage()
        own: dict[str, Any] = {
            "build_info": {__version__: 1},
            "up": {SUPERVISOR: 1, **{c.name: int(c.up) for c in children}},
            "restarts": {SUPERVISOR: 0, **{c.name: c.restarts for c in children}},
            "resident_memory_bytes": {SUPERVISOR: rss, **{c.name: c.rss_bytes for c in children}},
            "cpu_seconds": {SUPERVISOR: cpu, **{c.name: c.cpu_seconds for c in children}},
            "readings_dropped": {(c.name, reason): count for c in children
                                 for reason, count in self._dropped(c).items()},
            "messages_dropped": {(c.name, kind): count for c in children
                                 for kind, count in self._messages_dropped(c).items()},
            "device_up": int(self.device.up),
            "inventory_complete": int(self.inventory is not None and self.inventory.complete),
            "readings": self.readings_routed,
            "last_reading_seconds": self.last_reading_ns / 1e9,
        }
        stats: dict[str, Stats] = {c.name: c.stats for c in children}
        stats[SUPERVISOR] = own
        return Health(stats, self.inventory)

    @staticmethod
    def _dropped(child: Child) -> dict[str, int]:
        """Return the child's dropped readings by reason: every reason that applies to it, counted or not."""
        spec = child.spec
        reasons = list(spec.drops)
        if spec.readings:
            reasons.append(BACKLOG_FULL if spec.acknowledges else SEND_FAILED)
        if spec.replay_latest:
            reasons.append(SEND_FAILED)
        result = dict.fromkeys(reasons, 0)
        result.update(child.dropped)
        reported = child.stats.get("readings_dropped")
        if isinstance(reported, dict):
            for reason, count in reported.items():
                result[str(reason)] = result.get(str(reason), 0) + int(count)
        return result

    @staticmethod
    def _messages_dropped(child: Child) -> dict[str, int]:
        """Return the child's refused messages by kind: every kind it is sent, counted or not."""
        kinds = [kind for kind, needed in (("inventory", child.spec.readings), ("device_status", child.spec.readings),
                                           ("health", child.spec.health), ("stop", True)) if needed]
        return {**dict.fromkeys(kinds, 0), **child.messages_dropped}

    def _send_health(self) -> None:
        self._health_dirty = False
        self._health_sent = time.monotonic()
        readers = [c for c in self.children.values() if c.spec.health and c.incarnation is not None]
        if readers:
            health = self.health()
            for child in readers:
                self._send(child, health)

    def readings_per_minute(self) -> int:
        cutoff = time.monotonic() - 60.0
        while self.readings_window and self.readings_window[0][0] < cutoff:
            self.readings_window.popleft()
        return sum(n for _, n in self.readings_window)

    def status_line(self) -> str:
        """Return the one-line summary systemd shows: inverter, connection, reading rate, and the children's own."""
        name = self.inventory.name if self.inventory and self.inventory.name else self.config.device.host
        parts = [f"inverter {name} {'connected' if self.device.up else 'disconnected'}",
                 f"{self.readings_per_minute()} readings/min"]
        parts += [c.spec.status(c.stats) for c in self.children.values() if c.spec.status is not None]
        down = [c.name for c in self.children.values() if c.wanted and c.incarnation is None]
        if down:
            parts.append("restarting: " + ", ".join(down))
        return "; ".join(parts)

    # --- reload -------------------------------------------------------------------------------------------------------

    def _reload(self) -> None:
        """Re-read the configuration; replace the children whose part of it changed; on error keep the old one.

        A child is replaced (stopped, then started on the new configuration, not counted as a restart) only when
        its own settings (its registration's `settings`), its listening address or the logging section changed;
        every other child runs on untouched. Newly enabled children start, disabled ones stop.
        """
        if not self.config_path:
            log.warning("SIGHUP: no configuration file to reload")
            return
        try:
            new = _load_for_reload(self.config_path)
            enabled = [spec for spec in self.specs if spec.enabled(new)]
            sockets = self._bind_sockets(new, enabled, self.sockets)
        except (ConfigError, OSError) as exc:
            log.error("SIGHUP: keeping the running configuration: %s", exc)
            return
        except Exception:  # noqa: BLE001 - a bug in reading the file must not end the daemon
            log.exception("SIGHUP: keeping the running configuration: reading it failed unexpectedly")
            return
        try:
            setup_logging(new, *self.log_flags)
        except (ValueError, TypeError, AttributeError, ImportError) as exc:
            log.error("SIGHUP: logging section invalid, keeping the running logging set-up: %s", exc)
        for warning in new.warnings:
            log.warning("%s", warning)
        old, self.config = self.config, new
        rebound = {name for name, kept in sockets.items() if self.sockets.get(name) is not kept}
        for name, (_, sock) in self.sockets.items():
            if name in rebound:
                sock.close()  # the running incarnation keeps its own copy until it is replaced
            elif name not in sockets:
                sockets[name] = self.sockets[name]  # a child being disabled: closed once it has exited
        self.sockets = sockets
        replaced, started, stopped = [], [], []
        for spec in self.specs:
            child = self.children.get(spec.name)
            if spec in enabled and child is None:
                self._add(spec)
                started.append(spec.name)
            elif spec in enabled and child is not None:
                if not child.wanted or spec.name in rebound or _changed(spec, old, new):
                    child.wanted = True
                    self._replace(child)
                    replaced.append(spec.name)
            elif child is not None and child.wanted:
                child.wanted = False
                self._retire(child)
                stopped.append(spec.name)
        log.info("SIGHUP: configuration reloaded from %s; replaced: %s; started: %s; stopped: %s", self.config_path,
                 ", ".join(replaced) or "none", ", ".join(started) or "none", ", ".join(stopped) or "none")

    def _replace(self, child: Child) -> None:
        """Have the child run on the current configuration: stop its incarnation (the next one follows its exit)."""
        if child.incarnation is not None:
            self._request_stop(child)
        elif child.restart_at is not None:
            child.restart_at = time.monotonic()  # waiting to restart after a failure: start it on the new one now

    def _retire(self, child: Child) -> None:
        """Stop a child whose exporter was disabled; it is forgotten once it has exited."""
        if child.incarnation is not None:
            self._request_stop(child)
        else:
            self._remove(child)


def _changed(spec: ChildSpec, old: Config, new: Config) -> bool:
    return bool(spec.settings(old) != spec.settings(new) or old.logging != new.logging)


def _load_for_reload(path: str) -> Config:
    """Load the configuration file for a reload, and check that this machine can run it (rctmon.preflight).

    An empty file is refused: an editor or a deployment tool may truncate the file before writing it again, and
    read at that moment it would load as every default. The checks (modules, certificates, the spool directory,
    ports and spools held by other processes) run in a fork, bounded so that the loop, and with it the systemd
    watchdog, is never held up for long.
    """
    from rctmon.preflight import preflight

    config = config_module.load(path, refuse_empty=True)
    problems = preflight(config, clashes=True, timeout=RELOAD_PREFLIGHT_TIMEOUT)
    if problems:
        raise ConfigError(problems, source=path)
    return config


def _share_with_children() -> None:
    """Load what every child needs before forking, so that they share one copy of it.

    Each child reads the catalog (and so rctclient's registry of some 900 objects) and runs the asyncio loop of
    rctmon.child. Loaded here, their pages are shared copy-on-write by all children instead of copied into each;
    `gc.freeze` keeps the collector from touching (and so copying) those objects later. This is data and the
    standard library, not a library that could misbehave, and none of it starts a thread.
    """
    import gc

    import rctmon.catalog  # noqa: F401
    import rctmon.child  # noqa: F401

    gc.freeze()


def _child_main(spec: ChildSpec, config: Config, channel: Channel, listen_socket: socket.socket | None,
                inherited: list[int]) -> None:
    """Entry point of every child after fork: shed what belongs to the supervisor, then run the child's job."""
    signal.set_wakeup_fd(-1)
    for fd in inherited:
        if fd != channel.fileno():
            try:
                os.close(fd)
            except OSError:
                pass
    become_child(spec.name)
    from rctmon.child import ChildFailed, run_child

    try:
        run_child(spec, config, channel, listen_socket)
    except ChildFailed:
        os._exit(1)  # the reason is in the log already
    except Exception:  # noqa: BLE001 - the supervisor restarts us; leave the reason in the log
        logging.getLogger(f"rctmon.{spec.name}").exception("%s crashed", spec.name)
        os._exit(1)
    finally:
        channel.close()


def run_daemon(config: Config, config_path: str | None = None, debug: bool = False,
               frame_debug: bool = False) -> int:
    """Run the daemon in the foreground until SIGTERM or SIGINT."""
    try:
        return Supervisor(config, config_path, debug=debug, frame_debug=frame_debug).run()
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
