"""A spike of demand on an empty pool: how many server connections each pool opens for it,
and how long the requests wait.

    python benchmarks/bench_spike.py [--dsn DSN] [--rounds N] [--min-size 0,1]
                                     [--requests 50] [--work-ms 10] [--connect-ms 150] [--json]

HikariCP's "spike demand" test: 50 requests arrive at once, each holds a connection for 10 ms
of work (here ``SELECT pg_sleep(0.01)``, autocommit), and opening a connection costs 150 ms (the
harness delays the connect: a psycopg ``Connection`` subclass whose ``connect()`` sleeps 150 ms
first, passed as ``connection_class``). The pools have ``min_size`` 0 or 1 and ``max_size`` 50.
HikariCP's published figure for this test is 5 connections opened, Apache DBCP2's 45.

Contenders: pgpoolkit ``Pool`` (50 threads), psycopg_pool ``ConnectionPool`` (50 threads),
pgpoolkit ``AsyncPool`` and psycopg_pool ``AsyncConnectionPool`` (50 asyncio tasks). Every
round makes a new pool, opens it (``wait=True``: min_size connections ready), lets the 50
requests go at once and closes the pool.

Reported: the server connections the pool opened (min_size included), the requests' latency
from the moment they arrived (p50, p99, max), and the *ideal*: the latencies a first-come,
first-served pool reaches with the very connections this pool had, when it had them (the
connect times recorded by the delayed connection class) and the measured time a request holds
its connection. A pool that makes a request wait for a connect while another connection comes
free, or leaves a connection idle while requests wait, is slower than its ideal; a pool that
opens more connections than it needs has a fast ideal and a large connection count.

Without ``--dsn`` (or ``PGPOOLKIT_DSN``) a throwaway local PostgreSQL is started and removed at
the end. See benchmarks/README.md for the method.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

import psycopg
import psycopg_pool
from _common import (
    SetupError,
    Target,
    add_run_arguments,
    connect_check,
    fmt,
    one_line,
    positive,
    print_targets,
    server_dsn,
    versions,
)
from harness import Contender, Result, Sample, Scenario, results_json, run_scenarios

import pgpoolkit

APP = "bench-spike"
REQUESTS = 50
WORK = 0.010  # seconds a request holds its connection (pg_sleep)
CONNECT_DELAY = 0.150  # seconds added to every connect
MAX_SIZE = 50
GRACE = 0.05  # seconds after the last request, for connects decided at the very end

PK = "pgpoolkit Pool (threads)"
PP = "psycopg_pool ConnectionPool (threads)"
PKA = "pgpoolkit AsyncPool (asyncio)"
PPA = "psycopg_pool AsyncConnectionPool (asyncio)"
BASELINE_OF = {PK: PP, PP: PP, PKA: PPA, PPA: PPA}

#: the issue's target: at most this many server connections opened for the spike
MAX_OPENED = 10
#: "no request waits for a connect it did not need": the mean latency at most this times the
#: ideal first-come, first-served schedule with the same connections (the slack is the cost of
#: handing connections between 50 threads or tasks on a small machine)
MAX_VS_IDEAL = 1.25


# -- slow connections ----------------------------------------------------------------------------


@dataclass
class ConnectLog:
    """When connects started and ended (perf_counter seconds)."""

    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)

    def clear(self) -> None:
        self.starts.clear()
        self.ends.clear()


def slow_connection_class(delay: float, log: ConnectLog) -> type[psycopg.Connection[Any]]:
    """A psycopg Connection whose connect() sleeps ``delay`` seconds first, and logs."""

    class SlowConnection(psycopg.Connection[Any]):
        @classmethod
        def connect(cls, conninfo: str = "", **kwargs: Any) -> SlowConnection:
            log.starts.append(time.perf_counter())
            time.sleep(delay)
            conn = super().connect(conninfo, **kwargs)
            log.ends.append(time.perf_counter())
            return conn

    return SlowConnection


def slow_async_connection_class(
    delay: float, log: ConnectLog
) -> type[psycopg.AsyncConnection[Any]]:
    """A psycopg AsyncConnection whose connect() sleeps ``delay`` seconds first, and logs."""

    class SlowAsyncConnection(psycopg.AsyncConnection[Any]):
        @classmethod
        async def connect(cls, conninfo: str = "", **kwargs: Any) -> SlowAsyncConnection:
            log.starts.append(time.perf_counter())
            await asyncio.sleep(delay)
            conn = await super().connect(conninfo, **kwargs)
            log.ends.append(time.perf_counter())
            return conn

    return SlowAsyncConnection


# -- figures -----------------------------------------------------------------------------------


def fifo_latencies(available: Sequence[float], requests: int, hold: float) -> list[float]:
    """The latencies of ``requests`` arriving at 0 on a first-come, first-served pool whose
    connections become available at ``available`` (seconds), each request holding one for
    ``hold`` seconds."""
    if not available:
        return []
    free = sorted(available)
    heapq.heapify(free)
    out = []
    for _ in range(requests):
        end = heapq.heappop(free) + hold
        out.append(end)
        heapq.heappush(free, end)
    return out


@dataclass
class SpikeRound:
    """What one spike showed beyond the latencies."""

    opened: int  # connections opened by the pool, min_size included
    hold_ms: float  # median time a request held its connection
    ideal_p50_ms: float
    ideal_max_ms: float
    vs_ideal: float  # mean latency / ideal mean latency


@dataclass
class SpikeExtras:
    """SpikeRounds per (scenario, contender), every run (the warm-up first, if any)."""

    warmup: bool
    rounds: dict[tuple[str, str], list[SpikeRound]] = field(default_factory=dict)

    def add(self, scenario: str, contender: str, r: SpikeRound) -> None:
        self.rounds.setdefault((scenario, contender), []).append(r)

    def of(self, scenario: str, contender: str) -> list[SpikeRound]:
        runs = self.rounds.get((scenario, contender), [])
        return runs[1:] if self.warmup and len(runs) > 1 else runs


def _analyse(
    t0: float, acquired: Sequence[float], done: Sequence[float], log: ConnectLog
) -> tuple[Sample, SpikeRound]:
    latencies = [d - t0 for d in done]
    hold = statistics.median(d - a for a, d in zip(acquired, done, strict=True))
    ideal = fifo_latencies([max(0.0, e - t0) for e in log.ends], len(done), hold)
    mean = statistics.fmean(latencies)
    ideal_mean = statistics.fmean(ideal) if ideal else float("nan")
    figures = SpikeRound(
        opened=len(log.starts),
        hold_ms=hold * 1000.0,
        ideal_p50_ms=_quantile(ideal, 0.5) * 1000.0,
        ideal_max_ms=max(ideal, default=float("nan")) * 1000.0,
        vs_ideal=mean / ideal_mean if ideal_mean > 0 else float("nan"),
    )
    sample = Sample(len(done), max(latencies), [int(x * 1e9) for x in latencies])
    return sample, figures


def _quantile(values: Sequence[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


# -- one spike -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spike:
    requests: int = REQUESTS
    work: float = WORK
    connect_delay: float = CONNECT_DELAY
    max_size: int = MAX_SIZE

    @property
    def query(self) -> str:
        return f"SELECT pg_sleep({self.work:.6f})"


def spike_threads(pool: Any, spec: Spike, log: ConnectLog) -> tuple[Sample, SpikeRound]:
    """``spec.requests`` threads ask ``pool`` (opened) for a connection at once."""
    n = spec.requests
    query = spec.query
    go = threading.Event()
    ready = threading.Barrier(n + 1)
    acquired = [0.0] * n
    done = [0.0] * n
    errors: list[BaseException] = []

    def request(i: int) -> None:
        try:
            ready.wait()
            go.wait()
            with pool.connection() as conn:
                acquired[i] = time.perf_counter()
                conn.execute(query)
            done[i] = time.perf_counter()
        except BaseException as ex:
            errors.append(ex)

    threads = [
        threading.Thread(target=request, args=(i,), name=f"spike-{i}", daemon=True)
        for i in range(n)
    ]
    for th in threads:
        th.start()
    ready.wait()
    t0 = time.perf_counter()
    go.set()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    time.sleep(GRACE)
    return _analyse(t0, acquired, done, log)


async def spike_tasks(pool: Any, spec: Spike, log: ConnectLog) -> tuple[Sample, SpikeRound]:
    """``spec.requests`` asyncio tasks ask ``pool`` (opened) for a connection at once."""
    n = spec.requests
    query = spec.query
    go = asyncio.Event()
    acquired = [0.0] * n
    done = [0.0] * n

    async def request(i: int) -> None:
        await go.wait()
        async with pool.connection() as conn:
            acquired[i] = time.perf_counter()
            await conn.execute(query)
        done[i] = time.perf_counter()

    tasks = [asyncio.create_task(request(i)) for i in range(n)]
    await asyncio.sleep(0)  # every task waits on go
    t0 = time.perf_counter()
    go.set()
    await asyncio.gather(*tasks)
    await asyncio.sleep(GRACE)
    return _analyse(t0, acquired, done, log)


# -- the scenario ------------------------------------------------------------------------------


def spike_scenario(dsn: str, min_size: int, extras: SpikeExtras, spec: Spike) -> Scenario:
    title = f"spike, min_size={min_size}"

    @contextmanager
    def setup() -> Iterator[Sequence[Contender]]:
        loop = asyncio.new_event_loop()
        try:
            yield [
                _threads_contender(dsn, title, PK, min_size, extras, spec, _pgpoolkit_pool),
                _threads_contender(dsn, title, PP, min_size, extras, spec, _psycopg_pool),
                _tasks_contender(
                    dsn, title, PKA, min_size, extras, spec, loop, _pgpoolkit_async_pool
                ),
                _tasks_contender(
                    dsn, title, PPA, min_size, extras, spec, loop, _psycopg_async_pool
                ),
            ]
        finally:
            loop.close()

    return Scenario(
        title,
        setup,
        ratio="time",
        description=f"{spec.requests} requests at once, each holding a connection "
        f"{spec.work * 1000:g} ms (SELECT pg_sleep), connecting takes "
        f"{spec.connect_delay * 1000:g} ms; min_size={min_size}, max_size={spec.max_size}",
    )


def _pool_kwargs(min_size: int, spec: Spike, app: str) -> dict[str, Any]:
    return {
        "min_size": min_size,
        "max_size": spec.max_size,
        "timeout": 30.0,
        "kwargs": {"application_name": app, "autocommit": True},
    }


def _pgpoolkit_pool(dsn: str, cls: Any, kwargs: dict[str, Any]) -> Any:
    return pgpoolkit.Pool(dsn, open=False, connection_class=cls, **kwargs)


def _psycopg_pool(dsn: str, cls: Any, kwargs: dict[str, Any]) -> Any:
    return psycopg_pool.ConnectionPool(dsn, open=False, connection_class=cls, **kwargs)


def _pgpoolkit_async_pool(dsn: str, cls: Any, kwargs: dict[str, Any]) -> Any:
    return pgpoolkit.AsyncPool(dsn, connection_class=cls, **kwargs)


def _psycopg_async_pool(dsn: str, cls: Any, kwargs: dict[str, Any]) -> Any:
    return psycopg_pool.AsyncConnectionPool(dsn, open=False, connection_class=cls, **kwargs)


PoolFactory = Callable[[str, Any, dict[str, Any]], Any]


def _threads_contender(
    dsn: str,
    title: str,
    name: str,
    min_size: int,
    extras: SpikeExtras,
    spec: Spike,
    factory: PoolFactory,
) -> Contender:
    log = ConnectLog()
    cls = slow_connection_class(spec.connect_delay, log)
    kwargs = _pool_kwargs(min_size, spec, APP)

    def run(_seconds: float) -> Sample:
        log.clear()
        pool = factory(dsn, cls, kwargs)
        try:
            pool.open(wait=True, timeout=30.0)
            sample, figures = spike_threads(pool, spec, log)
        finally:
            pool.close()
        extras.add(title, name, figures)
        return sample

    return Contender(name, run, BASELINE_OF[name])


def _tasks_contender(
    dsn: str,
    title: str,
    name: str,
    min_size: int,
    extras: SpikeExtras,
    spec: Spike,
    loop: asyncio.AbstractEventLoop,
    factory: PoolFactory,
) -> Contender:
    log = ConnectLog()
    cls = slow_async_connection_class(spec.connect_delay, log)
    kwargs = _pool_kwargs(min_size, spec, f"{APP}-async")

    async def one() -> tuple[Sample, SpikeRound]:
        pool = factory(dsn, cls, kwargs)
        try:
            await pool.open(wait=True, timeout=30.0)
            return await spike_tasks(pool, spec, log)
        finally:
            closing: Awaitable[None] = pool.close()
            await closing

    def run(_seconds: float) -> Sample:
        log.clear()
        sample, figures = loop.run_until_complete(one())
        extras.add(title, name, figures)
        return sample

    return Contender(name, run, BASELINE_OF[name])


def scenarios_for(
    dsn: str, min_sizes: Sequence[int], extras: SpikeExtras, spec: Spike = Spike()
) -> list[Scenario]:
    return [spike_scenario(dsn, m, extras, spec) for m in min_sizes]


# -- reporting -----------------------------------------------------------------------------------


@dataclass
class SpikeFigures:
    opened: int  # the median over the rounds
    opened_max: int
    hold_ms: float
    ideal_p50_ms: float
    ideal_max_ms: float
    vs_ideal: float


def figures_of(r: Result, extras: SpikeExtras) -> SpikeFigures | None:
    rounds = extras.of(r.scenario, r.contender)
    if not rounds:
        return None

    def med(values: Iterator[float]) -> float:
        finite = [v for v in values if v == v]
        return statistics.median(finite) if finite else float("nan")

    return SpikeFigures(
        opened=round(statistics.median(x.opened for x in rounds)),
        opened_max=max(x.opened for x in rounds),
        hold_ms=med(x.hold_ms for x in rounds),
        ideal_p50_ms=med(x.ideal_p50_ms for x in rounds),
        ideal_max_ms=med(x.ideal_max_ms for x in rounds),
        vs_ideal=med(x.vs_ideal for x in rounds),
    )


def print_tables(
    results: Sequence[Result],
    scenarios: Sequence[Scenario],
    extras: SpikeExtras,
    file: TextIO = sys.stdout,
) -> None:
    """Connections opened, the latencies and the ideal's."""
    descriptions = {s.name: s.description for s in scenarios}
    width = max([len("contender"), *(len(r.contender) for r in results)])
    for name in dict.fromkeys(r.scenario for r in results):
        print(name, file=file)
        print(f"  {descriptions.get(name, '')}", file=file)
        print(
            f"  {'contender':<{width}}  {'conns opened':>12}  {'p50 ms':>7}  {'p99 ms':>7}  "
            f"{'max ms':>7}  {'ideal p50':>9}  {'ideal max':>9}  {'mean vs ideal':>13}",
            file=file,
        )
        for r in results:
            if r.scenario != name:
                continue
            f = figures_of(r, extras)
            if f is None:
                continue
            opened = f"{f.opened} (max {f.opened_max})"
            print(
                f"  {r.contender:<{width}}  {opened:>12}  {r.p50_us / 1000:>7.1f}  "
                f"{r.p99_us / 1000:>7.1f}  {r.max_us / 1000:>7.1f}  {f.ideal_p50_ms:>9.1f}  "
                f"{f.ideal_max_ms:>9.1f}  {fmt(f.vs_ideal):>13}",
                file=file,
            )
        print(file=file)


def targets(results: Sequence[Result], extras: SpikeExtras) -> list[Target]:
    """The issue's spike target, for pgpoolkit's pools."""
    out = []
    for r in results:
        if r.contender not in (PK, PKA):
            continue
        f = figures_of(r, extras)
        if f is None:
            continue
        met = f.opened_max <= MAX_OPENED and f.vs_ideal <= MAX_VS_IDEAL
        out.append(
            Target(
                f"{r.scenario}: {r.contender}",
                f"<= {MAX_OPENED} conns opened, mean latency <= {MAX_VS_IDEAL:.2f} x ideal",
                f"{f.opened_max} conns opened (max of the rounds), mean latency "
                f"{fmt(f.vs_ideal)} x ideal",
                met,
            )
        )
    return out


def annotate(entry: dict[str, Any], r: Result, extras: SpikeExtras) -> None:
    """The JSON figures beyond the harness's."""
    f = figures_of(r, extras)
    if f is None:
        return
    entry["connections_opened"] = f.opened
    entry["connections_opened_max"] = f.opened_max
    entry["max_ms"] = r.max_us / 1000.0
    entry["hold_ms"] = f.hold_ms
    entry["ideal_p50_ms"] = f.ideal_p50_ms
    entry["ideal_max_ms"] = f.ideal_max_ms
    entry["mean_vs_ideal"] = f.vs_ideal if f.vs_ideal == f.vs_ideal else None
    entry["spike_rounds"] = [vars(x) for x in extras.of(r.scenario, r.contender)]


# -- main ------------------------------------------------------------------------------------------


def _sizes(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a list like 0,1, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected sizes >= 0, got {text}")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="A spike of 50 requests on an empty pool, with slow connects: "
        "connections opened and latency, pgpoolkit vs psycopg_pool (threads and asyncio).",
    )
    add_run_arguments(parser, rounds_help="spikes per contender", warmup=False)
    parser.add_argument(
        "--no-warmup", action="store_true", help="no unmeasured spike per contender first"
    )
    parser.add_argument(
        "--min-size", type=_sizes, default=[0, 1], help="the pools' min_size (default: 0,1)"
    )
    parser.add_argument(
        "--requests",
        type=positive(int),
        default=REQUESTS,
        help=f"requests at once (default: {REQUESTS})",
    )
    parser.add_argument(
        "--work-ms",
        type=positive(float),
        default=WORK * 1000,
        help=f"time a request holds its connection, ms (default: {WORK * 1000:g})",
    )
    parser.add_argument(
        "--connect-ms",
        type=float,
        default=CONNECT_DELAY * 1000,
        help=f"delay added to every connect, ms (default: {CONNECT_DELAY * 1000:g})",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    spec = Spike(
        requests=args.requests,
        work=args.work_ms / 1000.0,
        connect_delay=args.connect_ms / 1000.0,
        max_size=max(MAX_SIZE, args.requests),
    )

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    with ExitStack() as stack:
        try:
            dsn = server_dsn(stack, args.dsn, log)
            server_version = connect_check(dsn)
        except SetupError as ex:
            print(f"error: {one_line(ex)}", file=sys.stderr)
            return 2
        extras = SpikeExtras(warmup=not args.no_warmup)
        scenarios = scenarios_for(dsn, args.min_size, extras, spec)
        results = run_scenarios(
            scenarios, rounds=args.rounds, seconds=1.0, warmup=0.0 if args.no_warmup else 1.0
        )
    meta = {
        **versions(),
        "server_version": server_version,
        "rounds": args.rounds,
        "requests": spec.requests,
        "work_ms": spec.work * 1000,
        "connect_ms": spec.connect_delay * 1000,
        "max_size": spec.max_size,
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    if args.json:
        doc = json.loads(results_json(results, meta))
        for entry, r in zip(doc["results"], results, strict=True):
            annotate(entry, r, extras)
        doc["targets"] = [t.as_dict() for t in targets(results, extras)]
        print(json.dumps(doc, indent=2))
        return 0
    print(
        f"pgpoolkit {meta['pgpoolkit']}, psycopg {meta['psycopg']}, psycopg_pool "
        f"{meta['psycopg_pool']}, PostgreSQL {server_version // 10000}."
        f"{server_version % 10000}, Python {meta['python']}, {meta['cpus']} CPUs"
    )
    print(
        f"{args.rounds} interleaved spikes per contender, medians; run took "
        f"{meta['total_seconds']} s"
    )
    print()
    print_tables(results, scenarios, extras)
    print("targets:")
    print_targets(targets(results, extras), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
