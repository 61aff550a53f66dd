"""What an open, idle client costs in memory: 10,000 ``pool.connect()`` clients in
transaction mode over a pool of 5 server connections.

    python benchmarks/bench_memory.py [--dsn DSN] [--rounds N] [--clients 10000] [--no-rss]
                                      [--json]

A transaction-mode client holds no server connection between transactions, so an application
can keep one per request handler, websocket or task. Its cost is then its Python objects: the
issue's target is under 2 KB per client.

Every run opens ``--clients`` clients with ``pool.connect()`` (``Pool``, threads) or
``await pool.connect()`` (``AsyncPool``), keeps them, and closes them; twice: once timed (the
table's ops/s is clients opened per second, the latencies those of ``connect()``), once under
``tracemalloc`` (the bytes the Python heap grew by, divided by the clients: everything the
clients hold, the pool's bookkeeping of them included). Once per contender, a child process
does the same without tracemalloc and reports how much its resident set (RSS) grew per client:
the allocator's overhead included, which tracemalloc does not see.

Without ``--dsn`` (or ``PGPOOLKIT_DSN``) a throwaway local PostgreSQL is started and removed at
the end. See benchmarks/README.md for the method.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

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

CLIENTS = 10_000
MAX_SIZE = 5
APP = "bench-memory"
#: the issue's target: an open idle client in transaction mode costs under this many bytes
TARGET_BYTES = 2048

SYNC = "pgpoolkit Pool, transaction, pool.connect()"
ASYNC = "pgpoolkit AsyncPool, transaction, await pool.connect()"
KIND = {SYNC: "sync", ASYNC: "async"}


# -- measuring -----------------------------------------------------------------------------------


@dataclass
class MemoryRound:
    traced_bytes: float  # per client, tracemalloc
    servers: int  # server connections the pool had with all the clients open
    clients_open: int  # pool.stats().clients_open with all the clients open


@dataclass
class MemoryExtras:
    warmup: bool
    rounds: dict[tuple[str, str], list[MemoryRound]] = field(default_factory=dict)
    rss: dict[tuple[str, str], float | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def of(self, scenario: str, contender: str) -> list[MemoryRound]:
        runs = self.rounds.get((scenario, contender), [])
        return runs[1:] if self.warmup and len(runs) > 1 else runs


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _pool_kwargs() -> dict[str, Any]:
    return {
        "mode": "transaction",
        "min_size": 1,
        "max_size": MAX_SIZE,
        "kwargs": {"application_name": APP},
    }


class _Opener:
    """Opens and closes clients of one pool (sync or async) for the measurements."""

    def __init__(self, dsn: str, kind: str) -> None:
        self.kind = kind
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pool: Any
        if kind == "sync":
            self.pool = pgpoolkit.Pool(dsn, open=False, **_pool_kwargs())
            self.pool.open(wait=True, timeout=30.0)
        else:
            self.loop = asyncio.new_event_loop()
            self.pool = pgpoolkit.AsyncPool(dsn, **_pool_kwargs())
            self.loop.run_until_complete(self.pool.open(wait=True, timeout=30.0))
        # warm: a client used once, so that first-use caches are not counted per client
        client = self.open(1, [None])[0]
        self._use(client)
        self.close([client])

    def _use(self, client: Any) -> None:
        if self.loop is None:
            client.execute("SELECT 1").fetchone()
        else:

            async def use() -> None:
                await (await client.execute("SELECT 1")).fetchone()

            self.loop.run_until_complete(use())

    def open(self, n: int, into: list[Any], lat: list[int] | None = None) -> list[Any]:
        """Open ``n`` clients into ``into`` (preallocated), timing each if ``lat``."""
        clock = time.perf_counter_ns
        if self.loop is None:
            connect = self.pool.connect
            if lat is None:
                for i in range(n):
                    into[i] = connect()
            else:
                for i in range(n):
                    t0 = clock()
                    into[i] = connect()
                    lat.append(clock() - t0)
        else:
            aconnect = self.pool.connect

            async def opens() -> None:
                for i in range(n):
                    t0 = clock()
                    into[i] = await aconnect()
                    if lat is not None:
                        lat.append(clock() - t0)

            self.loop.run_until_complete(opens())
        return into

    def close(self, clients: Sequence[Any]) -> None:
        if self.loop is None:
            for c in clients:
                c.close()
        else:

            async def closes() -> None:
                for c in clients:
                    await c.close()

            self.loop.run_until_complete(closes())

    def stats(self) -> Any:
        return self.pool.stats()

    def shutdown(self) -> None:
        if self.loop is None:
            self.pool.close()
        else:
            self.loop.run_until_complete(self.pool.close())
            self.loop.close()


def measure(opener: _Opener, n: int) -> tuple[Sample, MemoryRound]:
    """A timed pass, then a tracemalloc pass, of ``n`` clients."""
    clients: list[Any] = [None] * n
    lat: list[int] = []
    gc.collect()
    t0 = time.perf_counter_ns()
    opener.open(n, clients, lat)
    elapsed = (time.perf_counter_ns() - t0) / 1e9
    stats = opener.stats()
    servers = stats.servers_active + stats.servers_idle + stats.servers_connecting
    clients_open = stats.clients_open
    opener.close(clients)
    clients = [None] * n
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        opener.open(n, clients)
        gc.collect()
        traced = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    opener.close(clients)
    return Sample(n, elapsed, lat), MemoryRound(traced / n, servers, clients_open)


def rss_child(dsn: str, kind: str, n: int) -> float:
    """In this (child) process: RSS growth per client while ``n`` clients are open."""
    opener = _Opener(dsn, kind)
    clients: list[Any] = [None] * n
    gc.collect()
    before = _rss_bytes()
    opener.open(n, clients)
    gc.collect()
    grown = _rss_bytes() - before
    opener.close(clients)
    opener.shutdown()
    return grown / n


def rss_in_child(dsn: str, kind: str, n: int) -> float:
    """:func:`rss_child` in a fresh Python process (a clean heap); bytes per client."""
    here = os.path.dirname(os.path.abspath(__file__))
    done = subprocess.run(
        [sys.executable, os.path.join(here, "bench_memory.py"), "--rss-child", kind],
        input=json.dumps({"dsn": dsn, "clients": n}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-2:])
        raise RuntimeError(f"the RSS child failed ({done.returncode}): {tail}")
    return float(done.stdout.strip().splitlines()[-1])


# -- the scenario ------------------------------------------------------------------------------


def memory_scenario(dsn: str, n: int, extras: MemoryExtras, rss: bool = True) -> Scenario:
    title = f"memory, {n:,} idle clients"

    @contextmanager
    def setup() -> Iterator[Sequence[Contender]]:
        with ExitStack() as stack:
            contenders = []
            for name in (SYNC, ASYNC):
                opener = _Opener(dsn, KIND[name])
                stack.callback(opener.shutdown)
                contenders.append(
                    Contender(name, _runner(dsn, title, name, opener, n, extras, rss))
                )
            yield contenders

    return Scenario(
        title,
        setup,
        ratio="time",
        baseline=SYNC,
        description=f"{n:,} pool.connect() clients held open, mode='transaction', "
        f"max_size={MAX_SIZE}",
    )


def _runner(
    dsn: str, title: str, name: str, opener: _Opener, n: int, extras: MemoryExtras, rss: bool
) -> Callable[[float], Sample]:
    def run(_seconds: float) -> Sample:
        key = (title, name)
        if rss and key not in extras.rss:
            try:
                extras.rss[key] = rss_in_child(dsn, KIND[name], n)
            except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as ex:
                extras.rss[key] = None
                extras.notes.append(f"memory: no RSS figure for {name}: {one_line(ex)}")
        sample, figures = measure(opener, n)
        extras.rounds.setdefault(key, []).append(figures)
        return sample

    return run


def scenarios_for(dsn: str, clients: int, extras: MemoryExtras, rss: bool = True) -> list[Scenario]:
    return [memory_scenario(dsn, clients, extras, rss)]


# -- reporting -----------------------------------------------------------------------------------


def traced_per_client(r: Result, extras: MemoryExtras) -> float | None:
    rounds = extras.of(r.scenario, r.contender)
    return statistics.median(x.traced_bytes for x in rounds) if rounds else None


def print_tables(
    results: Sequence[Result],
    scenarios: Sequence[Scenario],
    extras: MemoryExtras,
    file: TextIO = sys.stdout,
) -> None:
    descriptions = {s.name: s.description for s in scenarios}
    width = max([len("contender"), *(len(r.contender) for r in results)])
    for name in dict.fromkeys(r.scenario for r in results):
        print(name, file=file)
        print(f"  {descriptions.get(name, '')}", file=file)
        print(
            f"  {'contender':<{width}}  {'bytes/client':>12}  {'RSS/client':>10}  "
            f"{'server conns':>12}  {'connect()/s':>11}  {'p50 us':>7}  {'p99 us':>7}",
            file=file,
        )
        for r in results:
            if r.scenario != name:
                continue
            rounds = extras.of(r.scenario, r.contender)
            traced = traced_per_client(r, extras)
            rss = extras.rss.get((r.scenario, r.contender))
            servers = max((x.servers for x in rounds), default=None)
            print(
                f"  {r.contender:<{width}}  {fmt(traced, ',.0f'):>12}  {fmt(rss, ',.0f'):>10}  "
                f"{'' if servers is None else servers:>12}  {r.ops_per_s:>11,.0f}  "
                f"{r.p50_us:>7.1f}  {r.p99_us:>7.1f}",
                file=file,
            )
        print(file=file)


def targets(results: Sequence[Result], extras: MemoryExtras) -> list[Target]:
    out = []
    for r in results:
        traced = traced_per_client(r, extras)
        clients = [x.clients_open for x in extras.of(r.scenario, r.contender)]
        n = r.rounds[0].ops if r.rounds else 0
        out.append(
            Target(
                f"{r.scenario}: {r.contender.split(',')[0]}",
                f"< {TARGET_BYTES:,} bytes per idle transaction-mode client",
                f"{fmt(traced, ',.0f')} bytes per client (tracemalloc)",
                None if traced is None else traced < TARGET_BYTES and all(c >= n for c in clients),
            )
        )
    return out


def annotate(entry: dict[str, Any], r: Result, extras: MemoryExtras) -> None:
    entry["bytes_per_client"] = traced_per_client(r, extras)
    entry["rss_bytes_per_client"] = extras.rss.get((r.scenario, r.contender))
    entry["memory_rounds"] = [vars(x) for x in extras.of(r.scenario, r.contender)]


# -- main ------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Memory per open idle transaction-mode client (pool.connect()).",
    )
    add_run_arguments(parser, rounds=3, warmup=False)
    parser.add_argument(
        "--clients",
        type=positive(int),
        default=CLIENTS,
        help=f"clients held open (default: {CLIENTS:,})",
    )
    parser.add_argument(
        "--no-rss", action="store_true", help="leave out the RSS figure (a child process)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--rss-child", choices=("sync", "async"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rss_child:
        params = json.loads(sys.stdin.read())
        print(rss_child(params["dsn"], args.rss_child, int(params["clients"])))
        return 0
    t0 = time.perf_counter()

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    with ExitStack() as stack:
        try:
            dsn = server_dsn(stack, args.dsn, log)
            server_version = connect_check(dsn)
        except SetupError as ex:
            print(f"error: {one_line(ex)}", file=sys.stderr)
            return 2
        extras = MemoryExtras(warmup=False)
        scenarios = scenarios_for(dsn, args.clients, extras, rss=not args.no_rss)
        results = run_scenarios(scenarios, rounds=args.rounds, seconds=1.0, warmup=0.0)
    meta = {
        **versions(),
        "server_version": server_version,
        "rounds": args.rounds,
        "clients": args.clients,
        "max_size": MAX_SIZE,
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    goals = targets(results, extras)
    if args.json:
        doc = json.loads(results_json(results, meta))
        for entry, r in zip(doc["results"], results, strict=True):
            annotate(entry, r, extras)
        doc["targets"] = [t.as_dict() for t in goals]
        doc["notes"] = extras.notes
        print(json.dumps(doc, indent=2))
        return 0
    print(
        f"pgpoolkit {meta['pgpoolkit']}, psycopg {meta['psycopg']}, PostgreSQL "
        f"{server_version // 10000}.{server_version % 10000}, Python {meta['python']}"
    )
    print(f"{args.rounds} rounds per contender, medians; run took {meta['total_seconds']} s")
    print()
    print_tables(results, scenarios, extras)
    print("targets:")
    print_targets(goals, sys.stdout)
    for note in extras.notes:
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
