"""memory: what an open idle transaction-mode client costs. A pool (``max_size`` 5) is warmed
by one client; each round opens 10,000 clients with ``pool.connect()`` (``Pool``, then
``AsyncPool``), keeps them, closes them: once timed (``connect()``/s, p50/p99), once under
tracemalloc (``bytes/client``: the growth of the Python heap per client). Once per contender a
child process reports the growth of its resident set per client (``RSS/client``)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
import tracemalloc
from contextlib import ExitStack
from typing import Any

from harness import (
    DRIVERS,
    Contender,
    Context,
    Result,
    Sample,
    Scenario,
    Target,
    Tasks,
    Threads,
    scenario,
    target,
)

ORDER = 80
GOAL = 2048


def open_pool(d: Threads, dsn: str) -> Any:
    pool = d.pool(d.pgpoolkit_class, dsn, mode="transaction", min_size=1, max_size=5)
    used = d.query(d.client(pool))()  # first-use caches, not counted per client
    if isinstance(d, Tasks):
        d.wait(used)  # type: ignore[arg-type]
    return pool


def clients(d: Threads, pool: Any, n: int, lat: list[int] | None = None) -> list[Any]:
    """``n`` clients opened (timed into ``lat``)."""
    out: list[Any] = [None] * n
    clock = time.perf_counter_ns

    async def aopen() -> None:
        for i in range(n):
            t0 = clock()
            out[i] = await pool.connect()
            if lat is not None:
                lat.append(clock() - t0)

    if isinstance(d, Tasks):
        d.wait(aopen())
        return out
    for i in range(n):
        t0 = clock()
        out[i] = pool.connect()
        if lat is not None:
            lat.append(clock() - t0)
    return out


def close(d: Threads, conns: list[Any]) -> None:
    async def aclose() -> None:
        for c in conns:
            await c.close()

    if isinstance(d, Tasks):
        d.wait(aclose())
    else:
        for c in conns:
            c.close()


def rss_per_client(dsn: str, kind: str, n: int) -> float:
    """In a fresh process (a clean heap): growth of the resident set per open client."""
    done = subprocess.run(
        [sys.executable, __file__, dsn, kind, str(n)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    if done.returncode != 0:
        raise RuntimeError(" | ".join(done.stderr.strip().splitlines()[-2:]))
    return float(json.loads(done.stdout.strip().splitlines()[-1]))


def rss() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory(ctx: Context, n: int, with_rss: bool) -> Scenario:
    def build(stack: ExitStack) -> list[Contender]:
        out = []
        for driver in DRIVERS:
            d = driver(stack)
            pool = open_pool(d, ctx.dsn)
            extra: dict[str, float] = {}
            if with_rss:
                try:
                    extra["RSS/client"] = rss_per_client(ctx.dsn, d.kind, n)
                except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as ex:
                    ctx.note(f"memory: no RSS figure ({d.kind}): {ex}")

            def run(
                _: float, d: Threads = d, pool: Any = pool, extra: dict[str, float] = extra
            ) -> Sample:
                lat: list[int] = []
                gc.collect()
                t0 = time.perf_counter()
                close(d, clients(d, pool, n, lat))
                elapsed = time.perf_counter() - t0
                gc.collect()
                tracemalloc.start()
                try:
                    before = tracemalloc.get_traced_memory()[0]
                    conns = clients(d, pool, n)
                    gc.collect()
                    traced = (tracemalloc.get_traced_memory()[0] - before) / n
                finally:
                    tracemalloc.stop()
                stats = pool.stats()
                close(d, conns)
                servers = stats.servers_active + stats.servers_idle
                return Sample(
                    n, elapsed, lat, {"bytes/client": traced, "server conns": servers, **extra}
                )

            name = f"pgpoolkit {d.pgpoolkit_class.__name__}, transaction, connect()"
            out.append(Contender(name, run))
        return out

    return scenario(
        f"memory, {n:,} idle clients",
        "time",
        0.0,
        build,
        warmup=False,
        rounds=ctx.pick(1, 3, 1),
        description="clients held open by pool.connect(), mode='transaction', max_size=5",
    )


def scenarios(ctx: Context) -> list[Scenario]:
    return [memory(ctx, ctx.pick(10_000, 10_000, 500), ctx.preset != "smoke")]


def _find(results: list[Result], cls: str) -> Result | None:
    name = f"pgpoolkit {cls}, transaction, connect()"
    return next((r for r in results if r.contender == name), None)


def targets(results: list[Result], ctx: Context) -> list[Target]:
    return [
        target(
            f"memory per idle client, {cls}",
            f"< {GOAL} bytes (tracemalloc)",
            r.extra("bytes/client") if (r := _find(results, cls)) else None,
            lambda v: v < GOAL,
            "bytes",
        )
        for cls in ("Pool", "AsyncPool")
    ]


if __name__ == "__main__":  # the RSS child: dsn kind n
    with ExitStack() as main_stack:
        dsn, kind, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
        drv = (Tasks if kind == "asyncio" else Threads)(main_stack)
        p = open_pool(drv, dsn)
        gc.collect()
        r0 = rss()
        held = clients(drv, p, count)
        gc.collect()
        print(json.dumps((rss() - r0) / count))
        close(drv, held)
