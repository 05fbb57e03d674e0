"""Process plumbing shared by the supervisor and its children: titles, parent-death signal, resource use."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import time

HEARTBEAT_INTERVAL = 5.0  # seconds between a child's heartbeats (the supervisor waits 20 s before it acts)
_PR_SET_PDEATHSIG = 1
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def set_title(role: str) -> None:
    """Name the process `rctmon: <role>` so that `ps -o pid,args` shows what each process does."""
    try:
        import setproctitle
    except ImportError:  # the title is a convenience; never fail over it
        return
    setproctitle.setproctitle(f"rctmon: {role}")


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when the supervisor dies, even by SIGKILL (Linux only).

    Without it a child of a supervisor killed outright would linger holding the inverter connection or the port.
    """
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def become_child(role: str) -> None:
    """Prepare a freshly forked child: title, parent-death signal, signals left to the supervisor."""
    set_title(role)
    die_with_parent()
    # Ctrl-C reaches the whole foreground process group; the supervisor alone decides how children stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def resource_usage() -> tuple[int, float]:
    """Return (resident bytes, CPU seconds) of this process."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            rss = int(statm.read().split()[1]) * _PAGE_SIZE
        with open("/proc/self/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime + stime
    except (OSError, IndexError, ValueError):
        return 0, 0.0
    return rss, cpu


class Every:
    """A periodic deadline on the monotonic clock: `due()` is true once per interval."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._next = time.monotonic()

    def due(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.interval
        return True

    def remaining(self) -> float:
        return max(0.0, self._next - time.monotonic())
