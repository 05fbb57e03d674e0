"""Tell systemd how the daemon is doing (sd_notify), with or without systemd-python.

With systemd-python installed its `systemd.daemon.notify` is used; without it the datagram is sent directly to
$NOTIFY_SOCKET, which is all the protocol is. Outside systemd (no NOTIFY_SOCKET) every call does nothing, so the
daemon runs the same as a plain foreground program.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Callable

log = logging.getLogger("rctmon.systemd")


def _send_datagram(address: str, state: str) -> bool:
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)  # a full socket queue must never stall the supervisor loop
        try:
            sock.sendto(state.encode("utf-8", "replace"), address)
        except OSError as exc:
            log.debug("sd_notify to %s failed: %s", address, exc)
            return False
    return True


def _systemd_python_sender() -> Callable[[str], bool] | None:
    try:
        from systemd import daemon
    except ImportError:
        return None
    return lambda state: bool(daemon.notify(state))


class Notifier:
    """Sends READY, STATUS, WATCHDOG and STOPPING to systemd when it is listening."""

    def __init__(self) -> None:
        env = os.environ
        self.address = env.get("NOTIFY_SOCKET", "")
        self.watchdog_interval: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if self.address and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1e6 / 2  # systemd's advice: ping at half the timeout
        library = _systemd_python_sender() if self.address else None
        self.backend = "systemd-python" if library else "socket"
        self._send: Callable[[str], bool] = library or (lambda state: _send_datagram(self.address, state))
        self._last_status = ""

    def notify(self, state: str) -> bool:
        return self._send(state) if self.address else False

    def ready(self, status: str = "") -> None:
        self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))
        self._last_status = status

    def status(self, status: str) -> None:
        """Send STATUS= when it changed (systemctl status shows the latest line)."""
        if status != self._last_status:
            self._last_status = status
            self.notify(f"STATUS={status}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1")
