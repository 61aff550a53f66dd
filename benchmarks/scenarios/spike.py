"""spike: HikariCP's "spike demand" test. 50 requests arrive at once on a new pool
(``max_size`` 50), each holding a connection for 10 ms (``SELECT pg_sleep``), and opening a
connection takes 150 ms (a ``connection_class`` that sleeps first). pgpoolkit and psycopg_pool,
threads and asyncio; a fresh pool every round. ``conns opened``: the connects the pool started
(the highest of the rounds); ``vs ideal``: the mean latency over what a first-come,
first-served pool reaches with the very connections this pool had, when it had them."""

from __future__ import annotations

import asyncio
import heapq
import statistics
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

import psycopg
from harness import (
    DRIVERS,
    Contender,
    Context,
    Result,
    Sample,
    Scenario,
    Target,
    Threads,
    find,
    fmt,
    scenario,
)

ORDER = 60
MAX_OPENED, MAX_VS_IDEAL = 10, 1.25


def fifo(available: Sequence[float], requests: int, hold: float) -> list[float]:
    """Latencies of ``requests`` arriving at 0 on a FIFO pool whose connections become
    available at ``available``, each request holding one for ``hold``."""
    free = sorted(available)
    out = []
    for _ in range(requests if free else 0):
        end = heapq.heappop(free) + hold
        out.append(end)
        heapq.heappush(free, end)
    return out


def slow(base: Any, delay: float, starts: list[float], ends: list[float]) -> Any:
    """A subclass of ``base`` (a psycopg connection class) whose connect() sleeps first."""
    if issubclass(base, psycopg.AsyncConnection):

        class SlowAsync(base):  # type: ignore[misc]
            @classmethod
            async def connect(cls, *args: Any, **kwargs: Any) -> Any:
                starts.append(time.perf_counter())
                await asyncio.sleep(delay)
                conn = await super().connect(*args, **kwargs)
                ends.append(time.perf_counter())
                return conn

        return SlowAsync

    class Slow(base):  # type: ignore[misc]
        @classmethod
        def connect(cls, *args: Any, **kwargs: Any) -> Any:
            starts.append(time.perf_counter())
            time.sleep(delay)
            conn = super().connect(*args, **kwargs)
            ends.append(time.perf_counter())
            return conn

    return Slow


def one_spike(d: Threads, pool: Any, n: int, query: str) -> tuple[float, list[float], list[float]]:
    """``n`` requests at once: t0, when each got its connection, when each was done."""
    got, done = [0.0] * n, [0.0] * n
    if d.kind == "threads":
        go = threading.Event()
        ready = threading.Barrier(n + 1)

        def request(i: int) -> None:
            ready.wait()
            go.wait()
            with pool.connection() as conn:
                got[i] = time.perf_counter()
                conn.execute(query)
            done[i] = time.perf_counter()

        threads = [threading.Thread(target=request, args=(i,), daemon=True) for i in range(n)]
        for th in threads:
            th.start()
        ready.wait()
        t0 = time.perf_counter()
        go.set()
        for th in threads:
            th.join()
        return t0, got, done

    async def spike() -> float:
        start = asyncio.Event()

        async def request(i: int) -> None:
            await start.wait()
            async with pool.connection() as conn:
                got[i] = time.perf_counter()
                await conn.execute(query)
            done[i] = time.perf_counter()

        tasks = [asyncio.create_task(request(i)) for i in range(n)]
        await asyncio.sleep(0)
        t0 = time.perf_counter()
        start.set()
        await asyncio.gather(*tasks)
        return t0

    t0 = d.wait(spike())  # type: ignore[attr-defined]
    return t0, got, done


def spike(ctx: Context, min_size: int, requests: int, work: float, delay: float) -> Scenario:
    def build(stack: ExitStack) -> list[Contender]:
        out = []
        for driver in DRIVERS:
            d = driver(ExitStack())
            stack.callback(d.stack.close)
            base = psycopg.AsyncConnection if d.kind == "asyncio" else psycopg.Connection
            for who, cls in (
                ("pgpoolkit", d.pgpoolkit_class),
                ("psycopg_pool", d.psycopg_pool_class),
            ):

                def run(_: float, d: Threads = d, cls: Any = cls, base: Any = base) -> Sample:
                    starts: list[float] = []
                    ends: list[float] = []
                    with ExitStack() as one:
                        d.stack = one
                        pool = d.pool(
                            cls,
                            ctx.dsn,
                            min_size=min_size,
                            max_size=50,
                            connection_class=slow(base, delay, starts, ends),
                            kwargs={"autocommit": True},
                        )
                        t0, got, done = one_spike(d, pool, requests, f"SELECT pg_sleep({work})")
                        time.sleep(0.05)  # connects decided at the very end
                        opened = len(starts)
                    lat = [x - t0 for x in done]
                    hold = statistics.median(b - a for a, b in zip(got, done, strict=True))
                    ideal = fifo([max(0.0, e - t0) for e in ends], requests, hold)
                    vs_ideal = (
                        statistics.fmean(lat) / statistics.fmean(ideal) if ideal else float("nan")
                    )
                    return Sample(
                        requests,
                        max(lat),
                        [int(x * 1e9) for x in lat],
                        {"conns opened": opened, "vs ideal": vs_ideal},
                    )

                out.append(
                    Contender(
                        f"{who} ({d.kind})", run, {"psycopg_pool": f"psycopg_pool ({d.kind})"}
                    )
                )
        return out

    return scenario(
        f"spike, min_size={min_size}",
        "time",
        0.0,
        build,
        warmup=ctx.preset == "full",
        rounds=ctx.pick(2, 5, 1),
        description=f"{requests} requests at once, {work * 1000:g} ms each, connects take "
        f"{delay * 1000:g} ms; max_size=50",
    )


def scenarios(ctx: Context) -> list[Scenario]:
    requests, work, delay = ctx.pick((50, 0.01, 0.15), (50, 0.01, 0.15), (10, 0.005, 0.03))
    return [spike(ctx, m, requests, work, delay) for m in ctx.pick((1,), (0, 1), (1,))]


def targets(results: list[Result], ctx: Context) -> list[Target]:
    out = []
    for kind in ("threads", "asyncio"):
        r = find(results, "spike, min_size=1", f"pgpoolkit ({kind})")
        opened, vs = (r.extra("conns opened"), r.extra("vs ideal")) if r else (None, None)
        goal = f"<= {MAX_OPENED} conns opened, mean latency <= {MAX_VS_IDEAL} x ideal"
        met = None if opened is None or vs is None else opened <= MAX_OPENED and vs <= MAX_VS_IDEAL
        measured = f"{fmt(opened, '.0f')} conns opened, {fmt(vs)} x ideal" if r else "not measured"
        out.append(Target(f"spike, min_size=1, {kind}: pgpoolkit", goal, measured, met))
    return out
