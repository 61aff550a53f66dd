"""A FastAPI (Starlette) application on a pgpoolkit AsyncPool in transaction mode.

pip install "pgpoolkit[fastapi,prometheus]" uvicorn
PGPOOLKIT_DSN="host=127.0.0.1 dbname=postgres user=postgres" uvicorn examples.fastapi_app.app:app

- The pool opens and closes with the application (the lifespan).
- Each request that needs the database gets a pooled connection from a dependency; its
  transaction commits before the response is sent, so a failed COMMIT is an error response.
- Transaction mode: a request holds a server connection only while its transaction runs, not
  while it waits for something else (here, a call to another service): 50 such requests over
  5 server connections are served together, where session mode serves them 5 at a time.
- /metrics serves the pool's figures for Prometheus.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel

import pgpoolkit
from pgpoolkit.integrations.prometheus import PoolCollector

#: the server: a libpq connection string (PGHOST, PGUSER... fill in what it leaves out)
DSN = os.environ.get("PGPOOLKIT_DSN", "dbname=postgres")

#: what GET /report waits for before its query: a call to another service, say
OTHER_SERVICE_SECONDS = 0.2

SCHEMA = """
CREATE TABLE IF NOT EXISTS fastapi_items (
    id int PRIMARY KEY,
    name text NOT NULL,
    -- checked at COMMIT, not at INSERT: an item may name a parent added later in its transaction
    parent int REFERENCES fastapi_items DEFERRABLE INITIALLY DEFERRED
)
"""


def create_app(dsn: str = DSN, *, mode: str = "transaction", max_size: int = 5) -> FastAPI:
    """The application, with a pool of at most ``max_size`` server connections in ``mode``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with pgpoolkit.AsyncPool(
            dsn, mode=mode, min_size=1, max_size=max_size, timeout=10.0, name="web"
        ) as pool:
            async with pool.connection() as conn:
                await conn.execute(SCHEMA)
            registry = CollectorRegistry()
            registry.register(PoolCollector(pool))
            app.state.pool = pool
            app.state.registry = registry
            yield
        # leaving the block closed the pool: its server connections are closed

    app = FastAPI(lifespan=lifespan)
    app.include_router(router)
    return app


async def get_connection(request: Request) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A pooled connection for the request: committed when the endpoint returns, rolled back if
    it raised."""
    pool: pgpoolkit.AsyncPool = request.app.state.pool
    async with pool.connection() as conn:
        yield conn


# scope="function" (FastAPI 0.121.1 and later): the code after the dependency's yield, here the
# COMMIT at the end of the connection() block, runs before the response is sent. With the
# default scope ("request") it runs after: a COMMIT that fails there (a deferred constraint, a
# serialization failure, a lost connection) leaves the client with a 200 for a row that is not
# there. With scope="function" the failure becomes the response: a 500, or what an exception
# handler makes of it.
Connection = Annotated[psycopg.AsyncConnection[Any], Depends(get_connection, scope="function")]


class Item(BaseModel):
    id: int
    name: str
    parent: int | None = None


router = APIRouter()  # the routes; create_app() adds them to each application


@router.post("/items", status_code=201)
async def create_item(item: Item, conn: Connection) -> Item:
    await conn.execute(
        "INSERT INTO fastapi_items (id, name, parent) VALUES (%s, %s, %s)",
        (item.id, item.name, item.parent),
    )
    return item  # the COMMIT runs after this, before the response goes out


@router.get("/items/{item_id}")
async def read_item(item_id: int, conn: Connection) -> Item:
    cur = await conn.execute("SELECT id, name, parent FROM fastapi_items WHERE id = %s", (item_id,))
    row = await cur.fetchone()
    if row is None:
        raise HTTPException(status_code=404, detail="no such item")
    return Item(id=row[0], name=row[1], parent=row[2])


@router.get("/report")
async def report(conn: Connection) -> dict[str, int]:
    # In transaction mode the connection holds no server connection yet: others use it while
    # this request waits. In session mode it was bound when the dependency gave it.
    await asyncio.sleep(OTHER_SERVICE_SECONDS)
    cur = await conn.execute("SELECT count(*) FROM fastapi_items")
    row = await cur.fetchone()
    return {"items": int(row[0]) if row else 0}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)


app = create_app()
