"""select1: one ``SELECT 1`` (autocommit) per checkout, pgpoolkit and psycopg_pool
``connection()`` vs raw persistent psycopg connections (one per worker: the limit a pool can only
approach), threads and asyncio tasks. Ratios: throughput over raw psycopg's and psycopg_pool's."""

from __future__ import annotations

from contextlib import ExitStack

from harness import (
    DRIVERS,
    Contender,
    Context,
    Result,
    Scenario,
    Target,
    Threads,
    find,
    scenario,
    target,
)

ORDER = 20
RAW, PK, PP = (
    "raw psycopg (1 conn per worker)",
    "pgpoolkit connection()",
    "psycopg_pool connection()",
)


def select1(ctx: Context, driver: type[Threads], n: int, seconds: float) -> Scenario:
    def build(stack: ExitStack) -> list[Contender]:
        d = driver(stack)
        raws = [d.connect(ctx.dsn, autocommit=True) for _ in range(n)]
        pk = d.pgpoolkit(ctx.dsn, kwargs={"autocommit": True})
        pp = d.psycopg_pool(ctx.dsn, kwargs={"autocommit": True})
        return [
            d.contender(RAW, n, [d.query(c) for c in raws]),
            d.contender(PK, n, d.block(pk)),
            d.contender(PP, n, d.block(pp)),
        ]

    return scenario(
        driver.title("select1", n),
        "throughput",
        seconds,
        build,
        baselines={"raw": RAW, "psycopg_pool": PP},
        description="one SELECT 1 per unit, autocommit; pools of 10, full",
    )


def scenarios(ctx: Context) -> list[Scenario]:
    seconds = ctx.pick(0.15, 0.3, 0.03)
    return [
        select1(ctx, d, n, seconds)
        for d in DRIVERS
        for n in ctx.pick((16,) if d.kind == "asyncio" else (4,), (1, 4, 16), (3,))
    ]


def targets(results: list[Result], ctx: Context) -> list[Target]:
    threads = find(results, "select1, 4 threads", PK)
    tasks = find(results, "select1-asyncio, 16 tasks", PK)
    return [
        target(
            "select1, 4 threads, session: pgpoolkit vs raw",
            ">= 0.90 x raw persistent psycopg's throughput",
            threads.ratio("raw") if threads else None,
            lambda v: v >= 0.9,
        ),
        target(
            "select1, 4 threads, session: pgpoolkit vs psycopg_pool",
            ">= 1.30 x psycopg_pool's throughput",
            threads.ratio("psycopg_pool") if threads else None,
            lambda v: v >= 1.3,
        ),
        target(
            "select1-asyncio, 16 tasks: pgpoolkit vs raw",
            ">= 0.90 x raw persistent psycopg's throughput",
            tasks.ratio("raw") if tasks else None,
            lambda v: v >= 0.9,
        ),
    ]
