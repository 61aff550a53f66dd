"""The per-statement cost of transaction and statement pooling next to session pooling, and
many clients over a few server connections next to psycopg_pool and PgBouncer.

    python benchmarks/bench_modes.py [--dsn DSN] [--rounds N] [--seconds S]
                                     [--many-seconds S] [--only TEXT] [--json]

Scenarios:

- per-statement (1 and 4 threads): persistent pooled clients (``pool.connect()`` once per
  worker), one ``SELECT 1`` per unit, autocommit: raw persistent psycopg connections, then
  pgpoolkit in session, transaction and statement mode (each its own pool, min_size =
  max_size = 10, full), and transaction mode with ``conn.autocommit = True`` set on the client;
  and the same unit plus a ``commit()`` (not autocommit) for raw psycopg and pgpoolkit's
  session and transaction modes. Ratios: time per statement over session mode's (the target:
  transaction mode costs at most 10 % more) and over raw psycopg's; and the client process's
  CPU time per unit, and its ratio to session mode's.
- per-statement asyncio (1 and 16 tasks): the same with ``AsyncPool`` and
  ``psycopg.AsyncConnection``; pools have max(10, tasks) connections, so that session mode
  can give every task its own.
- many-clients (200 threads, 1000 asyncio tasks): every worker has a persistent client and
  runs one ``SELECT 1`` after a think time of 1 ms, for the length of a round: pgpoolkit in
  transaction mode (max_size 10), psycopg_pool (a ``connection()`` checkout per unit, max_size
  10) and, when the ``pgbouncer`` program is installed, PgBouncer in transaction mode
  (pool_size 10) on loopback with persistent psycopg connections. Throughput, latency of a
  unit, and the peak number of server connections seen in pg_stat_activity.

Without ``--dsn`` (or ``PGPOOLKIT_DSN``) a throwaway local PostgreSQL is started and removed at
the end. See benchmarks/README.md for the method.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TextIO

import psycopg
import psycopg_pool
from _common import (
    Extras,
    SetupError,
    Target,
    add_run_arguments,
    connect_check,
    counts,
    plural,
    positive,
    server_dsn,
)
from _pgbouncer import (
    NO_PREPARE,
    PgBouncer,
    find_pgbouncer,
    pgbouncer_version,
    start_pgbouncer,
)
from harness import (
    Contender,
    Result,
    Sample,
    Scenario,
    results_json,
    run_scenarios,
    run_tasks,
    run_threads,
)

import pgpoolkit

POOL_SIZE = 10
APP = "bench-modes"

RAW = "raw psycopg"
SESSION = "pgpoolkit session"
TRANSACTION = "pgpoolkit transaction"
STATEMENT = "pgpoolkit statement"
TRANSACTION_CLIENT_AC = "pgpoolkit transaction, conn.autocommit=True"
RAW_TX = "raw psycopg, + commit"
SESSION_TX = "pgpoolkit session, + commit"
TRANSACTION_TX = "pgpoolkit transaction, + commit"
TRANSACTION_10 = "pgpoolkit transaction, 10 server conns"

MANY_PK = "pgpoolkit transaction, persistent clients"
MANY_PP = "psycopg_pool, connection() per unit"
MANY_PGB = "pgbouncer transaction, persistent conns"

#: the raw psycopg contender each per-statement contender is compared with
RAW_OF = {
    RAW: RAW,
    SESSION: RAW,
    TRANSACTION: RAW,
    STATEMENT: RAW,
    TRANSACTION_CLIENT_AC: RAW,
    TRANSACTION_10: RAW,
    RAW_TX: RAW_TX,
    SESSION_TX: RAW_TX,
    TRANSACTION_TX: RAW_TX,
}
#: the issue's target: transaction mode costs at most 10 % more per statement than session mode
TARGET = 1.10

Op = Callable[[], object]
AOp = Callable[[], Coroutine[Any, Any, object]]


# -- per-statement, threads ------------------------------------------------------------------------


def _select1(conn: Any) -> Op:
    def op() -> None:
        conn.execute("SELECT 1").fetchone()

    return op


def _select1_commit(conn: Any) -> Op:
    def op() -> None:
        conn.execute("SELECT 1").fetchone()
        conn.commit()

    return op


def per_statement_threads(dsn: str, n: int, extras: Extras) -> Scenario:
    size = max(POOL_SIZE, n)
    title = f"per-statement, {plural(n, 'thread')}"

    @contextmanager
    def setup() -> Iterator[Sequence[Contender]]:
        with ExitStack() as stack:

            def pool(mode: str, autocommit: bool) -> pgpoolkit.Pool:
                p = pgpoolkit.Pool(
                    dsn,
                    open=False,
                    mode=mode,
                    min_size=size,
                    max_size=size,
                    kwargs={"application_name": f"{APP}-{mode}", "autocommit": autocommit},
                )
                p.open(wait=True, timeout=30.0)
                stack.callback(p.close)
                return p

            def clients(p: pgpoolkit.Pool, autocommit: bool | None = None) -> list[Any]:
                out = []
                for _ in range(n):
                    c = p.connect()
                    stack.callback(c.close)
                    if autocommit is not None:
                        c.autocommit = autocommit
                    out.append(c)
                return out

            def raw(autocommit: bool) -> list[Any]:
                return [
                    stack.enter_context(
                        psycopg.connect(dsn, autocommit=autocommit, application_name=f"{APP}-raw")
                    )
                    for _ in range(n)
                ]

            session_ac = clients(pool("session", True))
            transaction_ac = clients(pool("transaction", True))
            statement = clients(pool("statement", True))
            session_tx = clients(pool("session", False))
            transaction_pool = pool("transaction", False)
            transaction_tx = clients(transaction_pool)
            transaction_client_ac = clients(transaction_pool, autocommit=True)

            def contender(
                name: str, conns: list[Any], unit: Callable[[Any], Op], base: str
            ) -> Contender:
                run = partial(run_threads, n, lambda i: unit(conns[i]))
                return Contender(name, extras.metered(title, name, run), baseline=base)

            yield [
                contender(RAW, raw(True), _select1, SESSION),
                contender(SESSION, session_ac, _select1, SESSION),
                contender(TRANSACTION, transaction_ac, _select1, SESSION),
                contender(STATEMENT, statement, _select1, SESSION),
                contender(TRANSACTION_CLIENT_AC, transaction_client_ac, _select1, SESSION),
                contender(RAW_TX, raw(False), _select1_commit, SESSION_TX),
                contender(SESSION_TX, session_tx, _select1_commit, SESSION_TX),
                contender(TRANSACTION_TX, transaction_tx, _select1_commit, SESSION_TX),
            ]

    return Scenario(
        title,
        setup,
        ratio="time",
        description=f"persistent clients, one SELECT 1 per unit; pools of {size}, full, one "
        "per mode",
    )


# -- per-statement, asyncio ------------------------------------------------------------------------


def _aselect1(conn: Any) -> AOp:
    async def op() -> None:
        await (await conn.execute("SELECT 1")).fetchone()

    return op


def _aselect1_commit(conn: Any) -> AOp:
    async def op() -> None:
        await (await conn.execute("SELECT 1")).fetchone()
        await conn.commit()

    return op


def per_statement_tasks(dsn: str, n: int, extras: Extras) -> Scenario:
    size = max(POOL_SIZE, n)
    title = f"per-statement asyncio, {plural(n, 'task')}"

    @contextmanager
    def setup() -> Iterator[Sequence[Contender]]:
        loop = asyncio.new_event_loop()
        run = loop.run_until_complete
        with ExitStack() as stack:
            stack.callback(loop.close)

            def aclose(closable: Any) -> None:
                run(closable.close())

            def pool(mode: str, autocommit: bool, pool_size: int = size) -> pgpoolkit.AsyncPool:
                p = pgpoolkit.AsyncPool(
                    dsn,
                    mode=mode,
                    min_size=pool_size,
                    max_size=pool_size,
                    kwargs={
                        "application_name": f"{APP}-async-{mode}",
                        "autocommit": autocommit,
                    },
                )
                run(p.open(wait=True, timeout=30.0))
                stack.callback(aclose, p)
                return p

            def clients(p: pgpoolkit.AsyncPool, autocommit: bool | None = None) -> list[Any]:
                out = []
                for _ in range(n):
                    c = run(p.connect())
                    stack.callback(aclose, c)
                    if autocommit is not None:
                        run(c.set_autocommit(autocommit))
                    out.append(c)
                return out

            def raw(autocommit: bool) -> list[Any]:
                out = []
                for _ in range(n):
                    c = run(
                        psycopg.AsyncConnection.connect(
                            dsn, autocommit=autocommit, application_name=f"{APP}-async-raw"
                        )
                    )
                    stack.callback(aclose, c)
                    out.append(c)
                return out

            session_ac = clients(pool("session", True))
            transaction_ac = clients(pool("transaction", True))
            statement = clients(pool("statement", True))
            session_tx = clients(pool("session", False))
            transaction_pool = pool("transaction", False)
            transaction_tx = clients(transaction_pool)
            transaction_client_ac = clients(transaction_pool, autocommit=True)

            def contender(
                name: str, conns: list[Any], unit: Callable[[Any], AOp], base: str
            ) -> Contender:
                run_contender = partial(run_tasks, loop, n, lambda i: unit(conns[i]))
                return Contender(name, extras.metered(title, name, run_contender), baseline=base)

            contenders = [
                contender(RAW, raw(True), _aselect1, SESSION),
                contender(SESSION, session_ac, _aselect1, SESSION),
                contender(TRANSACTION, transaction_ac, _aselect1, SESSION),
                contender(STATEMENT, statement, _aselect1, SESSION),
                contender(TRANSACTION_CLIENT_AC, transaction_client_ac, _aselect1, SESSION),
            ]
            if n > POOL_SIZE:  # more clients than server connections: transaction mode's case
                small = clients(pool("transaction", True, POOL_SIZE))
                contenders.append(contender(TRANSACTION_10, small, _aselect1, SESSION))
            contenders += [
                contender(RAW_TX, raw(False), _aselect1_commit, SESSION_TX),
                contender(SESSION_TX, session_tx, _aselect1_commit, SESSION_TX),
                contender(TRANSACTION_TX, transaction_tx, _aselect1_commit, SESSION_TX),
            ]
            yield contenders

    return Scenario(
        title,
        setup,
        ratio="time",
        description=f"persistent clients, one SELECT 1 per unit; AsyncPools of {size}, full, "
        "one per mode",
    )


# -- many clients ----------------------------------------------------------------------------------


def run_thinking_threads(
    nthreads: int, units: Sequence[Op], seconds: float, think: float
) -> Sample:
    """Each thread: sleep ``think`` seconds, then time one unit; until ``seconds`` passed."""
    duration_ns = int(seconds * 1e9)
    barrier = threading.Barrier(nthreads)
    outcomes: list[tuple[int, int, list[int]] | None] = [None] * nthreads
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        unit = units[i]
        clock = time.perf_counter_ns
        lat: list[int] = []
        try:
            barrier.wait()
            start = clock()
            deadline = start + duration_ns
            t1 = start
            while t1 < deadline:
                time.sleep(think)
                t0 = clock()
                unit()
                t1 = clock()
                lat.append(t1 - t0)
            outcomes[i] = (start, t1, lat)
        except BaseException as ex:
            errors.append(ex)
            barrier.abort()

    threads = [
        threading.Thread(target=worker, args=(i,), name=f"bench-{i}", daemon=True)
        for i in range(nthreads)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    return _merge([o for o in outcomes if o is not None])


def run_thinking_tasks(
    loop: asyncio.AbstractEventLoop,
    ntasks: int,
    units: Sequence[AOp],
    seconds: float,
    think: float,
) -> Sample:
    """Each task: sleep ``think`` seconds, then time one unit; until a shared deadline."""
    duration_ns = int(seconds * 1e9)

    async def one(unit: AOp, deadline: int) -> tuple[int, int, list[int]]:
        clock = time.perf_counter_ns
        lat: list[int] = []
        start = t1 = clock()
        while t1 < deadline:
            await asyncio.sleep(think)
            t0 = clock()
            await unit()
            t1 = clock()
            lat.append(t1 - t0)
        return start, t1, lat

    async def main() -> list[tuple[int, int, list[int]]]:
        deadline = time.perf_counter_ns() + duration_ns
        return list(await asyncio.gather(*(one(unit, deadline) for unit in units[:ntasks])))

    return _merge(loop.run_until_complete(main()))


def _merge(done: Sequence[tuple[int, int, list[int]]]) -> Sample:
    start = min(o[0] for o in done)
    end = max(o[1] for o in done)
    lat = [x for o in done for x in o[2]]
    return Sample(len(lat), (end - start) / 1e9, lat)


@dataclass
class ManyOptions:
    think: float
    pgbouncer: str | None
    notes: list[str]
    extras: Extras


def many_clients_threads(dsn: str, n: int, opts: ManyOptions) -> Scenario:
    title = f"many-clients, {plural(n, 'thread')}"
    app_pk, app_pp, app_pgb = (
        f"{APP}-many-pgpoolkit",
        f"{APP}-many-psycopg_pool",
        f"{APP}-many-pgbouncer",
    )

    @contextmanager
    def setup() -> Iterator[Sequence[Contender]]:
        with ExitStack() as stack:
            pk = pgpoolkit.Pool(
                dsn,
                open=False,
                mode="transaction",
                min_size=POOL_SIZE,
                max_size=POOL_SIZE,
                kwargs={"application_name": app_pk, "autocommit": True},
            )
            pk.open(wait=True, timeout=30.0)
            stack.callback(pk.close)
            pp: psycopg_pool.ConnectionPool = psycopg_pool.ConnectionPool(
                dsn,
                open=False,
                min_size=POOL_SIZE,
                max_size=POOL_SIZE,
                kwargs={"application_name": app_pp, "autocommit": True},
            )
            pp.open(wait=True, timeout=30.0)
            stack.callback(pp.close)
            pk_clients = []
            for _ in range(n):
                c = pk.connect()
                stack.callback(c.close)
                pk_clients.append(c)

            def pp_unit() -> None:
                with pp.connection() as conn:
                    conn.execute("SELECT 1").fetchone()

            def contender(name: str, units: Sequence[Op], app: str) -> Contender:
                def run(seconds: float) -> Sample:
                    with opts.extras.sampling(title, name, app):
                        return run_thinking_threads(n, units, seconds, opts.think)

                return Contender(name, run)

            contenders = [
                contender(MANY_PK, [_select1(c) for c in pk_clients], app_pk),
                contender(MANY_PP, [pp_unit] * n, app_pp),
            ]
            bouncer = _start_pgbouncer(stack, dsn, n, opts)
            if bouncer is not None:
                conns = _connect_all([bouncer.dsn(application_name=app_pgb)] * n, stack)
                contenders.append(contender(MANY_PGB, [_select1(c) for c in conns], app_pgb))
            yield contenders

    return Scenario(
        title,
        setup,
        ratio="throughput",
        baseline=MANY_PP,
        description=f"{n} clients, one SELECT 1 per unit after {opts.think * 1000:g} ms of "
        f"think time; {POOL_SIZE} server connections",
    )


def many_clients_tasks(dsn: str, n: int, opts: ManyOptions) -> Scenario:
    title = f"many-clients asyncio, {plural(n, 'task')}"
    app_pk, app_pp, app_pgb = (
        f"{APP}-many-async-pgpoolkit",
        f"{APP}-many-async-psycopg_pool",
        f"{APP}-many-async-pgbouncer",
    )

    @contextmanager
    def setup() -> Iterator[Sequence[Contender]]:
        loop = asyncio.new_event_loop()
        run = loop.run_until_complete
        with ExitStack() as stack:
            stack.callback(loop.close)
            pk = pgpoolkit.AsyncPool(
                dsn,
                mode="transaction",
                min_size=POOL_SIZE,
                max_size=POOL_SIZE,
                kwargs={"application_name": app_pk, "autocommit": True},
            )
            run(pk.open(wait=True, timeout=30.0))
            stack.callback(lambda: run(pk.close()))
            pp: psycopg_pool.AsyncConnectionPool = psycopg_pool.AsyncConnectionPool(
                dsn,
                open=False,
                min_size=POOL_SIZE,
                max_size=POOL_SIZE,
                kwargs={"application_name": app_pp, "autocommit": True},
            )
            run(pp.open(wait=True, timeout=30.0))
            stack.callback(lambda: run(pp.close()))
            pk_clients = [run(pk.connect()) for _ in range(n)]
            stack.callback(lambda: run(_aclose_all(pk_clients)))

            async def pp_unit() -> None:
                async with pp.connection() as conn:
                    await (await conn.execute("SELECT 1")).fetchone()

            def contender(name: str, units: Sequence[AOp], app: str) -> Contender:
                def run_contender(seconds: float) -> Sample:
                    with opts.extras.sampling(title, name, app):
                        return run_thinking_tasks(loop, n, units, seconds, opts.think)

                return Contender(name, run_contender)

            contenders = [
                contender(MANY_PK, [_aselect1(c) for c in pk_clients], app_pk),
                contender(MANY_PP, [pp_unit] * n, app_pp),
            ]
            bouncer = _start_pgbouncer(stack, dsn, n, opts)
            if bouncer is not None:
                conns = run(_aconnect_all([bouncer.dsn(application_name=app_pgb)] * n))
                stack.callback(lambda: run(_aclose_all(conns)))
                contenders.append(contender(MANY_PGB, [_aselect1(c) for c in conns], app_pgb))
            yield contenders

    return Scenario(
        title,
        setup,
        ratio="throughput",
        baseline=MANY_PP,
        description=f"{n} clients, one SELECT 1 per unit after {opts.think * 1000:g} ms of "
        f"think time; {POOL_SIZE} server connections",
    )


def _start_pgbouncer(stack: ExitStack, dsn: str, n: int, opts: ManyOptions) -> PgBouncer | None:
    return start_pgbouncer(stack, opts.pgbouncer, dsn, POOL_SIZE, n, opts.notes)


# PgBouncer 1.18 does not know prepared statements in transaction mode: psycopg must not
# prepare through it (psycopg prepares a query it ran 5 times, by default)
_NO_PREPARE: dict[str, Any] = {"autocommit": True, **NO_PREPARE}


def _connect_all(dsns: Sequence[str], stack: ExitStack) -> list[psycopg.Connection[Any]]:
    conns = []
    for d in dsns:
        conns.append(stack.enter_context(psycopg.connect(d, **_NO_PREPARE)))
    return conns


async def _aclose_all(conns: Sequence[Any]) -> None:
    await asyncio.gather(*(c.close() for c in conns))


async def _aconnect_all(dsns: Sequence[str]) -> list[psycopg.AsyncConnection[Any]]:
    conns: list[psycopg.AsyncConnection[Any]] = []
    for k in range(0, len(dsns), 50):
        conns += await asyncio.gather(
            *(psycopg.AsyncConnection.connect(d, **_NO_PREPARE) for d in dsns[k : k + 50])
        )
    return conns


# -- reporting -------------------------------------------------------------------------------------


@dataclass
class Figures:
    """The figures of a contender beyond the harness's: ratios against the raw psycopg
    contender and client CPU per unit (per-statement), peak server connections
    (many-clients)."""

    time_vs_raw: float | None = None
    cpu_us: float | None = None
    cpu_vs_base: float | None = None
    cpu_rounds: list[float] = field(default_factory=list)
    peak: int | None = None


def _median_ratio(values: Sequence[float], bases: Sequence[float]) -> float | None:
    """Median of the per-round ratios value / base (the rounds ran back to back)."""
    ratios = [
        v / b for v, b in zip(values, bases, strict=False) if v > 0 and b > 0 and v == v and b == b
    ]
    return statistics.median(ratios) if ratios else None


def _time_per_op(res: Result) -> list[float]:
    return [1.0 / r.ops_per_s if r.ops_per_s > 0 else math.nan for r in res.rounds]


def figures_of(results: Sequence[Result], extras: Extras) -> dict[tuple[str, str], Figures]:
    by_key = {(r.scenario, r.contender): r for r in results}
    out: dict[tuple[str, str], Figures] = {}
    for r in results:
        key = (r.scenario, r.contender)
        fig = Figures()
        if r.scenario.startswith("many-clients"):
            fig.peak = extras.peak(*key)
        else:
            raw = by_key.get((r.scenario, RAW_OF.get(r.contender, "")))
            if raw is not None:
                fig.time_vs_raw = _median_ratio(_time_per_op(r), _time_per_op(raw))
            fig.cpu_rounds = extras.cpu_rounds(*key)
            finite = [x for x in fig.cpu_rounds if x == x]
            fig.cpu_us = statistics.median(finite) if finite else None
            if r.baseline is not None:
                fig.cpu_vs_base = _median_ratio(
                    fig.cpu_rounds, extras.cpu_rounds(r.scenario, r.baseline)
                )
        out[key] = fig
    return out


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "" if value is None or value != value else format(value, spec)


def print_tables(
    results: Sequence[Result],
    scenarios: Sequence[Scenario],
    extras: Extras,
    file: TextIO = sys.stdout,
) -> None:
    descriptions = {s.name: s.description for s in scenarios}
    figs = figures_of(results, extras)
    width = max([len("contender"), *(len(r.contender) for r in results)])
    groups: dict[str, list[Result]] = {}
    for r in results:
        groups.setdefault(r.scenario, []).append(r)
    for name, group in groups.items():
        many = name.startswith("many-clients")
        print(name, file=file)
        print(f"  {descriptions.get(name, '')}", file=file)
        header = f"  {'contender':<{width}}  {'ops/s':>8}  {'p50 us':>8}  {'p99 us':>8}"
        if many:
            header += f"  {'server conns':>12}  throughput vs psycopg_pool (higher is better)"
        else:
            header += f"  {'cpu us':>6}  {'time/session':>12}  {'cpu/session':>11}  {'time/raw':>8}"
        print(header, file=file)
        for r in group:
            fig = figs[(r.scenario, r.contender)]
            line = (
                f"  {r.contender:<{width}}  {r.ops_per_s:>8,.0f}  {r.p50_us:>8.1f}  "
                f"{r.p99_us:>8.1f}"
            )
            if many:
                line += f"  {'' if fig.peak is None else f'peak {fig.peak}':>12}"
                line += f"  {_fmt(r.ratio)}"
            else:
                line += (
                    f"  {_fmt(fig.cpu_us, '.1f'):>6}  {_fmt(r.ratio):>12}  "
                    f"{_fmt(fig.cpu_vs_base):>11}  {_fmt(fig.time_vs_raw):>8}"
                )
            print(line.rstrip(), file=file)
        print(file=file)


def target_lines(results: Sequence[Result], extras: Extras) -> list[str]:
    """The issue's target: transaction mode at most 10 % more time per statement."""
    figs = figures_of(results, extras)
    lines = []
    for r in results:
        if r.contender in (TRANSACTION, TRANSACTION_TX) and r.ratio is not None:
            verdict = "met" if r.ratio <= TARGET else "MISSED"
            cpu = figs[(r.scenario, r.contender)].cpu_vs_base
            lines.append(
                f"  {r.scenario}, {r.contender}: time {r.ratio:.2f} x session ({verdict}); "
                f"client CPU {_fmt(cpu)} x"
            )
    return lines


#: many-clients: pgpoolkit transaction mode's throughput at least this times PgBouncer's, with
#: a lower p99, on at most POOL_SIZE server connections
MANY_TARGET = 1.3


def targets(results: Sequence[Result], extras: Extras, notes: Sequence[str] = ()) -> list[Target]:
    """The issue's targets for transaction mode's cost per statement and for many clients."""
    out: list[Target] = []
    figs = figures_of(results, extras)
    by_key = {(r.scenario, r.contender): r for r in results}
    for r in results:
        if r.contender in (TRANSACTION, TRANSACTION_TX) and r.ratio is not None:
            cpu = figs[(r.scenario, r.contender)].cpu_vs_base
            out.append(
                Target(
                    f"{r.scenario}: {r.contender.removeprefix('pgpoolkit ')}",
                    f"<= {TARGET:.2f} x session mode's time per statement",
                    f"{_fmt(r.ratio)} x session mode's time (client CPU {_fmt(cpu)} x)",
                    r.ratio <= TARGET,
                )
            )
        if r.contender != MANY_PK:
            continue
        name = f"{r.scenario}: pgpoolkit transaction vs PgBouncer"
        goal = (
            f">= {MANY_TARGET:.1f} x PgBouncer's throughput, lower p99, <= {POOL_SIZE} server conns"
        )
        pgb = by_key.get((r.scenario, MANY_PGB))
        if pgb is None:
            why = next((n for n in notes if n.startswith("pgbouncer")), "no PgBouncer")
            out.append(Target(name, goal, f"not measured ({why})", None))
            continue
        ratio = _median_ratio([f.ops_per_s for f in r.rounds], [f.ops_per_s for f in pgb.rounds])
        peak = figs[(r.scenario, r.contender)].peak
        met = (
            ratio is not None
            and ratio >= MANY_TARGET
            and r.p99_us < pgb.p99_us
            and peak is not None
            and peak <= POOL_SIZE
        )
        out.append(
            Target(
                name,
                goal,
                f"{_fmt(ratio)} x PgBouncer's throughput, p99 {r.p99_us / 1000:.1f} ms vs "
                f"{pgb.p99_us / 1000:.1f} ms, peak {peak} server conns",
                met,
            )
        )
    return out


def json_document(
    results: Sequence[Result], meta: dict[str, Any], extras: Extras, notes: Sequence[str]
) -> str:
    doc = json.loads(results_json(results, meta))
    figs = figures_of(results, extras)
    for entry, r in zip(doc["results"], results, strict=True):
        fig = figs[(r.scenario, r.contender)]
        entry["time_ratio_vs_raw"] = fig.time_vs_raw
        entry["raw_baseline"] = RAW_OF.get(r.contender) if fig.time_vs_raw is not None else None
        entry["cpu_us_per_op"] = fig.cpu_us
        entry["cpu_ratio"] = fig.cpu_vs_base
        entry["cpu_rounds"] = [x if x == x else None for x in fig.cpu_rounds]
        entry["peak_server_connections"] = fig.peak
    doc["notes"] = list(notes)
    return json.dumps(doc, indent=2)


# -- main ------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Per-statement cost of transaction and statement pooling vs session "
        "pooling, and many clients over 10 server connections: pgpoolkit vs psycopg_pool "
        "and PgBouncer.",
    )
    add_run_arguments(
        parser,
        seconds=0.25,
        seconds_help="length of one per-statement round of one contender",
        warmup=False,  # added below, after --many-seconds
    )
    parser.add_argument(
        "--many-seconds",
        type=positive(float),
        default=0.5,
        help="length of one many-clients round of one contender (default: 0.5)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=0.1,
        help="warm-up run per contender before the rounds, seconds (default: 0.1)",
    )
    parser.add_argument(
        "--threads",
        type=counts,
        default=[1, 4],
        help="per-statement thread counts (default: 1,4)",
    )
    parser.add_argument(
        "--tasks",
        type=counts,
        default=[1, 16],
        help="per-statement asyncio task counts (default: 1,16)",
    )
    parser.add_argument(
        "--many-threads",
        type=counts,
        default=[200],
        help="many-clients thread counts (default: 200)",
    )
    parser.add_argument(
        "--many-tasks",
        type=counts,
        default=[1000],
        help="many-clients asyncio task counts (default: 1000)",
    )
    parser.add_argument(
        "--think-ms",
        type=float,
        default=1.0,
        help="many-clients think time before each unit, ms (default: 1)",
    )
    parser.add_argument(
        "--pgbouncer",
        metavar="PATH",
        help="pgbouncer program (default: found on PATH or in /usr/sbin); 'off' to skip it",
    )
    parser.add_argument(
        "--only", metavar="TEXT", help="run only the scenarios whose name contains TEXT"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return parser.parse_args(argv)


def scenarios_for(dsn: str, args: argparse.Namespace, opts: ManyOptions) -> list[Scenario]:
    scenarios = [per_statement_threads(dsn, n, opts.extras) for n in args.threads]
    scenarios += [per_statement_tasks(dsn, n, opts.extras) for n in args.tasks]
    scenarios += [many_clients_threads(dsn, n, opts) for n in args.many_threads]
    scenarios += [many_clients_tasks(dsn, n, opts) for n in args.many_tasks]
    if args.only:
        scenarios = [s for s in scenarios if args.only in s.name]
    return scenarios


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    notes: list[str] = []
    program, why = find_pgbouncer(args.pgbouncer)
    with ExitStack() as stack:
        try:
            dsn = server_dsn(stack, args.dsn, _log)
            server_version = connect_check(dsn)
        except SetupError as ex:
            print(f"error: {ex}", file=sys.stderr)
            return 2
        extras = Extras(dsn, warmup=args.warmup > 0)
        opts = ManyOptions(args.think_ms / 1000.0, program, notes, extras)
        scenarios = scenarios_for(dsn, args, opts)
        if not scenarios:
            print(f"error: no scenario name contains {args.only!r}", file=sys.stderr)
            return 2
        if why and any(s.name.startswith("many-clients") for s in scenarios):
            notes.append(why)
        # per-round seconds: the many-clients rounds are longer (hundreds of workers)
        results: list[Result] = []
        for s in scenarios:
            seconds = args.many_seconds if s.name.startswith("many-clients") else args.seconds
            results += run_scenarios([s], rounds=args.rounds, seconds=seconds, warmup=args.warmup)
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
        "pgbouncer": pgbouncer_version(program),
        "server_version": server_version,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "many_seconds": args.many_seconds,
        "warmup": args.warmup,
        "think_ms": args.think_ms,
        "pool_size": POOL_SIZE,
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    if args.json:
        print(json_document(results, meta, extras, notes))
        return 0
    print(
        f"pgpoolkit {meta['pgpoolkit']}, psycopg {meta['psycopg']} ({meta['psycopg_impl']}), "
        f"psycopg_pool {meta['psycopg_pool']}, {meta['pgbouncer'] or 'no PgBouncer'}, "
        f"PostgreSQL {server_version // 10000}.{server_version % 10000}, "
        f"Python {meta['python']}, {meta['cpus']} CPUs"
    )
    print(
        f"{args.rounds} interleaved rounds per contender ({args.seconds} s per-statement, "
        f"{args.many_seconds} s many-clients), medians; run took {meta['total_seconds']} s"
    )
    print()
    print_tables(results, scenarios, extras)
    lines = target_lines(results, extras)
    if lines:
        print(f"target: transaction mode <= {TARGET:.2f} x session mode's time per statement")
        print("\n".join(lines))
        print()
    for note in notes:
        print(note)
    print(
        "ratios: medians of the per-round ratios (in a round the contenders run back to "
        "back),\nso they can differ from the ratio of the medians shown."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
