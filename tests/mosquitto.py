"""A real MQTT broker for tests: Debian's mosquitto on loopback, with a throw-away config, on a free port.

Also a small paho subscriber that records every message per topic, so tests can wait for what they expect.
"""

from __future__ import annotations

import getpass
import os
import re
import socket
import subprocess
import threading
from pathlib import Path
from typing import Callable
from collections.abc import Iterator

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from support import free_port, require_binary, stop_process, wait_for


class Mosquitto:
    """One mosquitto process; `stop()` and `start()` again keep the port, as a restarted broker would."""

    def __init__(self, directory: str, port: int | None = None) -> None:
        self.binary = require_binary("mosquitto")
        self.port = port or free_port()
        self.directory = directory
        self.config_path = os.path.join(directory, "mosquitto.conf")
        self.log_path = os.path.join(directory, "mosquitto.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self._listener_options = ""
        self._extra = ""

    def extra_config(self, lines: str, tls: tuple[str, str, str] | None = None) -> None:
        """Add config lines (e.g. a second listener); `tls` = (CA, certificate, key) makes the main port TLS."""
        self._extra = lines
        if tls:
            self._listener_options = f"cafile {tls[0]}\ncertfile {tls[1]}\nkeyfile {tls[2]}\n"

    def _write_config(self) -> None:
        with open(self.config_path, "w", encoding="utf-8") as conf:
            # persistence off: a restart loses retained messages, so tests see that rctmon publishes them again
            # `user`: mosquitto started as root would switch to user mosquitto and could not read the test's files
            conf.write(f"user {getpass.getuser()}\nper_listener_settings false\nallow_anonymous true\n"
                       "persistence false\n"
                       "log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n"
                       f"listener {self.port} 127.0.0.1\n{self._listener_options}{self._extra}")

    def start(self, timeout: float = 10.0) -> Mosquitto:
        self._write_config()
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen([self.binary, "-c", self.config_path], stdout=log, stderr=log)
        finally:
            log.close()
        wait_for(self._accepts, timeout, message=f"mosquitto on port {self.port} (log: {self.log_path})")
        return self

    def _accepts(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"mosquitto exited with {self.proc.returncode}: {self.log()}")
        # every listener: mosquitto opens the extra ones after the main one, and a test may use those first
        ports = [self.port, *(int(port) for port in re.findall(r"^listener (\d+)", self._extra, re.M))]
        for port in ports:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    pass
            except OSError:
                return False
        return True

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=5.0)
            self.proc = None

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""


class Recorder:
    """A paho subscriber in the test process that records every message it receives, per topic."""

    def __init__(self, port: int, topics: list[str]) -> None:
        self.messages: dict[str, list[bytes]] = {}
        self.retained: dict[str, bool] = {}
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"test-recorder-{os.getpid()}-{id(self)}")
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 0) for t in topics])
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        if not self._subscribed.wait(5.0):
            raise AssertionError("test subscriber could not subscribe")

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.setdefault(message.topic, []).append(bytes(message.payload))
            self.retained[message.topic] = bool(message.retain)

    def last(self, topic: str) -> str | None:
        with self._lock:
            payloads = self.messages.get(topic)
            return payloads[-1].decode() if payloads else None

    def count(self, topic: str) -> int:
        with self._lock:
            return len(self.messages.get(topic, ()))

    def topics(self, predicate: Callable[[str], bool] = lambda t: True) -> list[str]:
        with self._lock:
            return [t for t in self.messages if predicate(t)]

    def wait_last(self, topic: str, expected: str, timeout: float = 10.0) -> None:
        wait_for(lambda: self.last(topic) == expected, timeout,
                 message=f"{topic} = {expected!r} (last: {self.last(topic)!r})")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A running mosquitto, stopped after the test whatever happens."""
    server = Mosquitto(str(tmp_path)).start()
    try:
        yield server
    finally:
        server.stop()
