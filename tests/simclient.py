"""A minimal RCT client and simulator helpers for the simulator's tests, built from rctclient's make_frame and
ReceiveFrame only (the collector is not used on purpose: these tests pin what the simulator sends)."""

from __future__ import annotations

import contextlib
import socket
import time
from typing import Any, Callable
from collections.abc import Iterator, Sequence

from rctclient.exceptions import FrameCRCMismatch, FrameLengthExceeded, InvalidCommand
from rctclient.frame import ReceiveFrame, make_frame
from rctclient.registry import REGISTRY
from rctclient.types import Command

from rctmon.simulator import SimulatorOptions, SimulatorThread
from rctmon.simulator.values import decode_any

NAMES = {info.object_id: info.name for info in REGISTRY.all()}
IDS = {info.name: info.object_id for info in REGISTRY.all()}


def split_frames(buf: bytes) -> tuple[list[ReceiveFrame], bytes]:
    """Return the complete frames in `buf` and the unparsed rest; after any bad frame, resume one byte later."""
    frames: list[ReceiveFrame] = []
    pos = 0
    while True:
        start = buf.find(b"+", pos)
        if start < 0:
            return frames, b""
        frame = ReceiveFrame()
        try:
            consumed = frame.consume(buf[start:])
        except (FrameCRCMismatch, InvalidCommand, FrameLengthExceeded):
            pos = start + 1
            continue
        if frame.complete():
            frames.append(frame)
            pos = start + consumed
            continue
        later = buf.find(b"+", start + 1)
        while later >= 0 and buf[later - 1] == 0x2D:
            later = buf.find(b"+", later + 1)
        if later < 0:
            return frames, buf[start:]
        pos = start + 1  # a valid frame never holds an unescaped start byte: this one was garbage


class Client:
    """A blocking RCT client for tests: send READ frames, collect RESPONSE frames (raw bytes kept too)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.pending = b""
        self.raw = bytearray()
        self.frames: list[ReceiveFrame] = []  # every frame received, any command

    def close(self) -> None:
        self.sock.close()

    def send_reads(self, objects: Sequence[int | str]) -> None:
        self.sock.sendall(b"".join(make_frame(Command.READ, IDS[o] if isinstance(o, str) else o) for o in objects))

    def receive_once(self, timeout: float = 10.0) -> bool:
        """Read what arrives within `timeout`; return False when the server closed the connection."""
        self.sock.settimeout(timeout)
        data = self.sock.recv(65536)
        if not data:
            return False
        self.raw += data
        frames, self.pending = split_frames(self.pending + data)
        self.frames.extend(frames)
        return True

    def responses(self) -> list[ReceiveFrame]:
        return [f for f in self.frames if f.command in (Command.RESPONSE, Command.LONG_RESPONSE)]

    def wait_responses(self, count: int, timeout: float = 10.0) -> list[ReceiveFrame]:
        deadline = time.monotonic() + timeout
        while len(self.responses()) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.receive_once(remaining):
                raise AssertionError(f"got {len(self.responses())} of {count} responses")
        return self.responses()

    def read(self, objects: Sequence[str], timeout: float = 10.0) -> dict[str, Any]:
        """Read objects by name and return their decoded values (fails unless every one is answered)."""
        start = len(self.frames)
        self.send_reads(objects)
        wanted = {IDS[name] for name in objects}
        deadline = time.monotonic() + timeout
        while True:
            got = {f.id: f for f in self.frames[start:] if f.command in (Command.RESPONSE, Command.LONG_RESPONSE)}
            if wanted <= set(got):
                return {NAMES[i]: decode_any(REGISTRY.get_by_id(i).response_data_type, got[i].data) for i in wanted}
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.receive_once(remaining):
                raise AssertionError(f"unanswered: {sorted(NAMES[i] for i in wanted - set(got))}")

    def sync(self, sentinel: str = "android_description", timeout: float = 10.0) -> None:
        """Return once everything sent before has been answered: answers come in order, so wait for a sentinel's.

        The sentinel is asked again until one answer arrives intact (with corrupt_rate, one may not)."""
        deadline = time.monotonic() + timeout
        start = len(self.frames)
        while time.monotonic() < deadline:
            self.send_reads([sentinel])
            try:
                self.receive_once(0.3)
            except socket.timeout:
                pass
            if any(f.id == IDS[sentinel] and f.command == Command.RESPONSE for f in self.frames[start:]):
                return
        raise AssertionError("no answer to the sentinel")



@contextlib.contextmanager
def simulators() -> Iterator[Callable[..., SimulatorThread]]:
    """Yield a function that starts simulators with the given options; every one is stopped on leaving."""
    started: list[SimulatorThread] = []

    def start(**options: Any) -> SimulatorThread:
        sim = SimulatorThread(SimulatorOptions(**options)).start()
        started.append(sim)
        return sim

    try:
        yield start
    finally:
        for sim in started:
            sim.stop()


@contextlib.contextmanager
def connections() -> Iterator[Callable[[int], Client]]:
    """Yield a function that connects a Client to a port; every one is closed on leaving."""
    opened: list[Client] = []

    def connect(port: int) -> Client:
        client = Client(port)
        opened.append(client)
        return client

    try:
        yield connect
    finally:
        for client in opened:
            client.close()
