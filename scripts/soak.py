#!/usr/bin/env python
"""Soak test: pools under load and random faults for a while, then a report.

Four pools run at once against one server: session and transaction modes, each as a threaded
``Pool`` and as an ``AsyncPool`` (on an event loop in a thread of its own), each with its own
clients doing small transactions that check their own answers. Meanwhile, at random, a fault
is injected: backends terminated (``pg_terminate_backend``), every link through the TCP proxy
reset, the server restarted (only on a server of our own), and asyncio tasks cancelled at
random points.

At the end: units done, errors by type, leaks (each pool's figures against
``pg_stat_activity``), hangs (a client that did not finish within its deadline), memory growth
(RSS and tracemalloc, from after the warm-up to the end) and the recovery times after each
fault (from the fault's end to the first client served on each pool).

Exit status: 0 when there was no leak, no hang and no wrong answer; 1 otherwise.

    python scripts/soak.py                     # 10 minutes, on a throwaway server of its own
    python scripts/soak.py --duration 30       # what CI runs
    python scripts/soak.py --dsn "host=..."    # a server of yours (never restarted)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import random
import resource
import statistics
import sys
import threading
import time
import tracemalloc
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from pgpoolkit import AsyncPool, Pool
from pgpoolkit.testing import TcpProxy, TemporaryPostgres

MODES = ("session", "transaction")
KINDS = ("threads", "asyncio")


class WrongAnswer(AssertionError):
    """A statement returned another client's answer."""


@dataclass
class Tally:
    """What one pool's clients saw."""

    units: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    max_latency: float = 0.0
    last_ok: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def done(self, t0: float, error: BaseException | None) -> None:
        now = time.monotonic()
        with self.lock:
            self.max_latency = max(self.max_latency, now - t0)
            if error is None:
                self.units += 1
                self.last_ok = now
            else:
                name = type(error).__name__
                self.errors[name] += 1
                self.examples.setdefault(name, str(error).strip().splitlines()[0][:200])


class Load:
    """One pool and its clients (threads, or tasks on an event loop in a thread)."""

    def __init__(
        self, kind: str, mode: str, conninfo: str, clients: int, timeout: float, tag: str
    ) -> None:
        self.kind = kind
        self.mode = mode
        self.prefix = f"soak-{tag}-"
        self.app = f"{self.prefix}{kind}-{mode}"
        self.clients = clients
        self.tally = Tally()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.min_size = 2
        options: dict[str, Any] = dict(
            kwargs={"application_name": self.app},
            min_size=self.min_size,
            max_size=5,
            mode=mode,
            timeout=timeout,
            max_idle=2.0,
            name=self.app,
        )
        if kind == "threads":
            self.pool: Any = Pool(conninfo, **options)
        else:
            self.loop = asyncio.new_event_loop()
            self.loop_thread = threading.Thread(target=self.loop.run_forever, daemon=True)
            self.loop_thread.start()

            async def make() -> AsyncPool:
                pool = AsyncPool(conninfo, **options)
                await pool.open()
                return pool

            self.pool = self.on_loop(make())

    def on_loop(self, coro: Any, timeout: float = 60.0) -> Any:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stats(self) -> Any:
        if self.loop is None:
            return self.pool.stats()

        async def get() -> Any:
            return self.pool.stats()

        return self.on_loop(get(), 10)

    def start(self) -> None:
        if self.kind == "threads":
            for n in range(self.clients):
                thread = threading.Thread(target=self._thread_client, args=(n,), daemon=True)
                self.threads.append(thread)
                thread.start()
            return

        async def spawn() -> None:
            for n in range(self.clients):
                self.tasks.append(asyncio.create_task(self._task_client(n)))

        self.on_loop(spawn())

    def _thread_client(self, n: int) -> None:
        k = 0
        while not self.stopping.is_set():
            k += 1
            t0 = time.monotonic()
            try:
                with self.pool.connection() as conn:
                    for i in range(2):
                        token = f"{n}-{k}-{i}"
                        row = conn.execute("SELECT %s::text", (token,)).fetchone()
                        if row is None or row[0] != token:
                            raise WrongAnswer(f"asked for {token}, got {row!r}")
            except Exception as ex:
                self.tally.done(t0, ex)
            else:
                self.tally.done(t0, None)
            time.sleep(random.random() * 0.01)

    async def _task_client(self, n: int) -> None:
        k = 0
        while not self.stopping.is_set():
            k += 1
            t0 = time.monotonic()
            try:
                async with self.pool.connection() as conn:
                    for i in range(2):
                        token = f"{n}-{k}-{i}"
                        cur = await conn.execute("SELECT %s::text", (token,))
                        row = await cur.fetchone()
                        if row is None or row[0] != token:
                            raise WrongAnswer(f"asked for {token}, got {row!r}")
                self.tally.done(t0, None)
                await asyncio.sleep(random.random() * 0.01)
            except asyncio.CancelledError:
                if self.stopping.is_set():
                    raise
                # a random cancellation: count it and go on (Python 3.11+ counts them)
                task: Any = asyncio.current_task()
                while getattr(task, "cancelling", lambda: 0)():
                    task.uncancel()
                self.tally.done(t0, asyncio.CancelledError("cancelled"))
            except Exception as ex:
                self.tally.done(t0, ex)

    def cancel_some(self, how_many: int) -> None:
        """Cancel random client tasks wherever they are (they count it and go on)."""
        if self.loop is None or not self.tasks:
            return
        for task in random.sample(self.tasks, min(how_many, len(self.tasks))):
            self.loop.call_soon_threadsafe(task.cancel)

    def stop(self, deadline: float) -> int:
        """Stop the clients; the number still running after ``deadline`` s (hung)."""
        self.stopping.set()
        end = time.monotonic() + deadline
        if self.kind == "threads":
            for thread in self.threads:
                thread.join(max(0.0, end - time.monotonic()))
            return sum(t.is_alive() for t in self.threads)

        async def wait() -> int:
            _done, pending = await asyncio.wait(self.tasks, timeout=deadline)
            for task in pending:
                task.cancel()
            return len(pending)

        result: int = self.on_loop(wait(), deadline + 30)
        return result

    def close(self) -> None:
        if self.loop is None:
            self.pool.close()
            return
        with contextlib.suppress(Exception):
            self.on_loop(self.pool.close(), 30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.loop_thread.join(10)


def rss_mb() -> float:
    """Resident memory now (Linux /proc), or the peak (elsewhere), in MB."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def backends(admin_dsn: str, app: str) -> int:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app,)
        ).fetchone()
    return int(row[0]) if row else -1


@contextlib.contextmanager
def server(dsn: str | None) -> Iterator[tuple[str, TemporaryPostgres | None]]:
    if dsn is not None:
        yield dsn, None
        return
    with TemporaryPostgres() as pg:
        yield pg.dsn, pg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--dsn", help="a server of yours (default: a throwaway one)")
    parser.add_argument("--clients", type=int, default=16, help="clients per pool (default 16)")
    parser.add_argument("--timeout", type=float, default=3.0, help="pool timeout (default 3 s)")
    parser.add_argument(
        "--fault-every", type=float, default=3.0, help="mean seconds between faults (default 3)"
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", help="also write the report to this file")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.clients <= 0 or args.timeout <= 0:
        parser.error("--duration, --clients and --timeout must be > 0")
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    random.seed(seed)

    with server(args.dsn) as (dsn, pg):
        params = conninfo_to_dict(dsn)
        host = str(params.get("host") or "127.0.0.1")
        proxy: TcpProxy | None = None
        if not host.startswith("/"):
            with contextlib.suppress(ValueError):  # not a loopback server: no proxy faults
                proxy = TcpProxy(host, int(str(params.get("port") or 5432)))
                proxy.start()
        tag = uuid.uuid4().hex[:6]
        loads: list[Load] = []
        for i, (kind, mode) in enumerate((k, m) for k in KINDS for m in MODES):
            # half the pools through the proxy (network faults), half straight to the server
            via_proxy = proxy is not None and i % 2 == 0
            conninfo = proxy.dsn_for(dsn) if proxy is not None and via_proxy else dsn
            loads.append(Load(kind, mode, conninfo, args.clients, args.timeout, tag))
        return soak(args, seed, dsn, pg, proxy, loads)


def soak(
    args: argparse.Namespace,
    seed: int,
    dsn: str,
    pg: TemporaryPostgres | None,
    proxy: TcpProxy | None,
    loads: list[Load],
) -> int:
    faults: Counter[str] = Counter()
    recoveries: dict[str, list[float]] = {}
    t_start = time.monotonic()
    for load in loads:
        load.start()
    time.sleep(min(2.0, args.duration / 10))  # warm-up: pools grown, caches filled
    gc.collect()
    tracemalloc.start()
    rss0 = rss_mb()
    traced0 = tracemalloc.get_traced_memory()[0]
    end = t_start + args.duration
    kinds = ["terminate", "cancel"]
    if proxy is not None:
        kinds.append("reset")
    if pg is not None:
        kinds.append("restart")
    restarted = False
    try:
        while time.monotonic() < end - 2 * args.timeout:
            time.sleep(min(random.expovariate(1 / args.fault_every), end - time.monotonic()))
            # one restart per run at least (there is a server of our own), late enough
            fault = random.choice(kinds)
            if pg is not None and not restarted and time.monotonic() > t_start + args.duration / 3:
                fault = "restart"
            if fault == "restart":
                assert pg is not None
                restarted = True
                pg.stop(random.choice(["fast", "immediate"]))
                pg.start()
            elif fault == "terminate":
                with psycopg.connect(dsn, autocommit=True) as admin:
                    admin.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE application_name LIKE %s AND random() < 0.5",
                        (loads[0].prefix + "%",),
                    )
            elif fault == "reset":
                assert proxy is not None
                proxy.reset_all()
            else:
                for load in loads:
                    load.cancel_some(max(1, args.clients // 4))
            faults[fault] += 1
            if fault != "cancel":
                after = time.monotonic()
                for load in loads:  # the first client served after the fault, on each pool
                    while load.tally.last_ok < after and time.monotonic() < after + 30:
                        time.sleep(0.002)
                    if load.tally.last_ok >= after:
                        recoveries.setdefault(fault, []).append(load.tally.last_ok - after)
        remaining = end - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)
    finally:
        deadline = args.timeout + 10.0
        hung = {load.app: load.stop(deadline) for load in loads}
    gc.collect()
    rss1 = rss_mb()
    traced1 = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()

    # leaks: each pool back to what the server says (give it a few seconds to settle)
    leaks: dict[str, str] = {}
    for load in loads:
        t0 = time.monotonic()
        while True:
            stats = load.stats()
            server = backends(dsn, load.app)
            agree = stats.servers_active == 0 and stats.servers_total == server
            if (agree and stats.servers_connecting == 0) or time.monotonic() - t0 > 15:
                break
            time.sleep(0.05)
        if not agree:
            leaks[load.app] = (
                f"pool: {stats.servers_active} active, {stats.servers_idle} idle, "
                f"{stats.servers_connecting} connecting; server: {server} backends"
            )
    for load in loads:
        load.close()
    if proxy is not None:
        proxy.close()

    wrong = sum(load.tally.errors["WrongAnswer"] for load in loads)
    errors: Counter[str] = Counter()
    examples: dict[str, str] = {}
    for load in loads:
        errors.update(load.tally.errors)
        for name, text in load.tally.examples.items():
            examples.setdefault(name, text)
    report = {
        "seed": seed,
        "duration_s": round(time.monotonic() - t_start, 1),
        "pools": {
            load.app: {
                "units": load.tally.units,
                "errors": dict(load.tally.errors),
                "max_latency_s": round(load.tally.max_latency, 3),
                "hung": hung[load.app],
            }
            for load in loads
        },
        "units": sum(load.tally.units for load in loads),
        "errors": dict(errors),
        "error_examples": examples,
        "faults": dict(faults),
        "recovery_s": {
            fault: {
                "n": len(times),
                "median": round(statistics.median(times), 3),
                "max": round(max(times), 3),
            }
            for fault, times in recoveries.items()
        },
        "leaks": leaks,
        "hung": sum(hung.values()),
        "wrong_answers": wrong,
        "rss_mb": {"start": round(rss0, 1), "end": round(rss1, 1), "growth": round(rss1 - rss0, 1)},
        "tracemalloc_kb": {"growth": round((traced1 - traced0) / 1024, 1)},
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    failed = bool(leaks) or report["hung"] or wrong
    print("soak: FAILED" if failed else "soak: ok", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
