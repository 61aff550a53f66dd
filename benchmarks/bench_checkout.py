"""Checkout cost of pgpoolkit next to psycopg_pool, and a SELECT 1 next to raw psycopg.

    python benchmarks/bench_checkout.py [--dsn DSN] [--rounds N] [--seconds S]
                                        [--threads 1,4] [--select1 1,4,16] [--pin]
                                        [--only TEXT] [--json]

Scenarios:

- checkout (1 and 4 threads): acquire + release with no query, through pgpoolkit
  ``Pool.getconn/putconn`` and ``pool.connection()``, and psycopg_pool
  ``ConnectionPool.getconn/putconn`` and ``.connection()``; the ratio is pgpoolkit's time per
  checkout over psycopg_pool's, API for API.
- checkout-asyncio (1 and 4 tasks): the same with ``AsyncPool`` and ``AsyncConnectionPool``.
- with ``--pin``, both again with the benchmark's threads pinned to one CPU.
- select1 (1, 4 and 16 threads): one ``SELECT 1`` per unit: raw persistent psycopg connections
  (one per thread: the limit a pool can approach), pgpoolkit ``pool.connection()``,
  psycopg_pool ``.connection()``; the ratio is throughput over raw psycopg's.
- select1-asyncio (1, 4 and 16 tasks): the same with ``AsyncPool``, ``AsyncConnectionPool`` and
  ``psycopg.AsyncConnection``.

Every pool has min_size = max_size = 10 and is full before anything is measured. Without
``--dsn`` (or ``PGPOOLKIT_DSN``) a throwaway local PostgreSQL is started and removed at the end.
The issue's targets for these scenarios are printed below the tables. See
benchmarks/README.md for the method.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from functools import partial
from typing import Any

import psycopg
import psycopg_pool
from _common import (
    SetupError,
    Target,
    add_run_arguments,
    connect_check,
    counts,
    fmt,
    print_targets,
    server_dsn,
)
from harness import (
    Contender,
    Result,
    Scenario,
    can_pin,
    pinned,
    print_table,
    results_json,
    run_scenarios,
    run_tasks,
    run_threads,
)

import pgpoolkit

POOL_SIZE = 10

PK_GETCONN = "pgpoolkit getconn/putconn"
PK_CONTEXT = "pgpoolkit connection()"
PP_GETCONN = "psycopg_pool getconn/putconn"
PP_CONTEXT = "psycopg_pool connection()"
RAW = "raw psycopg (1 conn per thread)"
RAW_ASYNC = "raw psycopg (1 conn per task)"

Op = Callable[[], object]
AOp = Callable[[], Coroutine[Any, Any, object]]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# -- pools -------------------------------------------------------------------------------------


@contextmanager
def _pgpoolkit_pool(dsn: str, app: str, **kwargs: Any) -> Iterator[pgpoolkit.Pool]:
    pool = pgpoolkit.Pool(
        dsn,
        open=False,
        min_size=POOL_SIZE,
        max_size=POOL_SIZE,
        kwargs={"application_name": app, **kwargs},
    )
    pool.open(wait=True, timeout=30.0)
    try:
        yield pool
    finally:
        pool.close()


@contextmanager
def _psycopg_pool(dsn: str, app: str, **kwargs: Any) -> Iterator[psycopg_pool.ConnectionPool]:
    pool: psycopg_pool.ConnectionPool = psycopg_pool.ConnectionPool(
        dsn,
        open=False,
        min_size=POOL_SIZE,
        max_size=POOL_SIZE,
        kwargs={"application_name": app, **kwargs},
    )
    pool.open(wait=True, timeout=30.0)
    try:
        yield pool
    finally:
        pool.close()


# -- checkout, threads ---------------------------------------------------------------------------


def checkout_threads(dsn: str, n: int) -> Scenario:
    @contextmanager
    def setup() -> Iterator[Sequence[Contender]]:
        with (
            _pgpoolkit_pool(dsn, "bench-pgpoolkit") as pk,
            _psycopg_pool(dsn, "bench-psycopg_pool") as pp,
        ):

            def pk_getconn(_: int) -> Op:
                getconn, putconn = pk.getconn, pk.putconn
                return lambda: putconn(getconn())

            def pk_context(_: int) -> Op:
                def op() -> None:
                    with pk.connection():
                        pass

                return op

            def pp_getconn(_: int) -> Op:
                getconn, putconn = pp.getconn, pp.putconn
                return lambda: putconn(getconn())

            def pp_context(_: int) -> Op:
                def op() -> None:
                    with pp.connection():
                        pass

                return op

            yield [
                Contender(PK_GETCONN, partial(run_threads, n, pk_getconn), PP_GETCONN),
                Contender(PK_CONTEXT, partial(run_threads, n, pk_context), PP_CONTEXT),
                Contender(PP_GETCONN, partial(run_threads, n, pp_getconn), PP_GETCONN),
                Contender(PP_CONTEXT, partial(run_threads, n, pp_context), PP_CONTEXT),
            ]

    return Scenario(
        f"checkout, {_plural(n, 'thread')}",
        setup,
        ratio="time",
        description="acquire + release, no query; pools of 10, full",
    )


# -- checkout, asyncio ---------------------------------------------------------------------------


def checkout_tasks(dsn: str, n: int) -> Scenario:
    @contextmanager
    def setup() -> Iterator[Sequence[Contender]]:
        loop = asyncio.new_event_loop()
        pk = pgpoolkit.AsyncPool(
            dsn,
            min_size=POOL_SIZE,
            max_size=POOL_SIZE,
            kwargs={"application_name": "bench-pgpoolkit-async"},
        )
        pp: psycopg_pool.AsyncConnectionPool = psycopg_pool.AsyncConnectionPool(
            dsn,
            open=False,
            min_size=POOL_SIZE,
            max_size=POOL_SIZE,
            kwargs={"application_name": "bench-psycopg_pool-async"},
        )
        try:
            loop.run_until_complete(pk.open(wait=True, timeout=30.0))
            loop.run_until_complete(pp.open(wait=True, timeout=30.0))

            def pk_getconn(_: int) -> AOp:
                async def op() -> None:
                    await pk.putconn(await pk.getconn())

                return op

            def pk_context(_: int) -> AOp:
                async def op() -> None:
                    async with pk.connection():
                        pass

                return op

            def pp_getconn(_: int) -> AOp:
                async def op() -> None:
                    await pp.putconn(await pp.getconn())

                return op

            def pp_context(_: int) -> AOp:
                async def op() -> None:
                    async with pp.connection():
                        pass

                return op

            def contender(name: str, make: Callable[[int], AOp], base: str) -> Contender:
                return Contender(name, partial(run_tasks, loop, n, make), base)

            yield [
                contender(PK_GETCONN, pk_getconn, PP_GETCONN),
                contender(PK_CONTEXT, pk_context, PP_CONTEXT),
                contender(PP_GETCONN, pp_getconn, PP_GETCONN),
                contender(PP_CONTEXT, pp_context, PP_CONTEXT),
            ]
        finally:
            loop.run_until_complete(pk.close())
            loop.run_until_complete(pp.close())
            loop.close()

    return Scenario(
        f"checkout-asyncio, {_plural(n, 'task')}",
        setup,
        ratio="time",
        description="acquire + release, no query; pools of 10, full (AsyncPool, "
        "AsyncConnectionPool)",
    )


# -- SELECT 1 --------------------------------------------------------------------------------------


def select1_threads(dsn: str, n: int) -> Scenario:
    @contextmanager
    def setup() -> Iterator[Sequence[Contender]]:
        with ExitStack() as stack:
            raws = [
                stack.enter_context(
                    psycopg.connect(dsn, autocommit=True, application_name="bench-raw")
                )
                for _ in range(n)
            ]
            pk = stack.enter_context(_pgpoolkit_pool(dsn, "bench-pgpoolkit", autocommit=True))
            pp = stack.enter_context(_psycopg_pool(dsn, "bench-psycopg_pool", autocommit=True))

            def raw(i: int) -> Op:
                conn = raws[i]
                return lambda: conn.execute("SELECT 1").fetchone()

            def pk_context(_: int) -> Op:
                def op() -> None:
                    with pk.connection() as conn:
                        conn.execute("SELECT 1").fetchone()

                return op

            def pp_context(_: int) -> Op:
                def op() -> None:
                    with pp.connection() as conn:
                        conn.execute("SELECT 1").fetchone()

                return op

            yield [
                Contender(RAW, partial(run_threads, n, raw)),
                Contender(PK_CONTEXT, partial(run_threads, n, pk_context)),
                Contender(PP_CONTEXT, partial(run_threads, n, pp_context)),
            ]

    return Scenario(
        f"select1, {_plural(n, 'thread')}",
        setup,
        ratio="throughput",
        baseline=RAW,
        description="one SELECT 1 per unit, autocommit; pools of 10, full",
    )


def select1_tasks(dsn: str, n: int) -> Scenario:
    @contextmanager
    def setup() -> Iterator[Sequence[Contender]]:
        loop = asyncio.new_event_loop()
        run = loop.run_until_complete
        with ExitStack() as stack:
            stack.callback(loop.close)
            raws: list[psycopg.AsyncConnection[Any]] = []
            for _ in range(n):
                raw_conn = run(
                    psycopg.AsyncConnection.connect(
                        dsn, autocommit=True, application_name="bench-raw-async"
                    )
                )
                raws.append(raw_conn)
                stack.callback(run, raw_conn.close())
            pk = pgpoolkit.AsyncPool(
                dsn,
                min_size=POOL_SIZE,
                max_size=POOL_SIZE,
                kwargs={"application_name": "bench-pgpoolkit-async", "autocommit": True},
            )
            run(pk.open(wait=True, timeout=30.0))
            stack.callback(lambda: run(pk.close()))
            pp: psycopg_pool.AsyncConnectionPool = psycopg_pool.AsyncConnectionPool(
                dsn,
                open=False,
                min_size=POOL_SIZE,
                max_size=POOL_SIZE,
                kwargs={"application_name": "bench-psycopg_pool-async", "autocommit": True},
            )
            run(pp.open(wait=True, timeout=30.0))
            stack.callback(lambda: run(pp.close()))

            def raw(i: int) -> AOp:
                conn = raws[i]

                async def op() -> None:
                    await (await conn.execute("SELECT 1")).fetchone()

                return op

            def pk_context(_: int) -> AOp:
                async def op() -> None:
                    async with pk.connection() as conn:
                        await (await conn.execute("SELECT 1")).fetchone()

                return op

            def pp_context(_: int) -> AOp:
                async def op() -> None:
                    async with pp.connection() as conn:
                        await (await conn.execute("SELECT 1")).fetchone()

                return op

            yield [
                Contender(RAW_ASYNC, partial(run_tasks, loop, n, raw)),
                Contender(PK_CONTEXT, partial(run_tasks, loop, n, pk_context)),
                Contender(PP_CONTEXT, partial(run_tasks, loop, n, pp_context)),
            ]

    return Scenario(
        f"select1-asyncio, {_plural(n, 'task')}",
        setup,
        ratio="throughput",
        baseline=RAW_ASYNC,
        description="one SELECT 1 per unit, autocommit; AsyncPool and AsyncConnectionPool "
        "of 10, full",
    )


# -- targets ---------------------------------------------------------------------------------------

#: pgpoolkit's time per checkout at most this times psycopg_pool's
CHECKOUT_TARGET = 0.5
#: select1 throughput at least this times raw persistent connections': 4 threads, 16 tasks
SELECT1_TARGETS = {"select1, 4 threads": 0.95, "select1-asyncio, 16 tasks": 0.90}


def targets(results: Sequence[Result]) -> list[Target]:
    """The issue's checkout-only and select1 targets, for the scenarios that ran."""
    out: list[Target] = []
    for r in results:
        if r.scenario.startswith("checkout") and r.contender in (PK_GETCONN, PK_CONTEXT):
            ratio = r.ratio
            api = "getconn/putconn" if r.contender == PK_GETCONN else "connection()"
            out.append(
                Target(
                    f"{r.scenario}: {api}",
                    f"<= {CHECKOUT_TARGET:.2f} x psycopg_pool's time",
                    f"{fmt(ratio)} x psycopg_pool's time per checkout",
                    None if ratio is None or ratio != ratio else ratio <= CHECKOUT_TARGET,
                )
            )
        goal = SELECT1_TARGETS.get(r.scenario)
        if goal is not None and r.contender == PK_CONTEXT:
            ratio = r.ratio
            out.append(
                Target(
                    f"{r.scenario}: pgpoolkit connection()",
                    f">= {goal:.2f} x raw persistent psycopg",
                    f"{fmt(ratio)} x raw persistent psycopg's throughput",
                    None if ratio is None or ratio != ratio else ratio >= goal,
                )
            )
    return out


# -- main ------------------------------------------------------------------------------------------


def _thread_counts(text: str) -> list[int]:
    values = counts(text)
    if any(c > POOL_SIZE for c in values):
        raise argparse.ArgumentTypeError(f"expected counts between 1 and {POOL_SIZE}, got {text}")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Checkout cost: pgpoolkit vs psycopg_pool (threads and asyncio), and "
        "SELECT 1 through the pools vs raw psycopg connections.",
    )
    add_run_arguments(parser, seconds=0.3)
    parser.add_argument(
        "--threads",
        type=_thread_counts,
        default=[1, 4],
        help="checkout thread (and asyncio task) counts, at most 10, comma separated "
        "(default: 1,4)",
    )
    parser.add_argument(
        "--select1",
        type=counts,
        default=[1, 4, 16],
        metavar="1,4,16",
        help="select1 thread and asyncio task counts, comma separated (default: 1,4,16)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="also run the checkout scenarios with the benchmark's threads pinned to one CPU",
    )
    parser.add_argument(
        "--only", metavar="TEXT", help="run only the scenarios whose name contains TEXT"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return parser.parse_args(argv)


def scenarios_for(
    dsn: str,
    threads: Sequence[int],
    only: str | None,
    select1: Sequence[int] = (),
    pin: bool = False,
) -> list[Scenario]:
    scenarios = [checkout_threads(dsn, n) for n in threads]
    scenarios += [checkout_tasks(dsn, n) for n in threads]
    if pin and can_pin():
        scenarios += [pinned(checkout_threads(dsn, n)) for n in threads]
        scenarios += [pinned(checkout_tasks(dsn, n)) for n in threads]
    scenarios += [select1_threads(dsn, n) for n in select1]
    scenarios += [select1_tasks(dsn, n) for n in select1]
    if only:
        scenarios = [s for s in scenarios if only in s.name]
    return scenarios


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    with ExitStack() as stack:
        try:
            dsn = server_dsn(stack, args.dsn, _log)
            server_version = connect_check(dsn)
        except SetupError as ex:
            print(f"error: {ex}", file=sys.stderr)
            return 2
        scenarios = scenarios_for(dsn, args.threads, args.only, args.select1, args.pin)
        if not scenarios:
            print(f"error: no scenario name contains {args.only!r}", file=sys.stderr)
            return 2
        results = run_scenarios(
            scenarios, rounds=args.rounds, seconds=args.seconds, warmup=args.warmup
        )
    meta = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "psycopg": psycopg.__version__,
        "libpq": psycopg.pq.version(),
        "psycopg_impl": psycopg.pq.__impl__,
        "psycopg_pool": psycopg_pool.__version__,
        "pgpoolkit": pgpoolkit.__version__,
        "server_version": server_version,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "pool_size": POOL_SIZE,
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    if args.json:
        print(results_json(results, meta))
        return 0
    print(
        f"pgpoolkit {meta['pgpoolkit']}, psycopg {meta['psycopg']} ({meta['psycopg_impl']}), "
        f"psycopg_pool {meta['psycopg_pool']}, PostgreSQL {server_version // 10000}."
        f"{server_version % 10000}, Python {meta['python']}, {meta['cpus']} CPUs"
    )
    print(
        f"{args.rounds} interleaved rounds of {args.seconds} s per contender, medians; "
        f"run took {meta['total_seconds']} s"
    )
    print()
    print_table(results, scenarios)
    goals = targets(results)
    if goals:
        print("targets:")
        print_targets(goals, sys.stdout)
        print()
    print(
        "ratio: the median of the per-round ratios (in a round the contenders run back to "
        "back),\nso it can differ from the ratio of the medians shown."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
