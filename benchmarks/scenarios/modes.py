"""Per-statement cost of transaction and statement pooling next to session pooling: every
worker holds a client made once with ``pool.connect()``; a unit is one ``SELECT 1``
(autocommit), or ``SELECT 1`` + ``commit()`` (an implicit transaction). Threads and asyncio
tasks; each mode its own pool of max(10, workers) connections. Ratio: time per statement over
session mode's with the same unit, and over raw persistent psycopg's."""

from __future__ import annotations

from contextlib import ExitStack

from harness import (
    DRIVERS,
    POOL_SIZE,
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

ORDER = 30
GOAL = 1.10
SESSION, TRANSACTION = "pgpoolkit session", "pgpoolkit transaction"


def per_statement(ctx: Context, driver: type[Threads], n: int, seconds: float) -> Scenario:
    size = max(POOL_SIZE, n)

    def build(stack: ExitStack) -> list[Contender]:
        d = driver(stack)

        def clients(mode: str, autocommit: bool, pool_size: int = size) -> list[object]:
            pool = d.pgpoolkit(
                ctx.dsn, size=pool_size, mode=mode, kwargs={"autocommit": autocommit}
            )
            return [d.client(pool) for _ in range(n)]

        def contender(name: str, conns: list[object], commit: bool = False) -> Contender:
            base = {"session": SESSION + ", + commit", "raw": "raw psycopg, + commit"}
            units = [d.query(c, commit=commit) for c in conns]
            label = name + (", + commit" if commit else "")
            return d.contender(label, n, units, baselines=base if commit else {})

        ac_clients = clients("transaction", False)
        for c in ac_clients:  # the client turns autocommit on itself
            if d.kind == "threads":
                c.autocommit = True  # type: ignore[attr-defined]
            else:
                d.wait(c.set_autocommit(True))  # type: ignore[attr-defined]
        out = [
            contender("raw psycopg", [d.connect(ctx.dsn, autocommit=True) for _ in range(n)]),
            contender(SESSION, clients("session", True)),
            contender(TRANSACTION, clients("transaction", True)),
            contender("pgpoolkit statement", clients("statement", True)),
            contender(TRANSACTION + ", conn.autocommit=True", ac_clients),
        ]
        if n > POOL_SIZE:  # what transaction mode is for: n clients over 10 server conns
            out.append(
                contender(
                    TRANSACTION + ", 10 server conns", clients("transaction", True, POOL_SIZE)
                )
            )
        out += [
            contender("raw psycopg", [d.connect(ctx.dsn) for _ in range(n)], commit=True),
            contender(SESSION, clients("session", False), commit=True),
            contender(TRANSACTION, clients("transaction", False), commit=True),
        ]
        return out

    return scenario(
        driver.title("per-statement", n),
        "time",
        seconds,
        build,
        baselines={"session": SESSION, "raw": "raw psycopg"},
        description=f"persistent clients, one SELECT 1 per unit; pools of {size}, one per mode",
    )


def scenarios(ctx: Context) -> list[Scenario]:
    seconds = ctx.pick(0.1, 0.25, 0.03)
    return [
        per_statement(ctx, d, n, seconds)
        for d in DRIVERS
        for n in ctx.pick(
            (16,) if d.kind == "asyncio" else (4,), (1, 16) if d.kind == "asyncio" else (1, 4), (3,)
        )
    ]


def targets(results: list[Result], ctx: Context) -> list[Target]:
    out = []
    for name in ("per-statement, 4 threads", "per-statement-asyncio, 16 tasks"):
        for unit in ("", ", + commit"):
            r = find(results, name, TRANSACTION + unit)
            out.append(
                target(
                    f"{name}: transaction{unit} vs session",
                    f"<= {GOAL:.2f} x session mode's time per statement",
                    r.ratio("session") if r else None,
                    lambda v: v <= GOAL,
                )
            )
    return out
