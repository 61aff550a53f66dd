"""many-clients: 200 threads and 1,000 asyncio tasks over 10 server connections, each sleeping
a think time of 1 ms then running one ``SELECT 1`` (the unit, which is what is timed):
pgpoolkit transaction mode with a persistent client per worker, psycopg_pool with a
``connection()`` per unit, and PgBouncer in transaction mode with a persistent psycopg
connection per worker (when installed). ``server conns``: the peak seen in pg_stat_activity."""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

from harness import (
    DRIVERS,
    NO_PREPARE,
    POOL_SIZE,
    Contender,
    Context,
    Result,
    Scenario,
    Target,
    Threads,
    find,
    fmt,
    scenario,
    start_pgbouncer,
)

ORDER = 50
THINK = 0.001
GOAL = 1.3
PK, PP, PGB = (
    "pgpoolkit transaction, persistent clients",
    "psycopg_pool connection()",
    "pgbouncer transaction",
)


def many(ctx: Context, driver: type[Threads], n: int, seconds: float) -> Scenario:
    def build(stack: ExitStack) -> list[Contender]:
        d = driver(stack)

        def kw(app: str) -> dict[str, Any]:
            return {"kwargs": {"application_name": app, "autocommit": True}}

        pk = d.pgpoolkit(ctx.dsn, mode="transaction", **kw(f"bench-many-pk-{d.kind}"))
        clients = [d.client(pk) for _ in range(n)]
        pp = d.psycopg_pool(ctx.dsn, **kw(f"bench-many-pp-{d.kind}"))
        out = [
            d.contender(PK, n, [d.query(c) for c in clients], THINK, app=f"bench-many-pk-{d.kind}"),
            d.contender(PP, n, d.block(pp), THINK, app=f"bench-many-pp-{d.kind}"),
        ]
        bouncer = start_pgbouncer(stack, ctx, n)
        if bouncer is not None:
            app = f"bench-many-pgb-{d.kind}"
            conns = [
                d.connect(bouncer, autocommit=True, application_name=app, **NO_PREPARE)
                for _ in range(n)
            ]
            out.append(
                Contender(PGB, lambda s: d.run(n, lambda i: d.query(conns[i]), s, THINK), app=app)
            )
        return out

    return scenario(
        driver.title("many-clients", n),
        "throughput",
        seconds,
        build,
        baselines={"psycopg_pool": PP, "pgbouncer": PGB},
        description=f"{n:,} clients, SELECT 1 after {THINK * 1000:g} ms think time; "
        f"{POOL_SIZE} server conns",
    )


def scenarios(ctx: Context) -> list[Scenario]:
    seconds = ctx.pick(0.3, 0.5, 0.1)
    return [
        many(ctx, d, ctx.pick(n, n, small), seconds)
        for d, n, small in zip(DRIVERS, (200, 1000), (12, 30), strict=True)
    ]


def targets(results: list[Result], ctx: Context) -> list[Target]:
    out = []
    for name in ("many-clients, 200 threads", "many-clients-asyncio, 1,000 tasks"):
        pk, pgb = find(results, name, PK), find(results, name, PGB)
        goal = f">= {GOAL} x PgBouncer's throughput, lower p99, <= {POOL_SIZE} server conns"
        if pk is None or pgb is None:
            why = (
                "not run"
                if pk is None
                else next((n for n in ctx.notes if "pgbouncer" in n), "no PgBouncer")
            )
            out.append(Target(f"{name}: vs PgBouncer", goal, f"not measured ({why})", None))
            continue
        ratio, conns = pk.ratio_to(pgb), pk.extra("server conns")
        measured = (
            f"{fmt(ratio)} x, p99 {pk.p99_us / 1000:.1f} ms vs {pgb.p99_us / 1000:.1f} ms, "
            f"{fmt(conns, '.0f')} server conns"
        )
        met = (
            ratio is not None
            and ratio >= GOAL
            and pk.p99_us < pgb.p99_us
            and (conns or 0) <= POOL_SIZE
        )
        out.append(Target(f"{name}: vs PgBouncer", goal, measured, met))
    return out
