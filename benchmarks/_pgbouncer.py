"""PgBouncer in transaction mode on loopback, started and stopped by a benchmark.

Used by bench_modes.py (many-clients) and bench_txn.py. PgBouncer is optional: without the
program the contender is left out and the table says why.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

__all__ = [
    "NO_PREPARE",
    "PgBouncer",
    "find_pgbouncer",
    "pgbouncer_version",
    "start_pgbouncer",
]

#: PgBouncer before 1.21 does not know prepared statements in transaction mode: psycopg must
#: not prepare through it (psycopg prepares a query it ran 5 times, by default)
NO_PREPARE: dict[str, Any] = {"prepare_threshold": None}


def _one_line(ex: BaseException) -> str:
    return " ".join(str(ex).split()) or type(ex).__name__


class PgBouncer:
    """A PgBouncer in transaction mode on 127.0.0.1, in front of the server of ``dsn``."""

    def __init__(self, program: str, dsn: str, pool_size: int, max_clients: int) -> None:
        self.program = program
        self.server = conninfo_to_dict(dsn)
        self.pool_size = pool_size
        self.max_clients = max_clients
        self.port = 0
        self.dir = ""
        self.proc: subprocess.Popen[bytes] | None = None

    def dsn(self, **kwargs: Any) -> str:
        user = self.server.get("user") or pwd.getpwuid(os.getuid()).pw_name
        return psycopg.conninfo.make_conninfo(
            host="127.0.0.1", port=self.port, dbname="bench", user=user, **kwargs
        )

    def start(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="pgpoolkit-bench-pgbouncer-")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        server = {
            k: v
            for k, v in self.server.items()
            if k in ("host", "port", "dbname", "user", "password")
        }
        server.setdefault("dbname", server.get("user") or pwd.getpwuid(os.getuid()).pw_name)
        user = self.server.get("user") or pwd.getpwuid(os.getuid()).pw_name
        target = " ".join(f"{k}={_ini_value(str(v))}" for k, v in server.items())
        ini = os.path.join(self.dir, "pgbouncer.ini")
        with open(ini, "w", encoding="utf-8") as f:
            f.write(
                "[databases]\n"
                f"bench = {target}\n"
                "[pgbouncer]\n"
                "listen_addr = 127.0.0.1\n"
                f"listen_port = {self.port}\n"
                "unix_socket_dir =\n"
                "auth_type = trust\n"
                f"auth_file = {os.path.join(self.dir, 'userlist.txt')}\n"
                "pool_mode = transaction\n"
                f"default_pool_size = {self.pool_size}\n"
                f"min_pool_size = {self.pool_size}\n"
                "reserve_pool_size = 0\n"
                f"max_client_conn = {self.max_clients + 100}\n"
                f"max_db_connections = {self.pool_size}\n"
                f"logfile = {os.path.join(self.dir, 'pgbouncer.log')}\n"
                f"pidfile = {os.path.join(self.dir, 'pgbouncer.pid')}\n"
                "log_connections = 0\n"
                "log_disconnections = 0\n"
            )
        with open(os.path.join(self.dir, "userlist.txt"), "w", encoding="utf-8") as f:
            f.write(f'"{user}" ""\n')
        argv = [self.program, "-q", ini]
        if os.geteuid() == 0:  # PgBouncer refuses to run as root
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                account = pwd.getpwnam("nobody")
            for name in (self.dir, *(os.path.join(self.dir, f) for f in os.listdir(self.dir))):
                os.chown(name, account.pw_uid, account.pw_gid)
            argv[1:1] = ["-u", account.pw_name]
        with open(os.path.join(self.dir, "stderr.log"), "wb") as stderr:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr
            )
        deadline = time.monotonic() + 10.0
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"pgbouncer exited with code {self.proc.returncode}: {self._log_tail()}"
                )
            try:
                with psycopg.connect(self.dsn(connect_timeout=2)) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.Error as ex:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"pgbouncer did not answer: {_one_line(ex)}; {self._log_tail()}"
                    ) from None
                time.sleep(0.05)

    def _log_tail(self) -> str:
        text = ""
        for name in ("stderr.log", "pgbouncer.log"):
            try:
                with open(os.path.join(self.dir, name), encoding="utf-8", errors="replace") as f:
                    text += f.read()
            except OSError:
                pass
        return " | ".join(text.strip().splitlines()[-3:]) or "(no log)"

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(5.0)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = ""


def _ini_value(value: str) -> str:
    if value and not any(c in value for c in " '\\="):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def find_pgbouncer(option: str | None) -> tuple[str | None, str | None]:
    """The program to run, or None and why."""
    if option == "off":
        return None, "pgbouncer: skipped (--pgbouncer off)"
    if option is not None:
        found = shutil.which(option)
        return (found, None) if found else (None, f"pgbouncer: skipped ({option} not found)")
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/bin")
    if found is None:
        return None, "pgbouncer: skipped (no pgbouncer program installed)"
    return found, None


def pgbouncer_version(program: str | None) -> str | None:
    if program is None:
        return None
    try:
        out = subprocess.run(
            [program, "--version"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
    except OSError:
        return None
    return out.splitlines()[0].strip() if out.strip() else None


def start_pgbouncer(
    stack: ExitStack,
    program: str | None,
    dsn: str,
    pool_size: int,
    max_clients: int,
    notes: list[str],
) -> PgBouncer | None:
    """A started PgBouncer (stopped when ``stack`` closes), or None: no ``program``, or it did
    not start (the reason goes to ``notes``, once, and to stderr)."""
    if program is None:
        return None
    bouncer = PgBouncer(program, dsn, pool_size, max_clients)
    stack.callback(bouncer.stop)
    try:
        bouncer.start()
    except (OSError, RuntimeError) as ex:
        note = f"pgbouncer: skipped, it did not start: {_one_line(ex)}"
        if note not in notes:
            notes.append(note)
        print(f"\n{note}", file=sys.stderr)
        return None
    return bouncer
