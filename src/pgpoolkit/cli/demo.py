"""``pgpoolkit demo``: a short concurrent workload through a :class:`~pgpoolkit.Pool` (threads)
and an :class:`~pgpoolkit.AsyncPool` (asyncio tasks), and what the pool did: many clients, few
server connections. Without ``--dsn`` (or ``PGPOOLKIT_DSN``) it starts a throwaway local
PostgreSQL and removes it at the end."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from .. import __version__
from ..aio.pool import AsyncPool
from ..errors import PoolTimeout
from ..policies import policy_for_mode
from ..pool import Pool
from ..stats import PoolStats
from ._common import (
    DSN_ENV,
    EXIT_OK,
    EXIT_VERDICT_FAILED,
    CommandError,
    _dsn_password,
    _one_line,
    mask_dsn,
)

_SAMPLE_INTERVAL = 0.025  # seconds between two looks at pg_stat_activity
_CONNECT_TIMEOUT = 5  # seconds, for the preflight connection


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``values`` (nearest rank); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


class ServerSampler:
    """A thread that counts, every few milliseconds, the backends in pg_stat_activity with a
    given ``application_name``, and remembers the peak per name."""

    def __init__(self, dsn: str) -> None:
        self._conn = psycopg.connect(
            dsn,
            autocommit=True,
            application_name="pgpoolkit-demo-monitor",
            connect_timeout=_CONNECT_TIMEOUT,
        )
        self._app: str | None = None
        self._lock = threading.Lock()
        self.current = 0
        self.peaks: dict[str, int] = {}
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="pgpoolkit-demo-sampler", daemon=True
        )
        self._thread.start()

    def watch(self, app: str | None) -> None:
        with self._lock:
            self._app = app
            self.current = 0
            if app is not None:
                self.peaks.setdefault(app, 0)

    def count(self, app: str) -> int:
        row = self._conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app,)
        ).fetchone()
        return int(row[0]) if row else 0

    def _run(self) -> None:
        while not self._stop.wait(_SAMPLE_INTERVAL):
            with self._lock:
                app = self._app
                if app is None:
                    continue
                try:
                    n = self.count(app)
                except psycopg.Error as ex:
                    self.error = str(ex)
                    return
                self.current = n
                self.peaks[app] = max(self.peaks[app], n)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self._conn.close()

    def __enter__(self) -> ServerSampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class PartResult:
    """What one part of the demo (threads or asyncio) measured."""

    title: str
    clients: int
    max_size: int
    elapsed: float = 0.0
    waits: list[float] = field(default_factory=list)  # checkout waits, seconds
    durations: list[float] = field(default_factory=list)  # connection held, seconds
    errors: int = 0
    first_error: str | None = None
    peak_servers: int = 0
    stats: PoolStats | None = None

    @property
    def transactions(self) -> int:
        return len(self.durations)

    @property
    def throughput(self) -> float:
        return self.transactions / self.elapsed if self.elapsed > 0 else 0.0


@dataclass
class _Client:
    """One thread's or task's figures (lists appended by their owner only)."""

    waits: list[float] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str | None = None

    def failed(self, ex: BaseException) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = f"{type(ex).__name__}: {ex}"


def _collect(result: PartResult, clients: Sequence[_Client]) -> None:
    for c in clients:
        result.waits.extend(c.waits)
        result.durations.extend(c.durations)
        result.errors += c.errors
        if result.first_error is None and c.first_error is not None:
            result.first_error = c.first_error


# -- the workload ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """The table every unit of work writes to and reads back from."""

    table: str

    @property
    def insert(self) -> sql.Composed:
        return sql.SQL("INSERT INTO {} (client, n) VALUES (%s, %s) RETURNING id").format(
            sql.Identifier(self.table)
        )

    @property
    def select(self) -> sql.Composed:
        return sql.SQL("SELECT client, n FROM {} WHERE id = %s").format(sql.Identifier(self.table))

    def create(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(
            sql.SQL(
                "CREATE UNLOGGED TABLE {} (id bigserial PRIMARY KEY, client int NOT NULL, "
                "n int NOT NULL, at timestamptz NOT NULL DEFAULT now())"
            ).format(sql.Identifier(self.table))
        )

    def drop(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(self.table)))


class _WrongRow(Exception):
    pass


def _check_row(row: tuple[Any, ...] | None, client: int, n: int) -> None:
    if row is None or tuple(row) != (client, n):
        raise _WrongRow(f"read back {row!r}, expected {(client, n)!r}")


def _print(text: str = "") -> None:
    print(text, flush=True)


def _progress_line(
    t: float, done: int, last_done: int, dt: float, stats: PoolStats, servers: int
) -> str:
    rate = (done - last_done) / dt if dt > 0 else 0.0
    return (
        f"  {t:5.1f} s  {done:7d} tx  {rate:7.0f} tx/s   pool: {stats.clients_active} in use, "
        f"{stats.servers_idle} idle, {stats.clients_waiting} waiting   "
        f"server connections: {servers}"
    )


def _pool_settings(app: str, max_size: int, mode: str, name: str) -> dict[str, Any]:
    """The demo pool's parameters, threads and asyncio alike."""
    return {
        "min_size": min(2, max_size),
        "max_size": max_size,
        "mode": mode,
        "name": name,
        "timeout": 10.0,
        "kwargs": {"application_name": app},
    }


def run_threads(
    dsn: str,
    workload: Workload,
    sampler: ServerSampler,
    *,
    clients: int,
    max_size: int,
    mode: str,
    seconds: float,
) -> PartResult:
    """``clients`` threads loop over short transactions through one Pool for ``seconds``."""
    app = f"pgpoolkit-demo-{os.getpid()}-threads"
    result = PartResult("threads", clients, max_size)
    pool = Pool(dsn, open=False, **_pool_settings(app, max_size, mode, "demo-threads"))
    sampler.watch(app)
    try:
        pool.open(wait=True, timeout=10.0)
        stop = threading.Event()
        start = threading.Barrier(clients + 1)
        figures = [_Client() for _ in range(clients)]

        def client(i: int) -> None:
            me = figures[i]
            start.wait()
            n = 0
            while not stop.is_set():
                n += 1
                t0 = time.perf_counter()
                try:
                    with pool.connection() as conn:
                        t1 = time.perf_counter()
                        cur = conn.execute(workload.insert, (i, n))
                        row = cur.fetchone()
                        assert row is not None
                        _check_row(conn.execute(workload.select, (row[0],)).fetchone(), i, n)
                except (psycopg.Error, _WrongRow) as ex:
                    me.failed(ex)
                    continue
                me.waits.append(t1 - t0)
                me.durations.append(time.perf_counter() - t1)

        threads = [
            threading.Thread(target=client, args=(i,), name=f"demo-client-{i}", daemon=True)
            for i in range(clients)
        ]
        for th in threads:
            th.start()
        start.wait()
        t_start = time.perf_counter()
        ticker = _Ticker(seconds, t_start, figures, pool.stats, sampler)
        try:
            while (pause := ticker.pause()) is not None:
                time.sleep(pause)
                ticker.report()
        finally:
            stop.set()
            for th in threads:
                th.join()
        result.elapsed = time.perf_counter() - t_start
        result.stats = pool.stats()
        _collect(result, figures)
    finally:
        pool.close()
        sampler.watch(None)
    result.peak_servers = sampler.peaks.get(app, 0)
    return result


class _Ticker:
    """The demo's progress: a line every second (and at the end) until ``seconds`` have
    passed since ``t_start``; the threads and the asyncio parts sleep their own way between."""

    def __init__(
        self,
        seconds: float,
        t_start: float,
        figures: list[_Client],
        stats: Callable[[], PoolStats],
        sampler: ServerSampler,
    ) -> None:
        self.end = t_start + seconds
        self.t_start = self.last_t = t_start
        self.last_done = 0
        self.figures, self.stats, self.sampler = figures, stats, sampler

    def pause(self) -> float | None:
        """Seconds to sleep before the next line; None once the time is up."""
        now = time.perf_counter()
        left = self.end - now
        if left <= 0:
            return None
        return min(1.0 - (now - self.t_start) % 1.0, left)

    def report(self) -> None:
        now, done = time.perf_counter(), sum(len(f.durations) for f in self.figures)
        since, dt = now - self.t_start, now - self.last_t
        _print(_progress_line(since, done, self.last_done, dt, self.stats(), self.sampler.current))
        self.last_t, self.last_done = now, done


async def _arun_tasks(
    dsn: str,
    workload: Workload,
    sampler: ServerSampler,
    *,
    clients: int,
    max_size: int,
    mode: str,
    seconds: float,
) -> PartResult:
    app = f"pgpoolkit-demo-{os.getpid()}-asyncio"
    result = PartResult("asyncio", clients, max_size)
    pool = AsyncPool(dsn, **_pool_settings(app, max_size, mode, "demo-asyncio"))
    sampler.watch(app)
    try:
        await pool.open(wait=True, timeout=10.0)
        stop = asyncio.Event()
        figures = [_Client() for _ in range(clients)]

        async def client(i: int) -> None:
            me = figures[i]
            n = 0
            while not stop.is_set():
                n += 1
                t0 = time.perf_counter()
                try:
                    async with pool.connection() as conn:
                        t1 = time.perf_counter()
                        cur = await conn.execute(workload.insert, (i, n))
                        row = await cur.fetchone()
                        assert row is not None
                        cur = await conn.execute(workload.select, (row[0],))
                        _check_row(await cur.fetchone(), i, n)
                except (psycopg.Error, _WrongRow) as ex:
                    me.failed(ex)
                    await asyncio.sleep(0)
                    continue
                me.waits.append(t1 - t0)
                me.durations.append(time.perf_counter() - t1)

        t_start = time.perf_counter()
        tasks = [asyncio.create_task(client(i), name=f"demo-client-{i}") for i in range(clients)]
        ticker = _Ticker(seconds, t_start, figures, pool.stats, sampler)
        try:
            while (pause := ticker.pause()) is not None:
                await asyncio.sleep(pause)
                ticker.report()
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        result.elapsed = time.perf_counter() - t_start
        result.stats = pool.stats()
        _collect(result, figures)
    finally:
        await pool.close()
        sampler.watch(None)
    result.peak_servers = sampler.peaks.get(app, 0)
    return result


def run_tasks(
    dsn: str,
    workload: Workload,
    sampler: ServerSampler,
    *,
    clients: int,
    max_size: int,
    mode: str,
    seconds: float,
) -> PartResult:
    """``clients`` asyncio tasks loop over short transactions through one AsyncPool."""
    return asyncio.run(
        _arun_tasks(
            dsn,
            workload,
            sampler,
            clients=clients,
            max_size=max_size,
            mode=mode,
            seconds=seconds,
        )
    )


# -- the report ------------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def report_part(r: PartResult) -> None:
    _print(
        f"  done: {r.transactions} transactions in {r.elapsed:.2f} s = {r.throughput:,.0f} tx/s"
        + (f", {r.errors} errors" if r.errors else "")
    )
    _print(
        f"  checkout wait: p50 {_ms(percentile(r.waits, 0.50))}, "
        f"p99 {_ms(percentile(r.waits, 0.99))}, max {_ms(max(r.waits, default=0.0))}   "
        f"connection held per transaction: p50 {_ms(percentile(r.durations, 0.50))}, "
        f"p99 {_ms(percentile(r.durations, 0.99))}"
    )
    _print(
        f"  server connections: peak {r.peak_servers} seen in pg_stat_activity "
        f"for {r.clients} clients (max_size {r.max_size})"
    )
    s = r.stats
    if s is not None:
        _print(
            f"  pool.stats(): requests {s.requests_total} ({s.requests_queued_total} queued, "
            f"{s.wait_ms_total} ms waited in all), timeouts {s.timeouts_total}, "
            f"rejected {s.rejected_total}; connections opened {s.connections_opened_total}, "
            f"failed {s.connections_failed_total}, lost {s.connections_lost_total}, "
            f"closed {s.connections_closed_total}; now {s.servers_total} open"
        )
    if r.first_error:
        _print(f"  first error: {_one_line(r.first_error)}")


def verdict(parts: Sequence[PartResult]) -> tuple[bool, str]:
    """(ok, one line) on what the parts show."""
    problems: list[str] = []
    for r in parts:
        if r.peak_servers > r.max_size:
            problems.append(
                f"{r.title}: {r.peak_servers} server connections seen, more than "
                f"max_size {r.max_size}"
            )
        if r.stats is not None and r.stats.connections_opened_total > r.max_size:
            # connections replaced (lost, closed) may be reopened: only the net count matters
            lost = r.stats.connections_lost_total + r.stats.connections_closed_total
            if r.stats.connections_opened_total - lost > r.max_size:
                problems.append(
                    f"{r.title}: {r.stats.connections_opened_total} connections opened "
                    f"for max_size {r.max_size}"
                )
        if r.errors:
            problems.append(f"{r.title}: {r.errors} transactions failed")
        if r.transactions == 0:
            problems.append(f"{r.title}: no transaction completed")
        if r.stats is not None and r.stats.timeouts_total:
            problems.append(f"{r.title}: {r.stats.timeouts_total} checkouts timed out")
    if problems:
        return False, "FAIL: " + "; ".join(problems)
    total = sum(r.transactions for r in parts)
    clients = " and ".join(
        f"{r.clients} {'threads' if r.title == 'threads' else 'tasks'}" for r in parts
    )
    peak = max(r.peak_servers for r in parts)
    limit = max(r.max_size for r in parts)
    return True, (
        f"OK: {clients} ran {total:,} transactions over at most {peak} server connections "
        f"(max_size {limit}), with no errors and no timeouts"
    )


# -- the demo command ------------------------------------------------------------------------------


@contextmanager
def _server(dsn: str | None) -> Iterator[str]:
    """The DSN to use: the given one, or a throwaway local PostgreSQL's (removed at exit)."""
    if dsn is not None:
        yield dsn
        return
    from ..testing import TemporaryPostgres

    _print("starting a throwaway PostgreSQL (initdb + pg_ctl; pass --dsn to use yours)...")
    t0 = time.perf_counter()
    pg = TemporaryPostgres()
    try:
        pg.start()
    except (RuntimeError, OSError) as ex:
        pg.cleanup()
        raise CommandError(
            f"can't start a throwaway PostgreSQL: {_one_line(str(ex))} "
            f"Or pass --dsn, or set {DSN_ENV}."
        ) from None
    try:
        _print(f"  ready in {time.perf_counter() - t0:.1f} s: {pg.dsn}")
        yield pg.dsn
    finally:
        t1 = time.perf_counter()
        pg.cleanup()
        _print(f"throwaway PostgreSQL removed ({time.perf_counter() - t1:.1f} s)")


def demo(args: argparse.Namespace) -> int:
    dsn_arg: str | None = args.dsn if args.dsn is not None else os.environ.get(DSN_ENV) or None
    if dsn_arg is not None:
        try:
            conninfo_to_dict(dsn_arg)
        except psycopg.Error:
            raise CommandError(
                "the DSN is not in valid libpq connection string or URI syntax "
                "(not shown: it may hold a password)"
            ) from None
    try:
        policy_for_mode(args.mode)
    except ValueError as ex:  # a mode not available in this version
        raise CommandError(str(ex)) from None
    t_begin = time.perf_counter()
    _print(f"pgpoolkit {__version__} demo: many clients, few server connections")
    with _server(dsn_arg) as dsn:
        password = _dsn_password(dsn)
        shown = mask_dsn(dsn)
        if dsn_arg is not None:
            _print(f"server: {shown}")
        try:
            with psycopg.connect(
                dsn,
                autocommit=True,
                connect_timeout=_CONNECT_TIMEOUT,
                application_name="pgpoolkit-demo-setup",
            ) as admin:
                version = admin.info.server_version
                workload = Workload(f"pgpoolkit_demo_{os.getpid()}_{secrets.token_hex(3)}")
                workload.create(admin)
        except psycopg.Error as ex:
            raise CommandError(
                f"can't connect to {shown}: {_one_line(str(ex), password)}"
            ) from None
        _print(
            f"PostgreSQL {version // 10000}.{version % 10000}; "
            f"created table {workload.table} (dropped at the end)"
        )
        parts: list[PartResult] = []
        try:
            with ServerSampler(dsn) as sampler:
                half = args.seconds / 2
                _print()
                _print(
                    f"[1/2] {args.clients} threads, each looping over a transaction "
                    f"(INSERT ... RETURNING, SELECT it back, COMMIT), through "
                    f"Pool(max_size={args.max_size}, mode={args.mode!r}) for {half:.1f} s"
                )
                parts.append(
                    run_threads(
                        dsn,
                        workload,
                        sampler,
                        clients=args.clients,
                        max_size=args.max_size,
                        mode=args.mode,
                        seconds=half,
                    )
                )
                report_part(parts[-1])
                _print()
                _print(
                    f"[2/2] {args.tasks} asyncio tasks, the same transaction, through "
                    f"AsyncPool(max_size={args.max_size}, mode={args.mode!r}) for {half:.1f} s"
                )
                parts.append(
                    run_tasks(
                        dsn,
                        workload,
                        sampler,
                        clients=args.tasks,
                        max_size=args.max_size,
                        mode=args.mode,
                        seconds=half,
                    )
                )
                report_part(parts[-1])
                if sampler.error is not None:
                    _print(f"  (pg_stat_activity sampling stopped: {_one_line(sampler.error)})")
        except PoolTimeout as ex:
            raise CommandError(
                f"the pool could not connect: {_one_line(str(ex), password)}"
            ) from None
        except psycopg.Error as ex:
            raise CommandError(f"database error: {_one_line(str(ex), password)}") from None
        finally:
            try:
                with psycopg.connect(
                    dsn, autocommit=True, connect_timeout=_CONNECT_TIMEOUT
                ) as admin:
                    workload.drop(admin)
            except psycopg.Error as ex:
                _print(f"could not drop table {workload.table}: {_one_line(str(ex), password)}")
        ok, line = verdict(parts)
        _print()
        _print(f"verdict: {line}")
    _print(f"demo took {time.perf_counter() - t_begin:.1f} s")
    return EXIT_OK if ok else EXIT_VERDICT_FAILED
