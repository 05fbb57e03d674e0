"""What each part of rctmon needs from the machine, and the checks that it has it: the table behind preflight.

These run in the forked process `rctmon.preflight` starts, so they may import what they like (ssl, sqlite3 by way of
the spool module, the exporters' libraries): none of it reaches the caller.

Clash checks (the metrics port, the spool) ask whether another process holds what this configuration needs. The
caller, the process that forked the checks, and its descendants are never another process: on SIGHUP the
supervisor and its children hold the port and the spool of the configuration being reloaded.
"""

from __future__ import annotations

import errno
import fcntl
import importlib
import ipaddress
import os
import socket
import ssl
import stat
import tempfile
import time
from dataclasses import dataclass
from typing import Callable
from collections.abc import Iterable, Iterator, Mapping

from rctmon import holders, statedir
from rctmon.config import SECRETS, Config, read_secret_file
from rctmon.exporters.listen import bind_endpoint
from rctmon.exporters.spool import spool_path

MAX_PEM_BYTES = 1 << 20  # a certificate chain is a few kB; /dev/zero as a certificate must not hang us
#: Seconds a port or spool held by someone else may take to come free before it counts as a clash: a predecessor
#: that is still stopping (the spool itself waits 10 s for one) must not turn a restart into exit status 2.
CLASH_GRACE = 5.0
_CLASH_POLL = 0.2

Check = Callable[[Config, Mapping[str, str]], Iterable[str]]


@dataclass(frozen=True)
class Needs:
    """What one part of rctmon needs from the machine while its section enables it."""

    enabled: Callable[[Config], bool]
    key: str  # the key a problem with a module is reported under (the one that enabled the part)
    modules: tuple[tuple[str, str], ...] = ()  # (module to import, distribution that provides it)
    checks: tuple[Check, ...] = ()
    clashes: tuple[Check, ...] = ()  # whether another process holds what the part needs (run on request)


# --- files ----------------------------------------------------------------------------------------------------------

def _file_problem(key: str, path: str, limit: int = MAX_PEM_BYTES) -> str | None:
    """Return why `path` is no small readable regular file, or None."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            return f"{key}: {path} is not a regular file"
        if info.st_size > limit:
            return f"{key}: {path} is larger than {limit // 1024} kB; not a PEM file"
        with open(path, "rb"):
            return None
    except OSError as exc:
        return f"{key}: cannot read {path}: {exc.strerror or exc}"


class _PassphraseNeeded(Exception):
    """The private key is encrypted: nobody is there to type its passphrase."""


def _refuse_passphrase() -> bytes:
    raise _PassphraseNeeded


def _certificate_problem(key: str, path: str) -> str | None:
    """Return why `path` holds no PEM certificate ssl can load, or None."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
        return None
    except (ssl.SSLError, OSError, ValueError) as exc:
        return f"{key}: {path} holds no PEM certificate ssl can load ({_ssl_reason(exc)})"


def _key_pair_problem(purpose: int, cert_key: str, cert: str, key_key: str, key: str) -> str | None:
    """Return why ssl cannot load the certificate with its private key as the server or client would, or None."""
    key_key, key_shown = (key_key, key) if key else (cert_key, cert)  # no key file: the key is in the cert file
    try:
        ssl.SSLContext(purpose).load_cert_chain(cert, key or None, password=_refuse_passphrase)
        return None
    except _PassphraseNeeded:
        return (f"{key_key}: the private key in {key_shown} is encrypted and rctmon cannot ask for its passphrase; "
                f"store it unencrypted, readable by rctmon only")
    except (ssl.SSLError, OSError, ValueError) as exc:
        if getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH":
            return f"{key_key}: the private key in {key_shown} does not belong to the certificate in {cert}"
        return f"{key_key}: {key_shown} holds no PEM private key ssl can load ({_ssl_reason(exc)})"


def _ssl_reason(exc: Exception) -> str:
    """Return OpenSSL's reason (`NO_CERTIFICATE_OR_CRL_FOUND`) readably; its bare "PEM lib" means broken PEM."""
    reason = getattr(exc, "reason", None)
    if reason:
        return str(reason).replace("_", " ").lower()
    if isinstance(exc, ssl.SSLError) and "PEM lib" in str(exc):
        return "not valid PEM"
    return str(exc)


def _tls_problems(purpose: int, cert_key: str, cert: str, key_key: str, key: str,
                  ca_key: str = "", ca: str = "") -> Iterator[str]:
    """Yield what keeps ssl from loading the files of one TLS set-up, each naming its key."""
    if ca and (problem := _file_problem(ca_key, ca) or _certificate_problem(ca_key, ca)):
        yield problem
    if not cert:
        return
    unreadable = [problem for k, p in ((cert_key, cert), (key_key, key)) if p and (problem := _file_problem(k, p))]
    yield from unreadable
    if not unreadable and (problem := _certificate_problem(cert_key, cert)
                           or _key_pair_problem(purpose, cert_key, cert, key_key, key)):
        yield problem


def _prometheus_tls(config: Config, environ: Mapping[str, str]) -> Iterator[str]:
    p = config.prometheus
    if p.tls_cert_file:
        yield from _tls_problems(ssl.PROTOCOL_TLS_SERVER, "prometheus.tls_cert_file", p.tls_cert_file,
                                 "prometheus.tls_key_file", p.tls_key_file)


def _mqtt_tls(config: Config, environ: Mapping[str, str]) -> Iterator[str]:
    t = config.mqtt.tls
    if t.enable:
        yield from _tls_problems(ssl.PROTOCOL_TLS_CLIENT, "mqtt.tls.cert_file", t.cert_file,
                                 "mqtt.tls.key_file", t.key_file, "mqtt.tls.ca_file", t.ca_file)


def _secret_files(section: str) -> Check:
    def check(config: Config, environ: Mapping[str, str]) -> Iterator[str]:
        for _, env, file_key in SECRETS:
            name, field_name = file_key.split(".")
            path = getattr(getattr(config, name), field_name)
            if name != section or not path or environ.get(env):
                continue
            try:
                read_secret_file(path)
            except OSError as exc:
                yield f"{file_key}: cannot read {path}: {exc.strerror or exc}"
            except ValueError as exc:
                yield f"{file_key}: {exc}"
    return check


def _spool_directory(config: Config, environ: Mapping[str, str]) -> Iterator[str]:
    """Yield why the influxdb child could not create or write its spool (`spool.spool_path`), if it could not."""
    key = "influxdb.spool_path"
    try:
        path = spool_path(config.influxdb, environ)
    except (RuntimeError, KeyError):  # no home directory to put the default under
        yield f"{key}: empty, and neither $STATE_DIRECTORY nor a home directory says where the spool goes; set it"
        return
    where = path
    try:
        if path.exists() and not path.is_file():
            yield f"{key}: {path} exists and is not a regular file"
            return
        existing = path.parent
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            yield f"{key}: cannot create {path}: {existing} is not a directory"
            return
        where = existing
        with tempfile.TemporaryFile(dir=existing):  # the real test: permissions, ACLs, read-only mounts, a full disk
            pass
        if path.exists():
            where = path
            with open(path, "r+b"):
                pass
    except OSError as exc:
        yield f"{key}: cannot write the spool {path}: {where}: {exc.strerror or exc}"


# --- clashes with other processes -----------------------------------------------------------------------------------

Probe = Callable[[], "set[int] | None"]


def _others_holding(probe: Probe, grace: float | None = None) -> set[int] | None:
    """Return the pids of other processes that hold what `probe` asks for, or None when nobody else does.

    `probe()` returns None when the thing is free, else the pids holding it (empty when none can be seen). Holders
    that are all the caller's own pass at once; others get `grace` seconds to let go. An empty set returned means
    held by someone this user cannot see.
    """
    deadline = time.monotonic() + (CLASH_GRACE if grace is None else grace)
    while True:
        held = probe()
        if held is None:
            return None
        own = holders.family(os.getppid())  # the caller: the process that forked this checking process
        if held and held <= own:
            return None
        if time.monotonic() >= deadline:
            return held - own
        time.sleep(_CLASH_POLL)


def _overlaps(ours: str, theirs: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Return whether a listener on `theirs` keeps us from binding `ours` (same address, or either a wildcard)."""
    try:
        mine = ipaddress.ip_address(ours.split("%")[0])
    except ValueError:
        return True
    mapped = getattr(theirs, "ipv4_mapped", None) or theirs
    return mine.is_unspecified or theirs.is_unspecified or mine in (theirs, mapped)


def _metrics_port_in_use(config: Config, environ: Mapping[str, str]) -> Iterator[str]:
    """Yield a clash when another process listens where the endpoint would; also what else keeps it from binding."""
    p = config.prometheus
    try:
        ours = str(socket.getaddrinfo(p.bind_address.strip("[] ") or "0.0.0.0", p.bind_port,
                                      type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][4][0])
    except (OSError, IndexError):
        ours = "::"
    other_failure: list[str] = []
    found: list[holders.Listener] = []

    def probe() -> set[int] | None:
        try:
            bind_endpoint(p.bind_address, p.bind_port).close()
            return None
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:  # EACCES (a port below 1024), EADDRNOTAVAIL (not this host's)
                other_failure.append(str(exc.strerror or exc))
                return None
        found[:] = [s for s in holders.listeners(p.bind_port) if _overlaps(ours, s.address)]
        return holders.socket_holders(s.inode for s in found)

    others = _others_holding(probe)
    if other_failure:
        yield f"prometheus.bind_port: {other_failure[0]}"
    elif others is not None:
        uids = sorted({s.uid for s in found})
        who = holders.describe(others) if others else (
            f"a process of {', '.join(holders.user_name(uid) for uid in uids)} that this user cannot see" if uids
            else "another process")
        yield f"prometheus.bind_port: {p.bind_address}:{p.bind_port} is in use by {who}"


def _spool_in_use(config: Config, environ: Mapping[str, str]) -> Iterator[str]:
    """Yield a clash when another process has the spool open (it holds `<spool>.lock`, as `spool.Spool` does)."""
    try:
        path = spool_path(config.influxdb, environ, adopt=False)
    except (RuntimeError, KeyError):  # no place for it at all: _spool_directory says so
        return
    lock = f"{path}.lock"
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # none yet (nobody ever opened this spool), or unreadable (_spool_directory's business)
        return

    def probe() -> set[int] | None:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        except BlockingIOError:
            return holders.lock_holders(lock)
    try:
        others = _others_holding(probe)
    finally:
        os.close(fd)
    if others is None:
        return
    who = holders.describe(others) if others else "another process that this user cannot see"
    hint = ""
    try:
        if path == statedir.state_file(config.instance, statedir.SPOOL_FILE, environ):
            hint = (f" (the spool of instance {config.instance!r}, named after the configuration file: run each "
                    f"inverter's daemon from a file of another name, or set influxdb.spool_path)")
    except (RuntimeError, KeyError):
        pass
    yield f"influxdb.spool_path: {path} is in use by {who}{hint}"


# --- the table ------------------------------------------------------------------------------------------------------

#: What each part needs while its section enables it. systemd-python is optional everywhere: never required here.
NEEDS: dict[str, Needs] = {
    "device": Needs(lambda c: True, "device", modules=(("rctclient", "rctclient"),)),
    "prometheus": Needs(lambda c: c.prometheus.enable, "prometheus.enable",
                        modules=(("prometheus_client", "prometheus-client"), ("h11", "h11")),
                        checks=(_prometheus_tls, _secret_files("prometheus")),
                        clashes=(_metrics_port_in_use,)),
    "influxdb": Needs(lambda c: c.influxdb.enable, "influxdb.enable",
                      modules=(("influxdb_client", "influxdb-client"),),
                      checks=(_spool_directory, _secret_files("influxdb")),
                      clashes=(_spool_in_use,)),
    "mqtt": Needs(lambda c: c.mqtt.enable, "mqtt.enable",
                  modules=(("paho.mqtt.client", "paho-mqtt"),),
                  checks=(_mqtt_tls, _secret_files("mqtt"))),
}


def run(config: Config, environ: Mapping[str, str], emit: Callable[[str, str], None], clashes: bool = False) -> None:
    """Check every enabled part; emit ("begin", key) before each part and ("problem", line) for each problem.

    With `clashes`, also check that no other process holds what the parts need (the `clashes` of NEEDS).
    """
    for needs in NEEDS.values():
        if not needs.enabled(config):
            continue
        emit("begin", needs.key)
        for module, distribution in needs.modules:
            try:
                importlib.import_module(module)
            except BaseException as exc:  # noqa: BLE001 - any failure of an import is the answer
                why = f"{type(exc).__name__}: {exc}"
                emit("problem", f"{needs.key}: cannot import {module} ({why[:300]}); install {distribution}")
        for check in needs.checks + (needs.clashes if clashes else ()):
            try:
                for problem in check(config, environ):
                    emit("problem", problem)
            except Exception as exc:  # noqa: BLE001 - a bug in one check must not hide the others' findings
                emit("problem", f"{needs.key}: {getattr(check, '__name__', 'a check')} failed: "
                                f"{type(exc).__name__}: {exc}")
