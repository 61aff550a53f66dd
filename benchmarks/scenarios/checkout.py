"""Checkout-only: acquire + release with no query, pgpoolkit vs psycopg_pool, API for API
(``getconn/putconn``, ``connection()``), threads and asyncio tasks, unpinned and pinned to one
CPU. The ratio is pgpoolkit's time per checkout over psycopg_pool's."""

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
    can_pin,
    find,
    pinned,
    scenario,
    target,
)

ORDER = 10
APIS = ("getconn/putconn", "connection()")
GOAL = 0.5


def checkout(ctx: Context, driver: type[Threads], n: int, seconds: float) -> Scenario:
    def build(stack: ExitStack) -> list[Contender]:
        d = driver(stack)
        pools = {
            "pgpoolkit": d.pgpoolkit(ctx.dsn, kwargs={"application_name": "bench-pgpoolkit"}),
            "psycopg_pool": d.psycopg_pool(ctx.dsn, kwargs={"application_name": "bench-pp"}),
        }
        return [
            d.contender(
                f"{who} {api}",
                n,
                d.checkout(pool, api),
                baselines={"psycopg_pool": f"psycopg_pool {api}"},
            )
            for who, pool in pools.items()
            for api in APIS
        ]

    return scenario(
        driver.title("checkout", n),
        "time",
        seconds,
        build,
        description="acquire + release, no query; pools of 10, full",
    )


def scenarios(ctx: Context) -> list[Scenario]:
    seconds = ctx.pick(0.1, 0.3, 0.03)
    out = [checkout(ctx, d, n, seconds) for d in DRIVERS for n in ctx.pick((1, 4), (1, 4), (2,))]
    if can_pin():
        out += [pinned(s) for s in list(out)]
    else:
        ctx.note("checkout: not pinned (needs os.sched_setaffinity and 2+ CPUs)")
    return out


def targets(results: list[Result], ctx: Context) -> list[Target]:
    out = []
    for group in ("checkout", "checkout-asyncio"):
        worker = "task" if "asyncio" in group else "thread"
        for n in (1, 4):
            for pin in ("", ", pinned to 1 CPU"):
                name = f"{group}, {n} {worker}{'s' if n > 1 else ''}{pin}"
                for api in APIS:
                    r = find(results, name, f"pgpoolkit {api}")
                    out.append(
                        target(
                            f"{name}: {api}",
                            f"<= {GOAL} x psycopg_pool's time",
                            r.ratio() if r else None,
                            lambda v: v <= GOAL,
                        )
                    )
    return out
