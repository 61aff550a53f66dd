"""The cost of ``reset_always=True`` (every release resets the session with DISCARD ALL) next
to the default, in session mode (a ``connection()`` checkout per unit) and in transaction mode
(a persistent client, released after every statement). One ``SELECT 1`` per unit; threads and
asyncio tasks. Ratio: time per unit over the same mode's default."""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

from harness import DRIVERS, Contender, Context, Scenario, Threads, scenario

ORDER = 35


def reset(ctx: Context, driver: type[Threads], n: int, seconds: float) -> Scenario:
    def build(stack: ExitStack) -> list[Contender]:
        d = driver(stack)
        out = []
        for reset_always in (False, True):
            kw: dict[str, Any] = {"kwargs": {"autocommit": True}, "reset_always": reset_always}
            session = d.pgpoolkit(ctx.dsn, mode="session", **kw)
            txn = d.pgpoolkit(ctx.dsn, mode="transaction", **kw)
            clients = [d.client(txn) for _ in range(n)]
            tail = ", reset_always=True" if reset_always else ""
            out += [
                d.contender(
                    f"session, connection() per unit{tail}",
                    n,
                    d.block(session),
                    baselines={"default": "session, connection() per unit"},
                ),
                d.contender(
                    f"transaction, persistent client{tail}",
                    n,
                    [d.query(c) for c in clients],
                    baselines={"default": "transaction, persistent client"},
                ),
            ]
        return out

    return scenario(
        driver.title("reset_always", n),
        "time",
        seconds,
        build,
        description="SELECT 1 per unit; pgpoolkit pools of 10 with and without reset_always",
    )


def scenarios(ctx: Context) -> list[Scenario]:
    seconds = ctx.pick(0.1, 0.25, 0.03)
    return [reset(ctx, d, n, seconds) for d in DRIVERS for n in ctx.pick((4,), (1, 4), (2,))]
