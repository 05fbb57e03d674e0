"""The supervisor: starts the children, routes their messages, watches them and restarts them.

One single-threaded loop waits on every child's channel, every child's process sentinel and a signal pipe at once
(`selectors`): messages, exits, signals and timers are all handled in one place, with no polling and no threads.
Having no threads is what makes `fork` safe here, and fork is what keeps memory low: children share the
supervisor's pages copy-on-write and import only what their own job needs (see docs/architecture.md).

Readings flow collector -> supervisor -> every exporter. Each exporter has a bounded backlog here. Batches for an
exporter that acknowledges (influxdb, mqtt) leave its backlog only on its `Ack`, so a batch is never lost between
processes: a restarted child is replayed everything it had not made durable. Batches for the prometheus child
leave the backlog once written to its channel.
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
from typing import Any, Callable

from rctmon import config as config_module
from rctmon.channel import Channel, ChannelClosed
from rctmon.config import Config, ConfigError
from rctmon.inventory import Inventory
from rctmon.logsetup import setup_logging
from rctmon.messages import (Ack, CollectorStats, DeviceStatus, Health, Heartbeat, InfluxStats, MqttStats,
                             ProcessHealth, Reading, ReadingBatch, Started, Stop)
from rctmon.proc import Every, become_child, resource_usage, set_title
from rctmon.systemd import Notifier

log = logging.getLogger("rctmon.supervisor")

HEARTBEAT_TIMEOUT = 20.0  # seconds of silence (four heartbeats) after which a child is considered hung and killed
RESTART_DELAY_MIN = 0.25  # first restart after this many seconds, doubling per consecutive failure
RESTART_DELAY_MAX = 30.0
STABLE_AFTER = 60.0  # a child that ran this long has its restart delay reset
HEALTH_INTERVAL = 5.0  # seconds between Health refreshes to the prometheus child while nothing changes
HEALTH_MIN_GAP = 1.0  # a change (readings, a restart, the device) is sent this soon, coalesced
STATUS_INTERVAL = 5.0  # seconds between systemd STATUS= refreshes
STOP_GRACE = 6.0  # seconds children get to exit after Stop before they are killed
BACKLOG_MAX_READINGS = 1_000_000  # per exporter; beyond it the oldest batches are dropped and counted
_FORK = multiprocessing.get_context("fork")


def _run_collector(config: Config, channel: Channel, extra: Any) -> None:
    from rctmon.collector.process import run

    run(config, channel)


def _run_prometheus(config: Config, channel: Channel, extra: Any) -> None:
    from rctmon.exporters.prometheus import run

    run(config, channel, extra)


def _run_influxdb(config: Config, channel: Channel, extra: Any) -> None:
    from rctmon.exporters.influxdb import run

    run(config, channel)


def _run_mqtt(config: Config, channel: Channel, extra: Any) -> None:
    from rctmon.exporters.mqtt import run

    run(config, channel)


@dataclass(frozen=True)
class ChildSpec:
    """What kind of child this is and how the supervisor treats it."""

    name: str
    main: Callable[[Config, Channel, Any], None]
    is_exporter: bool  # receives readings, inventory and device status
    acknowledges: bool  # its backlog is trimmed by Ack, not by sending
    enabled: Callable[[Config], bool]
    #: A new incarnation first gets the latest reading of every object: a latest-value view (the endpoint, MQTT)
    #: would otherwise lack slow and static values until they are next polled, up to an hour later.
    wants_latest: bool = False


CHILD_SPECS: tuple[ChildSpec, ...] = (
    ChildSpec("collector", _run_collector, False, False, lambda c: True),
    ChildSpec("prometheus", _run_prometheus, True, False, lambda c: c.prometheus.enable, wants_latest=True),
    ChildSpec("influxdb", _run_influxdb, True, True, lambda c: c.influxdb.enable),
    ChildSpec("mqtt", _run_mqtt, True, True, lambda c: c.mqtt.enable, wants_latest=True),
)


@dataclass
class Child:
    """One supervised child and everything the supervisor keeps for it across incarnations."""

    spec: ChildSpec
    process: Any | None = None  # multiprocessing Process of the current incarnation
    channel: Channel | None = None
    started: bool = False  # the current incarnation sent Started
    stopping: bool = False  # asked to stop (shutdown or reload); its exit is not a failure
    planned_restart: bool = False  # the next start follows a reload, not a failure: not counted as a restart
    spawned_at: float = 0.0
    last_heard: float = 0.0
    restart_at: float | None = None
    failures: int = 0  # consecutive failed incarnations, for the backoff
    restarts: int = 0
    dropped: int = 0  # readings dropped from the backlog
    backlog: collections.deque[ReadingBatch] = field(default_factory=collections.deque)
    backlog_readings: int = 0
    sent_upto: int = 0  # highest seq written to the current incarnation's channel
    rss_bytes: int = 0
    cpu_seconds: float = 0.0
    stats: Any = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()


class Supervisor:
    """Runs the daemon until SIGTERM or SIGINT; see the module docstring."""

    def __init__(self, config: Config, config_path: str | None = None,
                 notifier: Notifier | None = None, specs: tuple[ChildSpec, ...] = CHILD_SPECS,
                 debug: bool = False, frame_debug: bool = False) -> None:
        self.config = config
        self.log_flags = (debug, frame_debug)
        self.specs = specs
        self.config_path = config_path
        self.notifier = notifier or Notifier()
        self.selector = selectors.DefaultSelector()
        self.children: dict[str, Child] = {}
        self.listen_socket: socket.socket | None = None
        self.inventory: Inventory | None = None
        self.device: DeviceStatus = DeviceStatus(up=False, reason="starting")
        self.seq = 0
        self.latest: dict[int, Reading] = {}  # object id -> latest reading, for new latest-value exporters
        # Counted here rather than taken from the collector's heartbeat: current at once, and a collector restart
        # does not reset the counter.
        self.readings_routed = 0
        self.last_reading_ns = 0
        self._health_dirty = False
        self._health_sent = 0.0
        self.ready_sent = False
        self.stopping = False
        self.pending_signals: list[int] = []
        self.readings_window: collections.deque[tuple[float, int]] = collections.deque()
        self._wakeup_r, self._wakeup_w = os.pipe()
        self._timers = {"status": Every(STATUS_INTERVAL)}
        if self.notifier.watchdog_interval:
            self._timers["watchdog"] = Every(self.notifier.watchdog_interval)

    # --- start and stop -----------------------------------------------------------------------------------------

    def run(self) -> int:
        """Run until told to stop; return the exit status."""
        set_title("supervisor")
        if self.config.prometheus.enable:
            self.listen_socket = self._bind(self.config)  # fail before any child starts when the port is taken
        self._install_signals()
        _share_with_children()
        for spec in self.specs:
            if spec.enabled(self.config):
                self.children[spec.name] = Child(spec)
                self._spawn(self.children[spec.name])
        log.info("rctmon supervisor started (pid %d), children: %s", os.getpid(), ", ".join(self.children))
        try:
            while not self.stopping:
                self._loop_once()
            self._shutdown()
        finally:
            self._close()
        return 0

    @staticmethod
    def _bind(config: Config) -> socket.socket:
        from rctmon.exporters.listen import bind_endpoint

        return bind_endpoint(config.prometheus.bind_address, config.prometheus.bind_port)

    def _install_signals(self) -> None:
        os.set_blocking(self._wakeup_w, False)
        os.set_blocking(self._wakeup_r, False)
        signal.set_wakeup_fd(self._wakeup_w)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            # The handler only records the signal; the loop acts on it (a handler must do no work itself).
            signal.signal(signum, lambda s, _frame: self.pending_signals.append(s))
        self.selector.register(self._wakeup_r, selectors.EVENT_READ, ("signal", None))

    def _spawn(self, child: Child) -> None:
        """Start a new incarnation with a fresh channel; replay its backlog."""
        ours, theirs = Channel.pair()
        inherited = self._fds_to_close_in_child(ours, child)
        extra = self.listen_socket if child.name == "prometheus" else None
        process = _FORK.Process(target=_child_main, name=f"rctmon-{child.name}",
                                args=(child.spec, self.config, theirs, extra, inherited))
        process.start()
        theirs.close()
        child.process, child.channel = process, ours
        child.started, child.stopping, child.restart_at = False, False, None
        child.spawned_at = child.last_heard = time.monotonic()
        child.sent_upto = 0
        self.selector.register(ours.fileno(), selectors.EVENT_READ, ("channel", child))
        self.selector.register(process.sentinel, selectors.EVENT_READ, ("exit", child))
        log.info("started %s (pid %d)", child.name, process.pid)
        self._health_dirty = True
        if child.spec.is_exporter:
            if self.inventory is not None:
                ours.send(self.inventory)
            ours.send(self.device)
            if child.spec.wants_latest and self.latest:
                ours.send(ReadingBatch(tuple(self.latest.values()), seq=0))
            self._send_backlog(child)

    def _fds_to_close_in_child(self, own: Channel, child: Child) -> list[int]:
        """Return the supervisor's descriptors a forked child must not keep (channels, sentinels, the port)."""
        fds = [self._wakeup_r, self._wakeup_w, own.fileno()]
        fds += [c.channel.fileno() for c in self.children.values() if c.channel and not c.channel.closed]
        fds += [c.process.sentinel for c in self.children.values() if c.process is not None and c.alive]
        if self.listen_socket is not None and child.name != "prometheus":
            fds.append(self.listen_socket.fileno())
        try:
            fds.append(self.selector.fileno())
        except (AttributeError, ValueError):
            pass
        return fds

    def _shutdown(self) -> None:
        """Stop the collector first (its last readings still get routed), then the exporters; kill stragglers."""
        self.notifier.stopping()
        log.info("stopping")
        collector = self.children.get("collector")
        if collector:
            self._request_stop(collector)
            self._run_until(lambda: not collector.alive, time.monotonic() + STOP_GRACE / 2)
        for child in self.children.values():
            self._request_stop(child)
        self._run_until(lambda: not any(c.alive for c in self.children.values()), time.monotonic() + STOP_GRACE)
        for child in self.children.values():
            if child.alive and child.process is not None:
                log.warning("%s did not stop in time; killing it", child.name)
                child.process.kill()
        for child in self.children.values():
            if child.process is not None:
                child.process.join(2.0)
        log.info("stopped")

    def _run_until(self, done: Callable[[], bool], deadline: float) -> None:
        while not done() and time.monotonic() < deadline:
            self._loop_once(max_wait=min(0.2, max(0.0, deadline - time.monotonic())))

    def _request_stop(self, child: Child, restart: bool = False) -> None:
        """Ask a child to exit; with `restart`, start it again (with the current configuration) once it has."""
        child.stopping = True
        child.planned_restart = restart
        if child.alive and child.channel is not None:
            child.restart_at = None
            child.channel.send(Stop())
        else:  # between incarnations: start the next one now, or never
            child.restart_at = time.monotonic() if restart else None

    def _close(self) -> None:
        for child in self.children.values():
            if child.channel is not None:
                child.channel.close()
        if self.listen_socket is not None:
            self.listen_socket.close()
        signal.set_wakeup_fd(-1)
        self.selector.close()
        os.close(self._wakeup_r)
        os.close(self._wakeup_w)

    # --- the loop -------------------------------------------------------------------------------------------------

    def _loop_once(self, max_wait: float = 60.0) -> None:
        """Wait for the next message, exit, signal or timer (timers bound the wait; nothing polls) and handle it."""
        self._update_write_interest()
        for key, _events in self.selector.select(self._next_timeout(max_wait)):
            kind, child = key.data
            if kind == "channel":
                self._read_channel(child)
            elif kind == "exit":
                self._on_exit(child)
            else:
                self._drain_wakeup()
        self._handle_signals()
        self._tick()

    def _next_timeout(self, max_wait: float) -> float:
        waits = [max_wait] + [t.remaining() for t in self._timers.values()]
        gap = HEALTH_MIN_GAP if self._health_dirty else HEALTH_INTERVAL
        waits.append(max(0.0, self._health_sent + gap - time.monotonic()))
        now = time.monotonic()
        waits += [max(0.0, c.restart_at - now) for c in self.children.values() if c.restart_at is not None]
        return min(waits)

    def _update_write_interest(self) -> None:
        for child in self.children.values():
            channel = child.channel
            if channel is None or channel.closed:
                continue
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if channel.pending_bytes else 0)
            if self.selector.get_key(channel.fileno()).events != events:
                self.selector.modify(channel.fileno(), events, ("channel", child))

    def _read_channel(self, child: Child) -> None:
        channel = child.channel
        if channel is None or channel.closed:
            return
        channel.flush()
        try:
            messages = channel.receive()
        except ChannelClosed:
            self._forget_channel(child)
            return
        if messages:
            child.last_heard = time.monotonic()
        for message in messages:
            handler = self._handlers.get(type(message))
            if handler is None:
                log.warning("unexpected message from %s: %r", child.name, type(message).__name__)
            else:
                handler(self, child, message)

    def _forget_channel(self, child: Child) -> None:
        if child.channel is not None:
            try:
                self.selector.unregister(child.channel.fileno())
            except (KeyError, ValueError):
                pass
            child.channel.close()

    def _drain_wakeup(self) -> None:
        try:
            while os.read(self._wakeup_r, 512):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _handle_signals(self) -> None:
        while self.pending_signals:
            signum = self.pending_signals.pop(0)
            if signum == signal.SIGHUP:
                self._reload()
            elif not self.stopping:
                log.info("received %s", signal.Signals(signum).name)
                self.stopping = True

    def _tick(self) -> None:
        now = time.monotonic()
        for child in self.children.values():
            if child.restart_at is not None and now >= child.restart_at and not self.stopping:
                if not child.planned_restart:
                    child.restarts += 1
                child.planned_restart = False
                self._spawn(child)
            elif (child.alive and child.process is not None and not child.stopping
                  and now - child.last_heard > HEARTBEAT_TIMEOUT):
                log.error("%s sent nothing for %.0f s; killing it", child.name, now - child.last_heard)
                child.process.kill()
        if now - self._health_sent >= (HEALTH_MIN_GAP if self._health_dirty else HEALTH_INTERVAL):
            self._send_health()
        if self._timers["status"].due():
            self.notifier.status(self.status_line())
        watchdog = self._timers.get("watchdog")
        if watchdog is not None and watchdog.due():
            self.notifier.watchdog()

    # --- child exits and restarts ----------------------------------------------------------------------------------

    def _on_exit(self, child: Child) -> None:
        process = child.process
        if process is None:
            return
        process.join(0.5)
        try:
            self.selector.unregister(process.sentinel)
        except (KeyError, ValueError):
            pass
        self._read_channel(child)  # the last messages it managed to send (an Ack, a final batch)
        self._forget_channel(child)
        code = process.exitcode
        lived = time.monotonic() - child.spawned_at
        self._health_dirty = True
        if child.stopping or self.stopping:
            log.info("%s exited (status %s)", child.name, code)
            if child.planned_restart and not self.stopping:
                child.restart_at = time.monotonic()  # a reload: start again with the new configuration now
            return
        child.failures = 0 if lived > STABLE_AFTER else child.failures + 1
        delay = min(RESTART_DELAY_MAX, RESTART_DELAY_MIN * 2 ** max(0, child.failures - 1))
        log.error("%s died (status %s) after %.1f s; restarting in %.2f s", child.name, code, lived, delay)
        child.restart_at = time.monotonic() + delay

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
        for exporter in self._exporters():
            exporter.backlog.append(batch)
            exporter.backlog_readings += len(batch.readings)
            self._trim_backlog(exporter)
            self._send_backlog(exporter)

    def _trim_backlog(self, child: Child) -> None:
        while child.backlog_readings > BACKLOG_MAX_READINGS and len(child.backlog) > 1:
            old = child.backlog.popleft()
            child.backlog_readings -= len(old.readings)
            child.dropped += len(old.readings)

    def _send_backlog(self, child: Child) -> None:
        """Write every batch the current incarnation has not been sent yet (while its channel takes them)."""
        channel = child.channel
        if channel is None or channel.closed or not child.alive:
            return
        for batch in child.backlog:
            if batch.seq <= child.sent_upto:
                continue
            if not channel.send(batch):
                return  # the channel is full; the rest goes when the child catches up
            child.sent_upto = batch.seq
        if not child.spec.acknowledges:
            child.backlog.clear()
            child.backlog_readings = 0

    def _on_ack(self, child: Child, ack: Ack) -> None:
        while child.backlog and child.backlog[0].seq <= ack.seq:
            child.backlog_readings -= len(child.backlog.popleft().readings)
        self._send_backlog(child)

    def _on_inventory(self, child: Child, inventory: Inventory) -> None:
        if inventory != self.inventory:
            log.info("inventory: %s%s", inventory.summary(), "" if inventory.complete else " (incomplete)")
        self.inventory = inventory
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
        child.rss_bytes, child.cpu_seconds = beat.rss_bytes, beat.cpu_seconds
        if beat.stats is not None:
            child.stats = beat.stats  # counters ride on the periodic refresh; readings themselves mark a change

    def _on_started(self, child: Child, started: Started) -> None:
        child.started = True
        self._health_dirty = True
        if not self.ready_sent and all(c.started for c in self.children.values()):
            self.ready_sent = True
            self.notifier.ready(self.status_line())
            log.info("ready")

    _handlers: dict[type, Callable[[Supervisor, Child, Any], None]] = {
        ReadingBatch: _on_batch,
        Ack: _on_ack,
        Inventory: _on_inventory,
        DeviceStatus: _on_device_status,
        Heartbeat: _on_heartbeat,
        Started: _on_started,
    }

    def _exporters(self) -> list[Child]:
        return [c for c in self.children.values() if c.spec.is_exporter]

    def _broadcast(self, message: object) -> None:
        for exporter in self._exporters():
            if exporter.alive and exporter.channel is not None:
                exporter.channel.send(message)

    # --- health and status ------------------------------------------------------------------------------------------

    def health(self) -> Health:
        rss, cpu = resource_usage()
        processes = {
            name: ProcessHealth(up=child.alive and child.started, restarts=child.restarts,
                                readings_dropped=child.dropped, rss_bytes=child.rss_bytes,
                                cpu_seconds=child.cpu_seconds)
            for name, child in self.children.items()
        }
        processes["supervisor"] = ProcessHealth(up=True, restarts=0, readings_dropped=0, rss_bytes=rss,
                                                cpu_seconds=cpu)
        collector = self._stats("collector", CollectorStats)
        if collector is not None:
            collector = dataclasses.replace(collector, readings=self.readings_routed,
                                            last_reading_ns=self.last_reading_ns)
        return Health(processes=processes, collector=collector,
                      influxdb=self._stats("influxdb", InfluxStats), mqtt=self._stats("mqtt", MqttStats),
                      device_up=self.device.up, inventory=self.inventory)

    def _stats(self, name: str, kind: type) -> Any:
        child = self.children.get(name)
        return child.stats if child is not None and isinstance(child.stats, kind) else None

    def _send_health(self) -> None:
        self._health_dirty = False
        self._health_sent = time.monotonic()
        prometheus = self.children.get("prometheus")
        if prometheus is not None and prometheus.alive and prometheus.channel is not None:
            prometheus.channel.send(self.health())

    def readings_per_minute(self) -> int:
        cutoff = time.monotonic() - 60.0
        while self.readings_window and self.readings_window[0][0] < cutoff:
            self.readings_window.popleft()
        return sum(n for _, n in self.readings_window)

    def status_line(self) -> str:
        """Return the one-line summary systemd shows: inverter, connection, reading rate, InfluxDB state."""
        name = self.inventory.name if self.inventory and self.inventory.name else self.config.device.host
        parts = [f"inverter {name} {'connected' if self.device.up else 'disconnected'}",
                 f"{self.readings_per_minute()} readings/min"]
        if "influxdb" in self.children:
            stats = self._stats("influxdb", InfluxStats)
            state = stats.state if stats else "starting"
            spool = f", {stats.spool_points} spooled" if stats and stats.spool_points else ""
            parts.append(f"InfluxDB {state}{spool}")
        down = [c.name for c in self.children.values() if not c.alive]
        if down:
            parts.append("restarting: " + ", ".join(down))
        return "; ".join(parts)

    # --- reload -------------------------------------------------------------------------------------------------------

    def _reload(self) -> None:
        """Re-read the configuration; on success restart every child with it, on failure keep the old one."""
        if not self.config_path:
            log.warning("SIGHUP: no configuration file to reload")
            return
        try:
            new = config_module.load(self.config_path)
        except ConfigError as exc:
            log.error("SIGHUP: keeping the running configuration: %s", exc)
            return
        old = self.config
        if (new.prometheus.enable, new.prometheus.bind_address, new.prometheus.bind_port) != (
                old.prometheus.enable, old.prometheus.bind_address, old.prometheus.bind_port):
            try:
                listen = self._bind(new) if new.prometheus.enable else None
            except OSError as exc:
                log.error("SIGHUP: keeping the running configuration: cannot bind the endpoint: %s", exc)
                return
            if self.listen_socket is not None:
                self.listen_socket.close()
            self.listen_socket = listen
        try:
            setup_logging(new, *self.log_flags)
        except (ValueError, TypeError, AttributeError, ImportError) as exc:
            log.error("SIGHUP: logging section invalid, keeping the running logging set-up: %s", exc)
        log.info("SIGHUP: configuration reloaded from %s; restarting children", self.config_path)
        for warning in new.warnings:
            log.warning("%s", warning)
        self.config = new
        for spec in self.specs:
            child = self.children.get(spec.name)
            if spec.enabled(new) and child is None:
                self.children[spec.name] = Child(spec)
                self._spawn(self.children[spec.name])
            elif child is not None and spec.enabled(new):
                self._request_stop(child, restart=True)
            elif child is not None:
                self._request_stop(child)
                del self.children[spec.name]
                self._retire(child)

    def _retire(self, child: Child) -> None:
        """Stop a child whose exporter was disabled; it is no longer supervised."""
        if child.process is not None:
            child.process.join(STOP_GRACE)
            if child.process.is_alive():
                child.process.kill()
                child.process.join(2.0)
            try:
                self.selector.unregister(child.process.sentinel)
            except (KeyError, ValueError):
                pass
        self._forget_channel(child)


def _share_with_children() -> None:
    """Load what every child needs before forking, so that they share one copy of it.

    Each child reads the catalog (and so rctclient's registry of some 900 objects). Loaded here, its pages are
    shared copy-on-write by all children instead of copied into each; `gc.freeze` keeps the collector from
    touching (and so copying) those objects later. This is data, not a library that could misbehave.
    """
    import gc

    import rctmon.catalog  # noqa: F401

    gc.freeze()


def _child_main(spec: ChildSpec, config: Config, channel: Channel, extra: Any, inherited: list[int]) -> None:
    """Entry point of every child after fork: shed what belongs to the supervisor, then run the child's job."""
    signal.set_wakeup_fd(-1)
    for fd in inherited:
        if fd != channel.fileno():
            try:
                os.close(fd)
            except OSError:
                pass
    become_child(spec.name)
    try:
        spec.main(config, channel, extra)
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
