"""Throwaway local PostgreSQL clusters (``initdb`` + ``pg_ctl``) for tests, demos and benchmarks.

Standard library + psycopg only: this module is used at runtime by ``python -m pgpoolkit``
as well as by the test suite, so it must not import pytest.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import TupleRow

__all__ = ["TemporaryPostgres", "find_postgres_bindir"]

BINDIR_ENV: Final = "PGPOOLKIT_PG_BINDIR"

_INSTALL_HINT: Final = (
    "Install the PostgreSQL server binaries, e.g. `apt-get install -y postgresql` "
    "(Debian/Ubuntu; as root, or run scripts/setup.sh), or set "
    f"{BINDIR_ENV} to the directory containing initdb and pg_ctl."
)

_HOST: Final = "127.0.0.1"
_SUPERUSER: Final = "postgres"
_DBNAME: Final = "postgres"
_LOGFILE_NAME: Final = "postgresql.log"
_CONF_INCLUDE_NAME: Final = "pgpoolkit.conf"
_STOP_MODES: Final = frozenset({"smart", "fast", "immediate"})
_PG_CTL_TIMEOUT: Final = 60  # seconds, passed to pg_ctl -t
_SUBPROCESS_TIMEOUT: Final = 120.0
_START_ATTEMPTS: Final = 3  # only when the port was picked by us, on the very first start


# --------------------------------------------------------------------------------------
# Locating the server binaries
# --------------------------------------------------------------------------------------


def _has_server_binaries(bindir: str) -> bool:
    return all(
        os.path.isfile(path) and os.access(path, os.X_OK)
        for path in (os.path.join(bindir, "initdb"), os.path.join(bindir, "pg_ctl"))
    )


def _version_key(path: str) -> tuple[int, ...]:
    # /usr/lib/postgresql/15/bin -> (15,); /usr/lib/postgresql/9.6/bin -> (9, 6)
    name = os.path.basename(os.path.dirname(path.rstrip("/")))
    return tuple(int(part) for part in re.findall(r"\d+", name))


def _versioned_bindirs() -> list[str]:
    found: list[str] = []
    for root, pattern in (("/usr/lib/postgresql", None), ("/usr", re.compile(r"pgsql-\d"))):
        try:
            names = os.listdir(root)
        except OSError:
            continue
        for name in names:
            if pattern is not None and not pattern.match(name):
                continue
            bindir = os.path.join(root, name, "bin")
            if _has_server_binaries(bindir):
                found.append(bindir)
    found.sort(key=_version_key, reverse=True)
    return found


def find_postgres_bindir() -> str:
    """Return the directory holding the PostgreSQL server programs (``initdb``, ``pg_ctl``).

    Search order:

    1. the ``PGPOOLKIT_PG_BINDIR`` environment variable (an error if it is set but wrong);
    2. ``pg_config --bindir``, if that directory contains ``initdb``;
    3. ``/usr/lib/postgresql/<highest version>/bin`` (Debian/Ubuntu layout; then
       ``/usr/pgsql-<version>/bin``, the PGDG RPM layout);
    4. ``initdb`` and ``pg_ctl`` on ``PATH``.

    :raises RuntimeError: if nothing is found; the message says what to install.
    """
    env = os.environ.get(BINDIR_ENV)
    if env:
        if _has_server_binaries(env):
            return os.path.abspath(env)
        raise RuntimeError(
            f"{BINDIR_ENV}={env!r} does not contain initdb and pg_ctl. {_INSTALL_HINT}"
        )

    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            result = subprocess.run(
                [pg_config, "--bindir"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            pass
        else:
            bindir = result.stdout.strip()
            if result.returncode == 0 and bindir and _has_server_binaries(bindir):
                return bindir

    versioned = _versioned_bindirs()
    if versioned:
        return versioned[0]

    initdb = shutil.which("initdb")
    if initdb:
        for bindir in (os.path.dirname(initdb), os.path.dirname(os.path.realpath(initdb))):
            if _has_server_binaries(bindir):
                return bindir

    raise RuntimeError(f"PostgreSQL server programs (initdb, pg_ctl) not found. {_INSTALL_HINT}")


# --------------------------------------------------------------------------------------
# Running the server programs (they refuse to run as root)
# --------------------------------------------------------------------------------------


def _is_root() -> bool:
    return sys.platform != "win32" and os.geteuid() == 0


def _find_program(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for directory in ("/usr/sbin", "/sbin", "/usr/bin", "/bin"):
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


@dataclass(frozen=True)
class _Identity:
    """Who runs initdb/pg_ctl/postgres: ourselves, or (when we are root) an unprivileged user."""

    user: str | None  # None: ourselves
    uid: int
    gid: int

    @classmethod
    def detect(cls) -> _Identity:
        if not _is_root():
            return cls(None, os.getuid(), os.getgid())
        import pwd

        for name in ("postgres", "nobody"):
            try:
                entry = pwd.getpwnam(name)
            except KeyError:
                continue
            return cls(name, entry.pw_uid, entry.pw_gid)
        raise RuntimeError(
            "running as root, but neither a 'postgres' nor a 'nobody' user exists to run "
            "PostgreSQL as (initdb/pg_ctl refuse to run as root); create a 'postgres' user "
            "(`apt-get install -y postgresql` does) or run as an unprivileged user"
        )

    def chown(self, path: str) -> None:
        if self.user is not None:
            os.chown(path, self.uid, self.gid, follow_symlinks=False)

    def chown_tree(self, root: str) -> None:
        if self.user is None:
            return
        self.chown(root)
        for dirpath, dirnames, filenames in os.walk(root):
            for name in (*dirnames, *filenames):
                self.chown(os.path.join(dirpath, name))

    def can_traverse(self, path: str) -> bool:
        """Whether every ancestor directory of *path* is searchable by this identity."""
        if self.user is None:
            return True
        current = os.path.abspath(path)
        while True:
            try:
                st = os.stat(current)
            except OSError:
                return False
            if st.st_uid == self.uid:
                ok = bool(st.st_mode & stat.S_IXUSR)
            elif st.st_gid == self.gid:
                ok = bool(st.st_mode & stat.S_IXGRP)
            else:
                ok = bool(st.st_mode & stat.S_IXOTH)
            if not ok:
                return False
            parent = os.path.dirname(current)
            if parent == current:
                return True
            current = parent

    def run(self, argv: Sequence[str], *, cwd: str) -> subprocess.CompletedProcess[str]:
        """Run *argv* as this identity; never raises on a non-zero exit status."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C", TZ="UTC")
        command = list(argv)
        kwargs_user: int | None = None
        if self.user is not None:
            runuser = _find_program("runuser")
            su = _find_program("su")
            if runuser:
                command = [runuser, "-u", self.user, "--", *argv]
            elif su:
                command = [su, self.user, "-s", "/bin/sh", "-c", shlex.join(argv)]
            else:  # last resort: let subprocess drop the privileges itself
                kwargs_user = self.uid
        try:
            return subprocess.run(
                command,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                timeout=_SUBPROCESS_TIMEOUT,
                check=False,
                user=kwargs_user,
                group=None if kwargs_user is None else self.gid,
                extra_groups=None if kwargs_user is None else [],
            )
        except subprocess.TimeoutExpired as ex:
            raise RuntimeError(f"timed out after {ex.timeout}s: {shlex.join(command)}") from ex


def _temp_root(identity: _Identity) -> str:
    root = tempfile.gettempdir()
    if identity.can_traverse(root):
        return root
    if os.path.isdir("/tmp") and identity.can_traverse("/tmp"):
        return "/tmp"
    raise RuntimeError(
        f"the temporary directory {root!r} is not accessible to user {identity.user!r}, "
        "who has to run PostgreSQL; set TMPDIR to a world-searchable directory"
    )


def _make_private_dir(identity: _Identity, prefix: str) -> str:
    path = tempfile.mkdtemp(prefix=prefix, dir=_temp_root(identity))
    identity.chown(path)
    return path


def _write_file(identity: _Identity, path: str, text: str) -> None:
    # Open in place (keeps owner and mode of existing files), then make sure of the owner.
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    identity.chown(path)


def _output_tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# --------------------------------------------------------------------------------------
# initdb, with a per-process template so that further clusters are a cheap copy
# --------------------------------------------------------------------------------------

_INITDB_ARGS: Final = ("-U", _SUPERUSER, "-A", "trust", "--no-sync", "-E", "UTF8", "--locale=C")

_template_lock = threading.Lock()
_templates: dict[tuple[str, int], str] = {}  # (bindir, uid) -> template base dir
_template_owner_pid = os.getpid()


def _initdb(identity: _Identity, bindir: str, datadir: str, cwd: str) -> None:
    result = identity.run([os.path.join(bindir, "initdb"), "-D", datadir, *_INITDB_ARGS], cwd=cwd)
    if result.returncode != 0:
        raise RuntimeError(
            f"initdb failed (exit status {result.returncode}):\n{_output_tail(result.stdout)}"
        )


def _template_datadir(identity: _Identity, bindir: str) -> str:
    key = (bindir, identity.uid)
    with _template_lock:
        base = _templates.get(key)
        if base is None or not os.path.isdir(os.path.join(base, "data")):
            base = _make_private_dir(identity, "pgpoolkit-template-")
            try:
                _initdb(identity, bindir, os.path.join(base, "data"), cwd=base)
            except BaseException:
                shutil.rmtree(base, ignore_errors=True)
                raise
            _templates[key] = base
        return os.path.join(base, "data")


def _remove_templates() -> None:
    if os.getpid() != _template_owner_pid:
        return
    with _template_lock:
        for base in _templates.values():
            shutil.rmtree(base, ignore_errors=True)
        _templates.clear()


# --------------------------------------------------------------------------------------
# Ports
# --------------------------------------------------------------------------------------


def _ephemeral_port_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            low, high = (int(x) for x in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((_HOST, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    """A free TCP port on 127.0.0.1.

    Preferably one *below* the kernel's ephemeral range: the server is stopped and
    started again on the same port, and while it is down an ephemeral port may be
    handed to some outgoing connection, which would make the restart fail.
    Falls back to binding port 0 and reading the port the kernel picked.
    """
    low, _high = _ephemeral_port_range()
    if low > 20000:
        rng = random.SystemRandom()
        for _ in range(50):
            candidate = rng.randrange(15000, low)
            if _port_is_free(candidate):
                return candidate
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_HOST, 0))
        port: int = s.getsockname()[1]
    return port


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


def _conf_value(value: str | int) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _hba_quote(role: str) -> str:
    return '"' + role + '"'


_HBA_TRUST: Final = """\
# everything else: trust (a throwaway cluster, bound to 127.0.0.1 only)
local   all             all                                     trust
host    all             all             127.0.0.1/32            trust
host    all             all             ::1/128                 trust
local   replication     all                                     trust
host    replication     all             127.0.0.1/32            trust
host    replication     all             ::1/128                 trust
"""


# --------------------------------------------------------------------------------------
# The cluster
# --------------------------------------------------------------------------------------

_live_lock = threading.Lock()
_live: set[TemporaryPostgres] = set()


class TemporaryPostgres:
    """A throwaway PostgreSQL cluster listening on ``127.0.0.1`` on a free port.

    The data directory and the (private) Unix socket directory are created under
    :func:`tempfile.gettempdir` with a ``pgpoolkit-`` prefix. The server runs with
    durability off (``fsync``, ``synchronous_commit``, ``full_page_writes``),
    ``max_connections=200`` and trust authentication for everybody except the roles
    made with :meth:`create_user`, which must use ``scram-sha-256``. Its log goes to
    :attr:`logfile` in the data directory.

    When the current process is root, ``initdb``/``pg_ctl``/``postgres`` run as the
    ``postgres`` system user (else ``nobody``) through ``runuser`` (or ``su``).

    Clusters still alive when the interpreter exits are stopped and removed by an
    :mod:`atexit` hook, unless *keep* is true.

    :param port: TCP port; default: a free one, picked at the first :meth:`start` and
        kept for the lifetime of the object (:meth:`stop` + :meth:`start` reuse it).
    :param bindir: directory of ``initdb``/``pg_ctl``; default :func:`find_postgres_bindir`.
    :param settings: extra ``postgresql.conf`` settings, overriding the defaults
        (``port`` is not allowed here: use *port*).
    :param keep: leave the data directory (and its server log) on disk at
        :meth:`cleanup`, and leave the server alone at interpreter exit.

    Usable as a context manager: ``__enter__`` starts, ``__exit__`` calls :meth:`cleanup`.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        bindir: str | None = None,
        settings: Mapping[str, str | int] | None = None,
        keep: bool = False,
    ) -> None:
        settings = dict(settings or {})
        if "port" in settings:
            raise ValueError("pass the port with TemporaryPostgres(port=...), not in settings")
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"invalid port: {port}")
        self._requested_port = port
        self._port: int | None = port
        self._bindir = bindir
        self._settings: dict[str, str | int] = settings
        self._keep = keep
        self._identity: _Identity | None = None
        self._base: str | None = None
        self._scram_roles: list[str] = []
        self._ever_started = False
        self._cleaned_up = False
        self._owner_pid = os.getpid()
        self._lock = threading.RLock()

    # ---- properties -------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port (assigned at the first :meth:`start` unless given)."""
        if self._port is None:
            raise RuntimeError("the port is assigned by start(); start the server first")
        return self._port

    @property
    def host(self) -> str:
        """The address the server listens on: always ``127.0.0.1``."""
        return _HOST

    @property
    def dsn(self) -> str:
        """Superuser DSN, TCP loopback: ``host=127.0.0.1 port=N user=postgres dbname=postgres``."""
        return f"host={_HOST} port={self.port} user={_SUPERUSER} dbname={_DBNAME}"

    @property
    def bindir(self) -> str:
        """The directory of the server programs in use."""
        if self._bindir is None:
            self._bindir = find_postgres_bindir()
        return self._bindir

    @property
    def datadir(self) -> str:
        """The data directory (exists after the first :meth:`start`)."""
        return os.path.join(self._require_base(), "data")

    @property
    def socket_dir(self) -> str:
        """The private Unix socket directory."""
        return os.path.join(self._require_base(), "sock")

    @property
    def logfile(self) -> str:
        """The server log file (inside the data directory)."""
        return os.path.join(self.datadir, _LOGFILE_NAME)

    @property
    def running(self) -> bool:
        """Whether the postmaster is alive (checked, not remembered)."""
        if self._base is None:
            return False
        pid = self._postmaster_pid()
        return pid is not None and _process_alive(pid)

    # ---- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Start the server (running ``initdb`` the first time); wait until it accepts connections.

        A no-op if it is already running.

        :raises RuntimeError: if the server cannot start; the message has the tail of the log.
        """
        with self._lock:
            if self._cleaned_up:
                raise RuntimeError("this TemporaryPostgres was cleaned up; create a new one")
            if self.running:
                return
            self._ensure_datadir()
            retry_port = self._requested_port is None and not self._ever_started
            attempts = _START_ATTEMPTS if retry_port else 1
            for attempt in range(1, attempts + 1):
                if self._port is None:
                    self._port = _free_port()
                self._write_conf()
                error = self._pg_ctl_start()
                if error is None:
                    self._ever_started = True
                    return
                if attempt < attempts and "could not bind" in error:
                    self._port = None  # somebody else took it meanwhile: try another one
                    continue
                raise RuntimeError(error)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``pg_ctl stop -m mode``: ``smart``, ``fast`` or ``immediate``).

        Data and port are kept: :meth:`start` brings the same server back on the same port.
        A no-op if it is not running.
        """
        if mode not in _STOP_MODES:
            raise ValueError(f"invalid stop mode {mode!r}; expected one of {sorted(_STOP_MODES)}")
        with self._lock:
            if not self.running:
                return
            result = self._identity_().run(
                [
                    os.path.join(self.bindir, "pg_ctl"),
                    "-D",
                    self.datadir,
                    "-m",
                    mode,
                    "-w",
                    "-t",
                    str(_PG_CTL_TIMEOUT),
                    "stop",
                ],
                cwd=self._require_base(),
            )
            if result.returncode != 0 and self.running:
                raise RuntimeError(
                    f"pg_ctl stop -m {mode} failed (exit status {result.returncode}):\n"
                    f"{_output_tail(result.stdout)}\n--- server log ---\n{self.log_tail()}"
                )

    def restart(self) -> None:
        """Stop (``fast``) and start again, on the same port."""
        with self._lock:
            self.stop("fast")
            self.start()

    def cleanup(self) -> None:
        """Stop the server (``immediate``) if running and remove its directories.

        With ``keep=True`` the directories are left on disk. Idempotent.
        """
        with self._lock:
            if self._cleaned_up:
                return
            self._cleaned_up = True
            with _live_lock:
                _live.discard(self)
            if self._base is None:
                return
            try:
                self.stop("immediate")
            except Exception:
                self._kill_postmaster()
            if not self._keep:
                shutil.rmtree(self._base, ignore_errors=True)

    def __enter__(self) -> TemporaryPostgres:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        port = self._port if self._port is not None else "?"
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} 127.0.0.1:{port} {state} base={self._base!r}>"

    # ---- roles ------------------------------------------------------------------------

    def create_user(self, name: str, password: str) -> str:
        """Create (or update) a ``LOGIN`` role *name* with *password*; return a DSN for it.

        The role must authenticate with ``scram-sha-256`` (a ``pg_hba.conf`` line for it
        comes before the trust lines); the returned DSN (TCP loopback, database
        ``postgres``) includes the password. The role also gets ``CREATE`` on schema
        ``public``. The server must be running; the call returns once the new
        authentication rules are in force.
        """
        if not name or len(name.encode()) > 63:
            raise ValueError(f"invalid role name: {name!r}")
        if any(c == '"' or not c.isprintable() for c in name):
            raise ValueError(f"role name not supported (quotes or control characters): {name!r}")
        with self._lock:
            if not self.running:
                raise RuntimeError("the server is not running; call start() first")
            ident = sql.Identifier(name)
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                exists = conn.execute(
                    "SELECT 1 FROM pg_roles WHERE rolname = %s", [name]
                ).fetchone()
                verb = sql.SQL("ALTER" if exists else "CREATE")
                conn.execute(
                    sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(
                        verb, ident, sql.Literal(password)
                    )
                )
                conn.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA public TO {}").format(ident))
                if name not in self._scram_roles:
                    self._scram_roles.append(name)
                    self._write_hba()
                    self._reload(conn)
        return make_conninfo(
            "", host=_HOST, port=str(self.port), user=name, dbname=_DBNAME, password=password
        )

    # ---- diagnostics ------------------------------------------------------------------

    def log_tail(self, lines: int = 40, *, start_offset: int = 0) -> str:
        """The last *lines* lines of the server log (from byte *start_offset*)."""
        try:
            with open(self.logfile, "rb") as f:
                f.seek(start_offset)
                data = f.read()
        except (OSError, RuntimeError):
            return "(no server log)"
        return _output_tail(data.decode("utf-8", "replace"), lines) or "(server log is empty)"

    # ---- internals --------------------------------------------------------------------

    def _identity_(self) -> _Identity:
        if self._identity is None:
            self._identity = _Identity.detect()
        return self._identity

    def _require_base(self) -> str:
        if self._base is None:
            raise RuntimeError("no data directory yet; call start() first")
        return self._base

    def _ensure_datadir(self) -> None:
        if self._base is not None:
            return
        identity = self._identity_()
        bindir = self.bindir
        template = _template_datadir(identity, bindir)
        base = _make_private_dir(identity, "pgpoolkit-")
        try:
            os.mkdir(os.path.join(base, "sock"), 0o700)
            identity.chown(os.path.join(base, "sock"))
            datadir = os.path.join(base, "data")
            shutil.copytree(template, datadir, symlinks=True)
            identity.chown_tree(datadir)
            os.chmod(datadir, 0o700)
            with open(os.path.join(datadir, "postgresql.conf"), "a", encoding="utf-8") as f:
                f.write(f"\n# added by pgpoolkit.testing\ninclude '{_CONF_INCLUDE_NAME}'\n")
            self._base = base
            self._write_hba()
        except BaseException:
            self._base = None
            shutil.rmtree(base, ignore_errors=True)
            raise
        if not self._keep:
            with _live_lock:
                _live.add(self)

    def _write_conf(self) -> None:
        conf: dict[str, str | int] = {
            "listen_addresses": _HOST,
            "port": self.port,
            "unix_socket_directories": self.socket_dir,
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": 200,
            "logging_collector": "off",
            "password_encryption": "scram-sha-256",
            "lc_messages": "C",
        }
        conf.update(self._settings)
        text = "# written by pgpoolkit.testing.TemporaryPostgres; rewritten at every start\n"
        text += "".join(f"{key} = {_conf_value(value)}\n" for key, value in conf.items())
        _write_file(self._identity_(), os.path.join(self.datadir, _CONF_INCLUDE_NAME), text)

    def _write_hba(self) -> None:
        lines = ["# written by pgpoolkit.testing.TemporaryPostgres", ""]
        if self._scram_roles:
            lines.append("# roles made with create_user(): password required")
        for role in self._scram_roles:
            quoted = _hba_quote(role)
            lines.append(f"local   all   {quoted}                   scram-sha-256")
            lines.append(f"host    all   {quoted}   127.0.0.1/32    scram-sha-256")
            lines.append(f"host    all   {quoted}   ::1/128         scram-sha-256")
        text = "\n".join(lines) + "\n\n" + _HBA_TRUST
        _write_file(self._identity_(), os.path.join(self.datadir, "pg_hba.conf"), text)

    def _reload(self, conn: psycopg.Connection[TupleRow]) -> None:
        # pg_reload_conf() only signals the postmaster. Backends forked after the postmaster
        # has reloaded inherit its new pg_conf_load_time(): poll new connections for that.
        row = conn.execute("SELECT pg_conf_load_time()").fetchone()
        assert row is not None
        before = row[0]
        conn.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 30.0
        while True:
            with psycopg.connect(self.dsn, autocommit=True) as probe:
                row = probe.execute("SELECT pg_conf_load_time()").fetchone()
            assert row is not None
            if row[0] > before:
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not reload its configuration within 30s")
            time.sleep(0.01)

    def _pg_ctl_start(self) -> str | None:
        """Run ``pg_ctl start -w``; return None on success, else an error message."""
        identity = self._identity_()
        logfile = self.logfile
        if not os.path.exists(logfile):
            _write_file(identity, logfile, "")
        offset = os.path.getsize(logfile)
        result = identity.run(
            [
                os.path.join(self.bindir, "pg_ctl"),
                "-D",
                self.datadir,
                "-l",
                logfile,
                "-w",
                "-t",
                str(_PG_CTL_TIMEOUT),
                "start",
            ],
            cwd=self._require_base(),
        )
        if result.returncode == 0 and self.running:
            return None
        self._kill_postmaster()  # e.g. still starting after the pg_ctl timeout
        return (
            f"PostgreSQL failed to start on {_HOST}:{self._port} "
            f"(pg_ctl exit status {result.returncode}, data directory {self.datadir}):\n"
            f"{_output_tail(result.stdout, 10)}\n"
            f"--- server log ({logfile}) ---\n{self.log_tail(start_offset=offset)}"
        )

    def _postmaster_pid(self) -> int | None:
        try:
            with open(os.path.join(self.datadir, "postmaster.pid"), encoding="utf-8") as f:
                first = f.readline().strip()
            return int(first)
        except (OSError, ValueError, RuntimeError):
            return None

    def _kill_postmaster(self) -> None:
        pid = self._postmaster_pid()
        if pid is None or not _process_alive(pid):
            return
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGQUIT)  # immediate shutdown
        deadline = time.monotonic() + 5.0
        while _process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _process_alive(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (dead, not yet reaped: e.g. a container without an init) is not alive.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[-1].split()
        return not fields or fields[0] != "Z"
    except OSError:
        return True


def _cleanup_at_exit() -> None:
    pid = os.getpid()
    with _live_lock:
        clusters = [pg for pg in _live if pg._owner_pid == pid]
    for pg in clusters:
        with contextlib.suppress(Exception):
            pg.cleanup()
    _remove_templates()


atexit.register(_cleanup_at_exit)
