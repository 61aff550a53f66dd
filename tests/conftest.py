"""Test fixtures: a real PostgreSQL server for every test, never a mock.

The suite starts one throwaway cluster (initdb + pg_ctl on a free port, removed at the end) unless
``PGPOOLKIT_TEST_DSN`` names a server to use. Tests that stop or restart the server, or cut the
network, take the ``own_postgres`` fixture: a cluster of their own.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator

import psycopg
import pytest

from pgpoolkit.testing import TcpProxy, TemporaryPostgres


@pytest.fixture(scope="session")
def dsn() -> Iterator[str]:
    """A DSN for the shared test server (superuser)."""
    env = os.environ.get("PGPOOLKIT_TEST_DSN")
    if env:
        yield env
        return
    # prepared transactions for the two-phase commit tests
    with TemporaryPostgres(settings={"max_prepared_transactions": 10}) as pg:
        yield pg.dsn


@pytest.fixture
def own_postgres() -> Iterator[TemporaryPostgres]:
    """A cluster for this test alone, which it may stop, restart or break."""
    with TemporaryPostgres() as pg:
        yield pg


@pytest.fixture
def proxy(dsn: str) -> Iterator[TcpProxy]:
    """A TCP proxy in front of the shared server: cut or reset it without touching others."""
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    host = str(params.get("host") or "127.0.0.1")
    if host.startswith("/"):
        pytest.skip("the proxy needs a TCP DSN")
    with TcpProxy(host, int(params.get("port") or 5432)) as p:
        yield p


@pytest.fixture
def admin(dsn: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """An autocommit connection outside any pool, to look at and act on the server."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


def server_connections(admin: psycopg.Connection[tuple[object, ...]], app: str) -> int:
    """How many backends the server has for this application_name."""
    row = admin.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app,)
    ).fetchone()
    assert row is not None
    return int(str(row[0]))


def start_threads(n: int, work: Callable[[int], None]) -> Callable[[], None]:
    """Start ``work(i)`` in ``n`` threads; the function returned joins them and re-raises the
    first error."""
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            work(i)
        except BaseException as ex:
            errors.append(ex)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()

    def join() -> None:
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)
        if errors:
            raise errors[0]

    return join


def run_in_threads(work: Callable[[int], None], n: int) -> None:
    """Run ``work(0)`` ... ``work(n - 1)`` in ``n`` threads at once; fail with the first error
    any of them raised."""
    start_threads(n, work)()
