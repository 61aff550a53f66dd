"""Tests of pgpoolkit.testing: the throwaway cluster and the fault-injecting proxy."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgpoolkit.testing import TcpProxy, TemporaryPostgres, find_postgres_bindir


@pytest.fixture(scope="module")
def pg() -> Iterator[TemporaryPostgres]:
    with TemporaryPostgres(settings={"application_name": "pgpoolkit-tests"}) as server:
        yield server


@pytest.fixture
def proxy(pg: TemporaryPostgres) -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", pg.port) as p:
        yield p


@pytest.fixture
def no_libpq_password(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-such-pgpass"))


def query_one(conn: psycopg.Connection[Any], query: str) -> Any:
    row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


# ---- TemporaryPostgres -------------------------------------------------------------------


def test_find_postgres_bindir() -> None:
    bindir = find_postgres_bindir()
    assert os.access(os.path.join(bindir, "initdb"), os.X_OK)
    assert os.access(os.path.join(bindir, "pg_ctl"), os.X_OK)


def test_find_postgres_bindir_bad_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PGPOOLKIT_PG_BINDIR", str(tmp_path))
    with pytest.raises(RuntimeError, match="apt-get install -y postgresql"):
        find_postgres_bindir()


def test_connect_and_settings(pg: TemporaryPostgres) -> None:
    assert pg.running
    assert pg.dsn == f"host=127.0.0.1 port={pg.port} user=postgres dbname=postgres"
    with psycopg.connect(pg.dsn) as conn:
        assert query_one(conn, "SELECT 1") == 1
        assert query_one(conn, "SHOW port") == str(pg.port)
        assert query_one(conn, "SHOW fsync") == "off"
        assert query_one(conn, "SHOW max_connections") == "200"
        assert query_one(conn, "SHOW listen_addresses") == "127.0.0.1"
        assert query_one(conn, "SHOW application_name") == "pgpoolkit-tests"
        assert query_one(conn, "SHOW unix_socket_directories") == pg.socket_dir
        assert query_one(conn, "SELECT current_user") == "postgres"
    assert os.path.isfile(pg.logfile)


def test_stop_and_start_on_same_port(pg: TemporaryPostgres) -> None:
    port = pg.port
    with psycopg.connect(pg.dsn) as conn:
        pg.stop()
        assert not pg.running
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        assert conn.broken
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg.dsn, connect_timeout=5)
    pg.stop()  # no-op when stopped
    pg.start()
    assert pg.running and pg.port == port
    pg.restart()
    assert pg.port == port
    with psycopg.connect(pg.dsn) as conn:
        assert query_one(conn, "SELECT 1") == 1


def test_create_user_requires_scram_password(
    pg: TemporaryPostgres, no_libpq_password: None
) -> None:
    password = "s3cret pass'word\\"
    dsn = pg.create_user("alice", password)
    params = conninfo_to_dict(dsn)
    assert params["password"] == password
    assert params["user"] == "alice"
    assert params["port"] == str(pg.port)

    with psycopg.connect(dsn) as conn:
        assert query_one(conn, "SELECT current_user") == "alice"

    del params["password"]
    with pytest.raises(psycopg.OperationalError, match="no password supplied"):
        psycopg.connect(make_conninfo("", **params))
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(make_conninfo("", **params, password="wrong"))

    with psycopg.connect(pg.dsn) as conn:
        stored = query_one(conn, "SELECT rolpassword FROM pg_authid WHERE rolname = 'alice'")
        assert isinstance(stored, str) and stored.startswith("SCRAM-SHA-256$")
        # the superuser still gets in without a password
        assert query_one(conn, "SELECT current_user") == "postgres"

    # the rules survive a restart; creating the same user again just changes the password
    pg.restart()
    dsn2 = pg.create_user("alice", "other")
    with psycopg.connect(dsn2) as conn:
        assert query_one(conn, "SELECT current_user") == "alice"
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(dsn)


# ---- TcpProxy ----------------------------------------------------------------------------


def test_proxy_rejects_non_loopback_target() -> None:
    with pytest.raises(ValueError, match="loopback"):
        TcpProxy("192.0.2.1", 5432)


def test_proxy_dsn_for(proxy: TcpProxy) -> None:
    params = conninfo_to_dict(proxy.dsn_for("host=db.example hostaddr=10.0.0.1 port=6432 user=u"))
    assert params == {"host": "127.0.0.1", "port": str(proxy.port), "user": "u"}


def test_proxy_forwards(pg: TemporaryPostgres, proxy: TcpProxy) -> None:
    with psycopg.connect(proxy.dsn_for(pg.dsn)) as conn:
        assert query_one(conn, "SELECT 42") == 42
        assert query_one(conn, "SELECT inet_server_port()") == pg.port
        assert proxy.active_connections == 1
        big = query_one(conn, "SELECT repeat('x', 1000000)")
        assert big == "x" * 1_000_000
    deadline = time.monotonic() + 5
    while proxy.active_connections and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proxy.active_connections == 0


def test_proxy_reset_all_breaks_open_connections(pg: TemporaryPostgres, proxy: TcpProxy) -> None:
    dsn = proxy.dsn_for(pg.dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        pid = query_one(conn, "SELECT pg_backend_pid()")
        proxy.reset_all()
        assert proxy.active_connections == 0
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        assert conn.broken
    # new connections still work
    with psycopg.connect(dsn) as conn:
        assert query_one(conn, "SELECT 1") == 1
    # and the server side of the reset connection went away too
    with psycopg.connect(pg.dsn) as conn:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            cur = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid])
            row = cur.fetchone()
            assert row is not None
            if row[0] == 0:
                break
            time.sleep(0.02)
        else:
            pytest.fail("the server-side backend survived reset_all()")


def test_proxy_pause_fails_fast_and_resume(pg: TemporaryPostgres, proxy: TcpProxy) -> None:
    dsn = proxy.dsn_for(pg.dsn)
    with psycopg.connect(dsn) as conn:
        proxy.pause()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    t0 = time.monotonic()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=10)
    assert time.monotonic() - t0 < 2
    proxy.resume()
    with psycopg.connect(dsn) as conn:
        assert query_one(conn, "SELECT 1") == 1


def test_proxy_blackhole_hangs_until_resume(pg: TemporaryPostgres, proxy: TcpProxy) -> None:
    with psycopg.connect(proxy.dsn_for(pg.dsn), autocommit=True) as conn:
        proxy.blackhole()
        result: list[object] = []
        worker = threading.Thread(target=lambda: result.append(query_one(conn, "SELECT 7")))
        worker.start()
        worker.join(0.3)
        assert worker.is_alive() and not result  # the query hangs

        # a new connection is accepted, but nothing comes back
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as raw:
            raw.sendall(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")  # SSLRequest
            raw.settimeout(0.2)
            with pytest.raises(TimeoutError):
                raw.recv(1)
            proxy.resume()
            raw.settimeout(5)
            assert raw.recv(1) in (b"N", b"S")

        worker.join(5)
        assert result == [7]
        assert query_one(conn, "SELECT 8") == 8


def test_proxy_close_is_quick(pg: TemporaryPostgres) -> None:
    proxy = TcpProxy("127.0.0.1", pg.port)
    proxy.start()
    port = proxy.port
    conn = psycopg.connect(proxy.dsn_for(pg.dsn))
    proxy.blackhole()
    t0 = time.monotonic()
    proxy.close()
    assert time.monotonic() - t0 < 2
    assert threading.active_count() < 50
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


# ---- the documented example (docs/testing.md) ------------------------------------------------


def test_the_documented_pytest_fixtures_work(tmp_path: Path) -> None:
    """docs/testing.md's conftest.py and test_app.py, run by pytest as a user would."""
    import re
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    doc = (root / "docs" / "testing.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    conftest = next(b for b in blocks if "def postgres(" in b)
    tests = next(b for b in blocks if "def test_" in b)
    (tmp_path / "conftest.py").write_text(conftest)
    (tmp_path / "test_app.py").write_text(tests)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(root / "src")},
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout
