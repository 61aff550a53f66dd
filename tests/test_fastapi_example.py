"""examples/fastapi_app against the real server, through httpx's ASGI transport.

The application runs its own lifespan (the pool opens and closes with it); the requests go through
FastAPI's routing, dependencies and exception handling as they would under a server.
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import psycopg
import pytest

fastapi = pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
pytest.importorskip("prometheus_client")

APP_PY = Path(__file__).resolve().parent.parent / "examples" / "fastapi_app" / "app.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fastapi_example_app", APP_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


example = load_example()

#: the example's dependency under FastAPI's default scope ("request"): its exit, the COMMIT, runs
#: after the response is sent
LateConnection = Annotated[psycopg.AsyncConnection[Any], fastapi.Depends(example.get_connection)]


@pytest.fixture(autouse=True)
def no_items(admin: psycopg.Connection[Any]) -> Iterator[None]:
    admin.execute("DROP TABLE IF EXISTS fastapi_items")
    yield
    admin.execute("DROP TABLE IF EXISTS fastapi_items")


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[Any]:
    """The application's lifespan around an httpx client that calls it."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            yield client


def item_ids(admin: psycopg.Connection[Any]) -> list[int]:
    return [int(row[0]) for row in admin.execute("SELECT id FROM fastapi_items ORDER BY id")]


async def test_items_are_stored_and_read(dsn: str, admin: psycopg.Connection[Any]) -> None:
    app = example.create_app(dsn)
    async with serving(app) as client:
        created = await client.post("/items", json={"id": 1, "name": "one"})
        assert created.status_code == 201
        child = await client.post("/items", json={"id": 2, "name": "two", "parent": 1})
        assert child.status_code == 201
        read = await client.get("/items/2")
        assert read.status_code == 200
        assert read.json() == {"id": 2, "name": "two", "parent": 1}
        assert (await client.get("/items/3")).status_code == 404
        pool = app.state.pool
    assert item_ids(admin) == [1, 2]
    assert pool.closed  # the lifespan closed it


async def test_a_failed_commit_is_an_error_response(
    dsn: str, admin: psycopg.Connection[Any]
) -> None:
    """The deferred foreign key fails at COMMIT, after the endpoint returned: the client gets a
    500, not the endpoint's 201."""
    app = example.create_app(dsn)
    async with serving(app) as client:
        response = await client.post("/items", json={"id": 1, "name": "orphan", "parent": 99})
        assert response.status_code == 500
        assert (await client.get("/items/1")).status_code == 404
        stats = app.state.pool.stats()
        assert stats.servers_active == 0  # the failed transaction's server connection came back
    assert item_ids(admin) == []


async def test_with_the_default_scope_a_failed_commit_answers_success(
    dsn: str, admin: psycopg.Connection[Any]
) -> None:
    """Why the example declares scope="function": the same dependency with FastAPI's default
    scope commits after the response is sent, and the client is told the row was created."""
    app = example.create_app(dsn)

    @app.post("/late-items", status_code=201)
    async def create_late(item: example.Item, conn: LateConnection) -> example.Item:
        await conn.execute(
            "INSERT INTO fastapi_items (id, name, parent) VALUES (%s, %s, %s)",
            (item.id, item.name, item.parent),
        )
        return item

    async with serving(app) as client:
        response = await client.post("/late-items", json={"id": 1, "name": "lost", "parent": 99})
        assert response.status_code == 201
    assert item_ids(admin) == []  # the COMMIT failed after the 201 went out


async def time_reports(dsn: str, mode: str) -> tuple[float, Any]:
    """50 concurrent GET /report (each waits 200 ms, then queries) over 5 server connections:
    the seconds they took, and the pool's stats."""
    app = example.create_app(dsn, mode=mode, max_size=5)
    async with serving(app) as client:
        started = time.monotonic()
        responses = await asyncio.gather(*(client.get("/report") for _ in range(50)))
        elapsed = time.monotonic() - started
        assert [r.status_code for r in responses] == [200] * 50
        stats = app.state.pool.stats()
    return elapsed, stats


async def test_transaction_mode_serves_waiting_requests_together(dsn: str) -> None:
    session_s, session_stats = await time_reports(dsn, "session")
    transaction_s, transaction_stats = await time_reports(dsn, "transaction")
    for stats in (session_stats, transaction_stats):
        assert stats.connections_opened_total <= 5
    # session mode: each request holds one of the 5 server connections through its 200 ms
    # wait, so 50 requests take 10 rounds at least
    assert session_s >= 10 * example.OTHER_SERVICE_SECONDS * 0.95
    # transaction mode: the waits overlap, only the queries share the 5 connections
    assert transaction_s < 0.6 * session_s, (transaction_s, session_s)


async def test_metrics(dsn: str) -> None:
    app = example.create_app(dsn)
    async with serving(app) as client:
        await client.get("/items/1")
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert 'pgpoolkit_servers_idle{mode="transaction",pool="web"}' in response.text
    assert 'pgpoolkit_requests_total{mode="transaction",pool="web"}' in response.text
