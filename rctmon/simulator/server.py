"""The built-in inverter simulator: an RCT Power inverter on a TCP port, with the faults real ones show.

It serves the demo, the tests and the benchmarks. Clients speak the RCT protocol to it exactly as to an inverter:
READ requests are answered (each answer preceded by a 0x00 byte, like real inverters), WRITE requests are logged
and ignored unless their object answers them (nothing a client sends ever changes its state), and reads of unknown
objects go unanswered, as on a real inverter. The answers come from `values` (what each object answers) over
`plant` (sun, battery and grid moving over a compressed day); `wire` frames them. Requests are dispatched by a
table keyed by command (`Simulator._handlers`); answers to WRITEs are registered by object type in
`Simulator.write_answers`.

Faults are injected per request, drawn from one random generator (seeded with `seed` for reproducible runs):

- latency: every answer leaves `latency_ms` after its request arrived, without serialising a pipeline (a burst of
  N requests is answered after about one latency, not N), like a real inverter at about 60 ms;
- drop: the request is never answered;
- corrupt: one byte of the encoded answer is changed; such answers are recorded in `corrupted_values`, never in
  `sent_values`, so a test can check that a client reports only values that were sent intact;
- noise: before the answer, one of the things the inverter's network bridge carries when other clients (the
  vendor's app) are connected: an unsolicited answer for another object (a real reading, recorded in
  `sent_values`), an echo of the request, `AT+\\r`, an extension command, the tail of an earlier answer, or an
  escaped start byte. While noise is on, every answer is also copied to all other connected clients, as the bridge
  does;
- disconnect: each connection is closed `disconnect_every` seconds after it was accepted.

`SimulatorThread` runs a simulator on its own event loop for tests, and can take it offline (connections refused)
and back to simulate an outage.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import random
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable

from rctclient.registry import REGISTRY
from rctclient.types import Command, DataType

from rctmon.catalog import enabled_series
from rctmon.faults import words_for
from rctmon.simulator.logger import Records
from rctmon.simulator.plant import Plant
from rctmon.simulator.options import SimulatorOptions
from rctmon.simulator.values import Answers, Inverter, decode_any
from rctmon.simulator.wire import ANSWER_PREFIX, Request, RequestParser, response_frame

log = logging.getLogger("rctmon.simulator")

#: How many values `sent_values` keeps per object (oldest forgotten first).
HISTORY = 10_000
#: Answers due within this many seconds of each other leave in one write.
COALESCE_SECONDS = 0.0005
#: A client that reads nothing gets no more copies of other clients' answers beyond this much unsent data.
MIRROR_BUFFER_LIMIT = 256 * 1024


@dataclass
class SimulatorStats:
    """Counters since the simulator started."""

    requests: int = 0  # READ requests received, and WRITEs of objects that answer them (write_answers)
    answered: int = 0  # answers sent to the client that asked (corrupted ones included)
    dropped: int = 0  # READ requests ignored on purpose (drop_rate)
    corrupted: int = 0  # answers sent with a changed byte (corrupt_rate)
    noise: int = 0  # pieces of noise sent before an answer (noise_rate)
    disconnects: int = 0  # connections closed by disconnect_every
    connections: int = 0  # connections accepted
    unknown: int = 0  # READs of objects the simulator does not answer (unknown ids, as a real inverter)
    writes_ignored: int = 0  # WRITE requests received and ignored
    mirrored: int = 0  # writes copied to other clients, as the bridge does (only while noise is on)
    garbage_bytes: int = 0  # bytes from clients that were not part of a frame


_NAMES: dict[int, str] = {info.object_id: info.name for info in REGISTRY.all()}
_TYPES: dict[int, DataType] = {info.object_id: info.response_data_type for info in REGISTRY.all()}


def _name(object_id: int) -> str:
    return _NAMES.get(object_id, f"0x{object_id:08X}")


class _Client(asyncio.Protocol):
    """One client connection: parses its requests, delays answers by the latency, closes on schedule."""

    def __init__(self, simulator: Simulator) -> None:
        self._sim = simulator
        self._loop = asyncio.get_running_loop()
        self._parser = RequestParser()
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.closed = False
        self.last_frame = b""  # the latest answer, whose tail the "leftover bytes" noise repeats
        self._pending: collections.deque[tuple[float, bytes]] = collections.deque()  # (when due, bytes), in order
        self._flush_timer: asyncio.TimerHandle | None = None
        self._disconnect_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self._sim._clients.add(self)
        self._sim._stats.connections += 1
        log.info("client %s connected", self.peer)
        every = self._sim.options.disconnect_every
        if every > 0:
            self._disconnect_timer = self._loop.call_later(every, self._disconnect)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        garbage = parser.garbage_bytes
        requests = parser.feed(data)
        self._sim._stats.garbage_bytes += parser.garbage_bytes - garbage
        if requests:
            self._sim._handle(self, requests)

    def send(self, data: bytes) -> None:
        """Send `data` after the configured latency (at once without one), keeping the order of answers."""
        latency = self._sim._latency
        if latency <= 0:
            self._deliver(data)
            return
        due = self._loop.time() + latency
        self._pending.append((due, data))
        if self._flush_timer is None:
            self._flush_timer = self._loop.call_at(due, self._flush)

    def _flush(self) -> None:
        self._flush_timer = None
        now = self._loop.time() + COALESCE_SECONDS
        pending = self._pending
        chunks = []
        while pending and pending[0][0] <= now:
            chunks.append(pending.popleft()[1])
        if chunks:
            self._deliver(b"".join(chunks))
        if pending:
            self._flush_timer = self._loop.call_at(pending[0][0], self._flush)

    def _deliver(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            return
        self.transport.write(data)
        if self._sim._mirror:
            self._sim._copy_to_others(self, data)

    def write_copy(self, data: bytes) -> bool:
        """Write another client's answer here too (the bridge's behaviour); False when this client is not reading."""
        if self.closed or self.transport is None or self.transport.get_write_buffer_size() > MIRROR_BUFFER_LIMIT:
            return False
        self.transport.write(data)
        return True

    def _disconnect(self) -> None:
        self._disconnect_timer = None
        self._sim._stats.disconnects += 1
        log.info("closing client %s (disconnect every %gs)", self.peer, self._sim.options.disconnect_every)
        self.close()

    def close(self, abort: bool = False) -> None:
        """Close the connection; unsent delayed answers are dropped. `abort` resets instead of a clean close."""
        self._cancel_timers()
        self._pending.clear()
        self.closed = True
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()

    def _cancel_timers(self) -> None:
        for timer in (self._flush_timer, self._disconnect_timer):
            if timer is not None:
                timer.cancel()
        self._flush_timer = self._disconnect_timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timers()
        self._pending.clear()
        self._sim._clients.discard(self)
        log.info("client %s disconnected", self.peer)

    def pause_writing(self) -> None:
        # A client that does not read its answers gets no more answers until it does (back-pressure).
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()


class Simulator:
    """An asyncio TCP server that behaves like an RCT Power inverter (see the module docstring)."""

    def __init__(self, options: SimulatorOptions | None = None) -> None:
        self.options = options = options if options is not None else SimulatorOptions()
        problems = options.problems()
        if problems:
            raise ValueError("; ".join(problems))
        self._rng = random.Random(options.seed)
        self._plant = Plant(options.generators, options.battery_modules, options.power_switch,
                            external_generator=options.external_generator)
        self._answers = Answers(Inverter(options.name, self._plant, words_for(options.inverter_faults)))
        self._latency = options.latency_ms / 1000.0
        self._mirror = options.noise_rate > 0
        self._stats = SimulatorStats()
        self._lock = threading.Lock()  # guards the histories, which other threads read
        self._sent: dict[int, collections.deque[Any]] = {}
        self._corrupted: dict[int, collections.deque[Any]] = {}
        self._clients: set[_Client] = set()
        self._server: asyncio.AbstractServer | None = None
        self._port = options.port
        #: Objects an unsolicited answer may be for: those the collector reads from an inverter like this one.
        self._unsolicited = tuple(s.object_id for s in enabled_series(options.inventory())
                                  if s.object_id in self._answers)
        self._noise_kinds: tuple[Callable[[_Client, Request], bytes], ...] = (
            self._noise_unsolicited, self._noise_echo, self._noise_at, self._noise_extension,
            self._noise_leftover, self._noise_escaped_start)
        #: The request dispatch: how each command a client sends is handled; commands not here are logged and
        #: ignored. Every write command goes to `_write`, which consults `write_answers`.
        self._handlers: dict[int, Callable[[_Client, Request, list[bytes]], None]] = {Command.READ: self._read}
        self._handlers.update((command, self._write) for command in Command if Command.is_write(command))
        #: Answers to WRITE requests, by the registry type of the object written: the one place where a WRITE
        #: handler is registered. The inverter's logger (DataType.TIMESERIES) and event table
        #: (DataType.EVENT_TABLE) answer a WRITE of a timestamp with their entries before it; whoever models them
        #: puts a function here that returns (payload, decoded value) for the request, or None to stay silent.
        #: The answer goes through the same faults as a READ's. A WRITE whose type has no entry is logged and
        #: ignored: nothing a client sends ever changes the simulator's state.
        self.write_answers: dict[DataType, Callable[[Request], tuple[bytes, Any] | None]] = {}
        #: The logger and the event table (rctmon/simulator/logger.py): what they hold, and their answers.
        self.records = Records(options, self._rng)
        self.write_answers.update(self.records.write_answers())

    # --- lifecycle ---------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start listening; `port` is the bound port from then on (also when the options asked for port 0)."""
        await self._listen()

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Client(self), self.options.host, self._port)
        self._port = self._server.sockets[0].getsockname()[1]

    @property
    def port(self) -> int:
        return self._port

    @property
    def plant(self) -> Plant:
        """The simulated installation behind the answers (what tests compare with, what history is made from)."""
        return self._plant

    @property
    def online(self) -> bool:
        return self._server is not None

    def set_inverter_faults(self, names: tuple[str, ...]) -> None:
        """Report these faults (rctmon.faults names) from now on, none for an empty tuple; raise ValueError for an
        unknown name. Safe from any thread: the words are one tuple, replaced at once."""
        self._answers.inverter.fault_words = words_for(names)

    async def set_online(self, online: bool) -> None:
        """Go offline (close every client, refuse connections) or online again on the same port."""
        if online and self._server is None:
            await self._listen()
            log.info("online again on port %d", self._port)
        elif not online and self._server is not None:
            await self._close()
            log.info("offline: connections to port %d are refused", self._port)

    async def _close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for client in list(self._clients):
            client.close(abort=True)
        if server is not None:
            await server.wait_closed()

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        await self._close()

    # --- what tests read ---------------------------------------------------------------------------------------

    @property
    def stats(self) -> SimulatorStats:
        """Return a copy of the counters."""
        return dataclasses.replace(self._stats)

    def sent_values(self, object_id: int | str) -> list[Any]:
        """Return every value sent intact for that object (id or name), oldest first (the last HISTORY)."""
        return self._history(self._sent, object_id)

    def corrupted_values(self, object_id: int | str) -> list[Any]:
        """Return the values of the answers for that object that went out with a corrupted byte."""
        return self._history(self._corrupted, object_id)

    def _history(self, store: dict[int, collections.deque[Any]], object_id: int | str) -> list[Any]:
        if isinstance(object_id, str):
            object_id = REGISTRY.get_by_name(object_id).object_id
        with self._lock:
            return list(store.get(object_id, ()))

    def _record(self, store: dict[int, collections.deque[Any]], object_id: int, value: Any) -> None:
        with self._lock:
            values = store.get(object_id)
            if values is None:
                values = store[object_id] = collections.deque(maxlen=HISTORY)
            values.append(value)

    # --- answering ----------------------------------------------------------------------------------------------

    def _handle(self, client: _Client, requests: list[Request]) -> None:
        out: list[bytes] = []
        handlers = self._handlers
        for request in requests:
            handler = handlers.get(request.command)
            if handler is None:
                log.debug("ignoring %s frame for %s from %s", request.command, _name(request.object_id), client.peer)
            else:
                handler(client, request, out)
        if out:
            client.send(b"".join(out))

    def _read_answer(self, request: Request) -> tuple[bytes, Any] | None:
        try:
            return self._answers.answer(request.object_id)
        except Exception:  # noqa: BLE001 - a bug in one value must not take the connection down
            log.exception("cannot compute the answer for %s", _name(request.object_id))
            return None

    def _read(self, client: _Client, request: Request, out: list[bytes]) -> None:
        self._respond(client, request, out, self._read_answer)

    def _write(self, client: _Client, request: Request, out: list[bytes]) -> None:
        """Answer a WRITE through `write_answers` when its object's type has an entry there; ignore it otherwise."""
        data_type = _TYPES.get(request.object_id)
        answer_write = self.write_answers.get(data_type) if data_type is not None else None
        if answer_write is None:
            self._ignore_write(request)
            return

        def compute(request: Request) -> tuple[bytes, Any] | None:
            try:
                return answer_write(request)
            except Exception:  # noqa: BLE001 - a bug in one answer must not take the connection down
                log.exception("cannot compute the answer to a WRITE of %s", _name(request.object_id))
                return None
        self._respond(client, request, out, compute)

    def _respond(self, client: _Client, request: Request, out: list[bytes],
                 compute: Callable[[Request], tuple[bytes, Any] | None]) -> None:
        """Append the answer `compute` gives for `request` to `out`, with the configured faults injected."""
        stats, options, rng = self._stats, self.options, self._rng
        stats.requests += 1
        if options.drop_rate and rng.random() < options.drop_rate:
            stats.dropped += 1
            return
        answer = compute(request)
        if answer is None:
            stats.unknown += 1
            return
        payload, value = answer
        if options.noise_rate and rng.random() < options.noise_rate:
            out.append(rng.choice(self._noise_kinds)(client, request))
            stats.noise += 1
        frame = response_frame(request.object_id, payload)
        if options.corrupt_rate and rng.random() < options.corrupt_rate:
            corrupted = bytearray(frame)
            corrupted[rng.randrange(len(corrupted))] ^= rng.randrange(1, 256)
            frame = bytes(corrupted)
            stats.corrupted += 1
            self._record(self._corrupted, request.object_id, value)
        else:
            self._record(self._sent, request.object_id, value)
        stats.answered += 1
        client.last_frame = frame
        out.append(ANSWER_PREFIX)
        out.append(frame)

    def _ignore_write(self, request: Request) -> None:
        self._stats.writes_ignored += 1
        try:
            value: Any = decode_any(REGISTRY.get_by_id(request.object_id).request_data_type, request.payload)
        except Exception:  # noqa: BLE001 - only for the log line
            value = request.payload.hex()
        log.warning("ignoring WRITE of %s = %r: the simulator never changes state", _name(request.object_id), value)

    def _copy_to_others(self, sender: _Client, data: bytes) -> None:
        for client in list(self._clients):
            if client is not sender and client.write_copy(data):
                self._stats.mirrored += 1

    # --- noise: what else the inverter's bridge carries -------------------------------------------------------

    def _noise_unsolicited(self, client: _Client, request: Request) -> bytes:
        """An answer to a request some other client made: a valid reading, so it is recorded."""
        if not self._unsolicited:
            return b"AT+\r"
        object_id = self._rng.choice(self._unsolicited)
        answer = self._read_answer(request._replace(object_id=object_id))
        if answer is None:
            return b"AT+\r"
        self._record(self._sent, object_id, answer[1])
        return ANSWER_PREFIX + response_frame(object_id, answer[0])

    def _noise_echo(self, client: _Client, request: Request) -> bytes:
        return request.raw

    def _noise_at(self, client: _Client, request: Request) -> bytes:
        return b"AT+\r"

    def _noise_extension(self, client: _Client, request: Request) -> bytes:
        return b"\x2b\x3c\xe1" + bytes(self._rng.randrange(256) for _ in range(self._rng.randrange(1, 5)))

    def _noise_leftover(self, client: _Client, request: Request) -> bytes:
        previous = client.last_frame
        if len(previous) < 2:
            return b"AT+\r"
        return previous[self._rng.randrange(1, len(previous)):]

    def _noise_escaped_start(self, client: _Client, request: Request) -> bytes:
        return b"\x2d\x2b" + bytes(self._rng.randrange(0x30, 0x100) for _ in range(self._rng.randrange(1, 4)))


class SimulatorThread:
    """A Simulator on its own event loop in a daemon thread, for tests: `with SimulatorThread(opts) as sim: ...`."""

    def __init__(self, options: SimulatorOptions | None = None) -> None:
        self.simulator = Simulator(options)
        self.options = self.simulator.options
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def __enter__(self) -> SimulatorThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> SimulatorThread:
        """Start the simulator and return once it listens (raise what stopped it from listening)."""
        self._thread = threading.Thread(target=self._run, name="rctmon-simulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise TimeoutError("the simulator did not start within 30 s")
        if self._error is not None:
            self._thread.join(5)
            raise self._error
        return self

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            try:
                loop.run_until_complete(self.simulator.start())
            except BaseException as exc:  # noqa: BLE001 - handed to the thread that called start()
                self._error = exc
                return
            finally:
                self._ready.set()
            loop.run_forever()
            loop.run_until_complete(self.simulator.stop())
        finally:
            loop.close()

    def _call(self, coroutine: Any, timeout: float = 10.0) -> Any:
        if self._loop is None or self._thread is None or not self._thread.is_alive():
            coroutine.close()
            raise RuntimeError("the simulator thread is not running")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def stop(self) -> None:
        """Stop the simulator and its thread (idempotent)."""
        if self._thread is None or not self._thread.is_alive() or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def set_online(self, online: bool) -> None:
        """Go offline (clients closed, connections refused) or online again, and return once that is done."""
        self._call(self.simulator.set_online(online))

    @property
    def port(self) -> int:
        return self.simulator.port

    @property
    def stats(self) -> SimulatorStats:
        return self.simulator.stats

    def sent_values(self, object_id: int | str) -> list[Any]:
        return self.simulator.sent_values(object_id)

    def set_inverter_faults(self, names: tuple[str, ...]) -> None:
        self.simulator.set_inverter_faults(names)

    def corrupted_values(self, object_id: int | str) -> list[Any]:
        return self.simulator.corrupted_values(object_id)


async def _serve(options: SimulatorOptions) -> int:
    simulator = Simulator(options)
    try:
        await simulator.start()
    except OSError as exc:
        print(f"rctmon simulator: cannot listen on {options.host}:{options.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)  # the handler only wakes the loop; shutdown happens below
    host = f"[{options.host}]" if ":" in options.host else options.host
    print(f"rctmon simulator listening on {host}:{simulator.port}", flush=True)  # first line: others parse it
    log.info("simulating %s", options.inventory().summary())
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await simulator.stop()
    log.info("stopped: %s", simulator.stats)
    return 0


def run_simulator(options: SimulatorOptions) -> int:
    """Run a simulator until SIGTERM or Ctrl-C; return the exit status (0 after a clean stop)."""
    try:
        return asyncio.run(_serve(options))
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed
        return 0
