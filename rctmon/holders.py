"""Which process holds a listening port or a file lock: read from /proc, to name it when rctmon must refuse to start.

Linux only, best effort: a process of another user is hidden under systemd's `ProtectProc=invisible` (and its
file descriptors are never readable), so a holder may be known by its user id alone, or not at all. Nothing here
changes anything; every read of /proc may fail (a process ends while it is looked at) and is then skipped.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

_LISTEN = "0A"  # TCP state in /proc/net/tcp
_UNIT = re.compile(r"/([^/]+\.service)$")
_MAX_TITLE = 80


@dataclass(frozen=True)
class Listener:
    """A listening TCP socket: its address, port, owner's uid and inode (what its holders' fds link to)."""

    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int
    uid: int
    inode: int


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Decode /proc/net/tcp{,6}'s address: network-order 32-bit words, each printed in host byte order."""
    raw = bytes.fromhex(hex_address)
    if sys.byteorder == "little":
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(raw)


def listeners(port: int, proc: str = "/proc") -> list[Listener]:
    """Return the TCP sockets listening on `port` in this network namespace, IPv4 and IPv6."""
    found = []
    for table in ("tcp", "tcp6"):
        try:
            with open(f"{proc}/net/{table}", encoding="ascii", errors="replace") as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            try:
                local, state, uid, inode = fields[1], fields[3], int(fields[7]), int(fields[9])
                host, _, hex_port = local.partition(":")
                if state == _LISTEN and int(hex_port, 16) == port:
                    found.append(Listener(_address(host), port, uid, inode))
            except (IndexError, ValueError):
                continue
    return found


def _pids(proc: str) -> Iterator[int]:
    try:
        names = os.listdir(proc)
    except OSError:
        return
    for name in names:
        if name.isdigit():
            yield int(name)


def socket_holders(inodes: Iterable[int], proc: str = "/proc") -> set[int]:
    """Return the pids that have a socket with one of these inodes open (those whose fds we may read)."""
    wanted = {f"socket:[{inode}]" for inode in inodes}
    holders = set()
    for pid in _pids(proc):
        try:
            fds = os.listdir(f"{proc}/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"{proc}/{pid}/fd/{fd}") in wanted:
                    holders.add(pid)
                    break
            except OSError:
                continue
    return holders


def lock_holders(path: str, proc: str = "/proc") -> set[int]:
    """Return the pids holding a lock (flock or fcntl) on the file `path`, from /proc/locks.

    Matched by device and inode; where no line has the device stat gives (btrfs subvolumes and overlay mounts show
    another one there), by inode alone.
    """
    try:
        info = os.stat(path)
        with open(f"{proc}/locks", encoding="ascii", errors="replace") as f:
            lines = f.readlines()
    except OSError:
        return set()
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}"
    exact: set[int] = set()
    by_inode: set[int] = set()
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or fields[1] == "->":  # "->" marks a process waiting for the lock, not holding it
            continue
        pid_field, where = fields[4], fields[5]
        dev, _, inode = where.rpartition(":")
        if not (pid_field.isdigit() and inode.isdigit()) or int(inode) != info.st_ino:
            continue
        (exact if dev == device else by_inode).add(int(pid_field))
    return exact or by_inode


def parent(pid: int, proc: str = "/proc") -> int | None:
    """Return the parent pid of `pid`, or None if it cannot be read."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def family(pid: int, proc: str = "/proc") -> set[int]:
    """Return `pid` and all its descendants (one pass over /proc)."""
    children: dict[int, list[int]] = {}
    for other in _pids(proc):
        ppid = parent(other, proc)
        if ppid is not None:
            children.setdefault(ppid, []).append(other)
    result, todo = set(), [pid]
    while todo:
        current = todo.pop()
        if current not in result:
            result.add(current)
            todo.extend(children.get(current, ()))
    return result


def describe(pids: Iterable[int], proc: str = "/proc") -> str:
    """Return the processes for a message: `pid 812 (rctmon: supervisor) of rctmon@roof.service`.

    Of several holders that are parent and child (a supervisor and the child it handed the socket), the topmost
    is named.
    """
    pids = set(pids)
    tops = sorted(pid for pid in pids if parent(pid, proc) not in pids) or sorted(pids)
    return ", ".join(_one(pid, proc) for pid in tops[:3]) + (" and others" if len(tops) > 3 else "")


def _one(pid: int, proc: str) -> str:
    title = ""
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as f:
            argv = [a for a in f.read().split(b"\0") if a]
        title = " ".join(a.decode("utf-8", "replace") for a in argv)
        title = "".join(c if c.isprintable() else " " for c in title)  # a title is anyone's to set: no escapes
    except OSError:
        pass
    text = f"pid {pid}"
    if title:
        text += f" ({title[:_MAX_TITLE - 3] + '...' if len(title) > _MAX_TITLE else title})"
    unit = _unit(pid, proc)
    return text + (f" of {unit}" if unit else "")


def _unit(pid: int, proc: str) -> str:
    """Return the systemd unit a process runs in (from its cgroup), or ""."""
    try:
        with open(f"{proc}/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
            for line in f:
                match = _UNIT.search(line.strip())
                if match:
                    return match.group(1)
    except OSError:
        pass
    return ""


def user_name(uid: int) -> str:
    """Return `user rctmon` for a uid, or `uid 1234` when it has no name."""
    try:
        return f"user {pwd.getpwuid(uid).pw_name}"
    except KeyError:
        return f"uid {uid}"
