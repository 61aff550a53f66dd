"""connect-per-request: one ``SELECT 1`` (autocommit) per unit on a connection had for it: a new
psycopg connection per unit (an application without a pool: the baseline), pgpoolkit
``connection()``, the module-level drop-in ``pgpoolkit.connect()`` + ``close()``, psycopg_pool
``connection()``. Threads. Ratio: throughput over a new connection per unit's."""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

import psycopg
from harness import Contender, Context, Scenario, Threads, plural, scenario

import pgpoolkit

ORDER = 70
NEW = "new psycopg connection per unit"


def connect(ctx: Context, n: int, seconds: float) -> Scenario:
    def build(stack: ExitStack) -> list[Contender]:
        d = Threads(stack)
        dropin: dict[str, Any] = {"autocommit": True, "max_size": 10}
        stack.callback(pgpoolkit.close_process_pools)
        pgpoolkit.connect(ctx.dsn, **dropin).close()

        def new() -> None:
            with psycopg.connect(ctx.dsn, autocommit=True) as conn:
                conn.execute("SELECT 1").fetchone()

        def dropin_op() -> None:
            with pgpoolkit.connect(ctx.dsn, **dropin) as conn:
                conn.execute("SELECT 1").fetchone()

        pk = d.pgpoolkit(ctx.dsn, kwargs={"autocommit": True})
        pp = d.psycopg_pool(ctx.dsn, kwargs={"autocommit": True})
        return [
            d.contender(NEW, n, new),
            d.contender("pgpoolkit connection()", n, d.block(pk)),
            d.contender("pgpoolkit.connect() + close()", n, dropin_op),
            d.contender("psycopg_pool connection()", n, d.block(pp)),
        ]

    return scenario(
        f"connect-per-request, {plural(n, 'thread')}",
        "throughput",
        seconds,
        build,
        baselines={"new conn": NEW},
        description="one SELECT 1 per unit, on a new connection or a pooled one; pools of 10",
    )


def scenarios(ctx: Context) -> list[Scenario]:
    return [connect(ctx, n, ctx.pick(0.2, 0.3, 0.05)) for n in ctx.pick((1, 4), (1, 4), (1,))]
