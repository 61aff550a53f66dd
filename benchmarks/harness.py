"""The benchmark harness: everything the scenarios share.

A scenario file (``benchmarks/scenarios/*.py``) gives :func:`scenarios` (what to run, for the
:class:`Context` of this run), and optionally :func:`targets` (the issue's targets it measures).
The runner (``benchmarks/run.py``) opens the server, runs every scenario's contenders in
interleaved rounds, prints a table per scenario (medians, ratios against baselines, p50/p99, CPU
per unit, any extra figure a contender reports), the targets, and optionally JSON and a chart.

- :class:`Scenario`: a name, a ``setup()`` context manager yielding its :class:`Contender` s
  (opened once for all the rounds), the ratio kind and the baselines.
- :class:`Contender`: a name and ``run(seconds) -> Sample``; ``app`` makes the harness count
  the contender's server connections in pg_stat_activity while it runs.
- :class:`Threads` and :class:`Tasks`: one description of a workload, run by threads or by
  asyncio tasks. Both open pools and connections (closed with the scenario), make the usual
  units (:meth:`Threads.checkout`, :meth:`Threads.block`, :meth:`Threads.query`) and run them
  (:meth:`Threads.run`), so a scenario written against ``d: Driver`` gives both variants.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import math
import os
import platform
import pwd
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TextIO

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import pgpoolkit
from pgpoolkit.testing import TemporaryPostgres

DSN_ENV = "PGPOOLKIT_DSN"
POOL_SIZE = 10
RatioKind = Literal["time", "throughput"]
Op = Callable[[], object]
AOp = Callable[[], Awaitable[object]]


class SetupError(Exception):
    """The benchmark can't run (no server, can't connect): a one-line message, exit 2."""


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def one_line(ex: BaseException | str) -> str:
    return " ".join(str(ex).split()) or type(ex).__name__


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "n/a" if value is None or value != value else format(value, spec)


# -- the protocol --------------------------------------------------------------------------------


@dataclass
class Sample:
    """What one run of a contender measured; ``extra``: figures of its own (a column each)."""

    ops: int
    elapsed: float  # seconds, from the first worker's start to the last one's end
    latencies_ns: list[int]
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class Contender:
    """A competitor in a scenario. ``baselines`` overrides the scenario's ({label: name});
    ``app``: an application_name whose server connections are counted during each run."""

    name: str
    run: Callable[[float], Sample]
    baselines: dict[str, str] = field(default_factory=dict)
    app: str | None = None


@dataclass
class Scenario:
    """Contenders measured against each other, in interleaved rounds.

    ``baselines`` maps a column label to the contender every other one is compared with, per
    round (``time``: its time per unit over the baseline's, lower is better; ``throughput``:
    its throughput over the baseline's, higher is better). ``seconds`` is the length of one
    round of one contender; ``rounds``/``warmup`` override the run's.
    """

    name: str
    setup: Callable[[], AbstractContextManager[Sequence[Contender]]]
    ratio: RatioKind
    seconds: float
    baselines: dict[str, str] = field(default_factory=dict)
    description: str = ""
    rounds: int | None = None
    warmup: bool = True


@dataclass
class Target:
    """One of the issue's targets and this run's verdict (``met`` None: not measured)."""

    name: str
    goal: str
    measured: str
    met: bool | None

    @property
    def verdict(self) -> str:
        return "n/a" if self.met is None else ("met" if self.met else "MISSED")


@dataclass
class Context:
    """What a scenario file gets: the server, the preset, PgBouncer, and where notes go."""

    dsn: str
    preset: str  # "quick", "full" or "smoke"
    pgbouncer: str | None = None  # the program, None: not available (see notes)
    notes: list[str] = field(default_factory=list)

    def pick(self, quick: Any, full: Any, smoke: Any = None) -> Any:
        """The value for this run's preset (``smoke`` defaults to ``quick``)."""
        if self.preset == "full":
            return full
        return quick if self.preset == "quick" or smoke is None else smoke

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


# -- results -------------------------------------------------------------------------------------


@dataclass
class Round:
    ops_per_s: float
    p50_us: float
    p99_us: float
    cpu_us: float
    extra: dict[str, float]


#: extra figures shown as the highest of the rounds, not the median
PEAK_FIGURES = ("server conns", "conns opened")


@dataclass
class Result:
    """A contender's figures in a scenario: medians over the rounds, per-round ratios."""

    scenario: str
    contender: str
    ratio_kind: RatioKind
    baselines: dict[str, str]
    rounds: list[Round] = field(default_factory=list)
    ratios: dict[str, list[float]] = field(default_factory=dict)

    def _median(self, get: Callable[[Round], float]) -> float:
        values = [v for v in map(get, self.rounds) if not math.isnan(v)]
        return statistics.median(values) if values else math.nan

    @property
    def ops_per_s(self) -> float:
        return self._median(lambda r: r.ops_per_s)

    @property
    def p50_us(self) -> float:
        return self._median(lambda r: r.p50_us)

    @property
    def p99_us(self) -> float:
        return self._median(lambda r: r.p99_us)

    @property
    def cpu_us(self) -> float:
        return self._median(lambda r: r.cpu_us)

    def extra(self, key: str) -> float | None:
        values = [r.extra[key] for r in self.rounds if key in r.extra]
        if not values:
            return None
        return max(values) if key in PEAK_FIGURES else statistics.median(values)

    def ratio(self, label: str | None = None) -> float | None:
        """The median per-round ratio to the baseline ``label`` (default: the first)."""
        label = label or next(iter(self.baselines), None)
        values = [v for v in self.ratios.get(label or "", []) if not math.isnan(v)]
        return statistics.median(values) if values else None

    def ratio_to(self, other: Result) -> float | None:
        """Median per-round throughput ratio to another contender of the same scenario."""
        pairs = zip(self.rounds, other.rounds, strict=False)
        values = [a.ops_per_s / b.ops_per_s for a, b in pairs if a.ops_per_s and b.ops_per_s]
        return statistics.median(values) if values else None


def find(results: Sequence[Result], scenario: str, contender: str) -> Result | None:
    return next((r for r in results if r.scenario == scenario and r.contender == contender), None)


def target(
    name: str, goal: str, value: float | None, met: Callable[[float], bool], unit: str = "x"
) -> Target:
    """A target read from one figure (None: not measured), shown as ``value unit``."""
    if value is None or math.isnan(value):
        return Target(name, goal, "not measured", None)
    return Target(
        name, goal, f"{value:,.2f} {unit}" if value < 100 else f"{value:,.0f} {unit}", met(value)
    )


# -- running workers -----------------------------------------------------------------------------


def _quantile_us(sorted_ns: Sequence[int], fraction: float) -> float:
    if not sorted_ns:
        return math.nan
    return sorted_ns[min(len(sorted_ns) - 1, max(0, round(fraction * len(sorted_ns)) - 1))] / 1e3


def _merge(done: Sequence[tuple[int, int, list[int]]]) -> Sample:
    lat = [x for o in done for x in o[2]]
    return Sample(len(lat), (max(o[1] for o in done) - min(o[0] for o in done)) / 1e9, lat)


def _loop(op: Op, deadline: int, think: float) -> tuple[int, int, list[int]]:
    clock = time.perf_counter_ns
    lat: list[int] = []
    start = t1 = clock()
    while t1 < deadline:
        if think:
            time.sleep(think)
        t0 = clock() if think else t1
        op()
        t1 = clock()
        lat.append(t1 - t0)
    return start, t1, lat


def run_threads(n: int, make_op: Callable[[int], Op], seconds: float, think: float = 0.0) -> Sample:
    """``make_op(i)()`` in a loop in each of ``n`` threads (the caller's when ``n`` is 1) for
    ``seconds``; with ``think``, each worker sleeps that long before each unit (not timed)."""
    ops = [make_op(i) for i in range(n)]
    if n == 1:
        return _merge([_loop(ops[0], time.perf_counter_ns() + int(seconds * 1e9), think)])
    barrier = threading.Barrier(n)
    out: list[tuple[int, int, list[int]]] = []
    errors: list[BaseException] = []

    def worker(op: Op) -> None:
        try:
            barrier.wait()
            out.append(_loop(op, time.perf_counter_ns() + int(seconds * 1e9), think))
        except BaseException as ex:
            errors.append(ex)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(op,), daemon=True) for op in ops]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    return _merge(out)


def run_tasks(
    loop: asyncio.AbstractEventLoop,
    n: int,
    make_op: Callable[[int], AOp],
    seconds: float,
    think: float = 0.0,
) -> Sample:
    """``await make_op(i)()`` in a loop in each of ``n`` tasks on ``loop``, one shared
    deadline (a unit that completes without suspending runs on in the same task)."""
    ops = [make_op(i) for i in range(n)]

    async def one(op: AOp, deadline: int) -> tuple[int, int, list[int]]:
        clock = time.perf_counter_ns
        lat: list[int] = []
        start = t1 = clock()
        while t1 < deadline:
            if think:
                await asyncio.sleep(think)
            t0 = clock() if think else t1
            await op()
            t1 = clock()
            lat.append(t1 - t0)
        return start, t1, lat

    async def main() -> list[tuple[int, int, list[int]]]:
        deadline = time.perf_counter_ns() + int(seconds * 1e9)
        return list(await asyncio.gather(*(one(op, deadline) for op in ops)))

    return _merge(loop.run_until_complete(main()))


# -- one workload, threads or tasks --------------------------------------------------------------


class Threads:
    """Run a workload with threads: sync pools, psycopg connections, sync units."""

    kind = "threads"
    worker = "thread"
    pgpoolkit_class: Any = pgpoolkit.Pool

    def __init__(self, stack: ExitStack) -> None:
        self.stack = stack

    @property
    def psycopg_pool_class(self) -> Any:
        import psycopg_pool

        return psycopg_pool.ConnectionPool

    @classmethod
    def title(cls, group: str, n: int) -> str:
        """``select1, 4 threads`` / ``select1-asyncio, 16 tasks``."""
        return f"{group}, {plural(n, cls.worker)}"

    def pool(self, cls: Any, dsn: str, **kwargs: Any) -> Any:
        """``cls(dsn, **kwargs)`` opened and full; closed with the scenario."""
        pool = cls(dsn, open=False, **kwargs)
        pool.open(wait=True, timeout=30.0)
        self.stack.callback(pool.close)
        return pool

    def pgpoolkit(self, dsn: str, *, size: int = POOL_SIZE, **kwargs: Any) -> Any:
        return self.pool(self.pgpoolkit_class, dsn, min_size=size, max_size=size, **kwargs)

    def psycopg_pool(self, dsn: str, *, size: int = POOL_SIZE, **kwargs: Any) -> Any:
        return self.pool(self.psycopg_pool_class, dsn, min_size=size, max_size=size, **kwargs)

    def connect(self, dsn: str, **kwargs: Any) -> Any:
        return self.stack.enter_context(psycopg.connect(dsn, **kwargs))

    def client(self, pool: Any) -> Any:
        """``pool.connect()``, closed with the scenario."""
        conn = pool.connect()
        self.stack.callback(conn.close)
        return conn

    def checkout(self, pool: Any, api: str) -> Op:
        """Acquire + release, no query: ``getconn/putconn`` or ``connection()``."""
        if api == "getconn/putconn":
            getconn, putconn = pool.getconn, pool.putconn
            return lambda: putconn(getconn())

        def op() -> None:
            with pool.connection():
                pass

        return op

    def block(self, pool: Any, sql: str = "SELECT 1") -> Op:
        """``with pool.connection() as conn: conn.execute(sql)``."""

        def op() -> None:
            with pool.connection() as conn:
                conn.execute(sql).fetchone()

        return op

    def query(self, conn: Any, sql: str = "SELECT 1", commit: bool = False) -> Op:
        """``conn.execute(sql)`` on a connection held open (then ``commit()``)."""
        if commit:

            def op_commit() -> None:
                conn.execute(sql).fetchone()
                conn.commit()

            return op_commit
        return lambda: conn.execute(sql).fetchone()

    def run(
        self, n: int, make_op: Callable[[int], Any], seconds: float, think: float = 0
    ) -> Sample:
        return run_threads(n, make_op, seconds, think)

    def contender(
        self, name: str, n: int, ops: Op | Sequence[Op], think: float = 0.0, **kwargs: Any
    ) -> Contender:
        """A Contender whose ``n`` workers run ``ops``: one unit for all, or one per worker;
        with ``think``, each worker sleeps that long before each unit (not timed)."""
        units = list(ops) if isinstance(ops, Sequence) else [ops] * n
        return Contender(name, lambda s: self.run(n, units.__getitem__, s, think), **kwargs)


class Tasks(Threads):
    """The same workload with asyncio tasks on one event loop (closed with the scenario)."""

    kind = "asyncio"
    worker = "task"
    pgpoolkit_class = pgpoolkit.AsyncPool

    def __init__(self, stack: ExitStack) -> None:
        super().__init__(stack)
        self.loop = asyncio.new_event_loop()
        stack.callback(self.loop.close)
        self.wait = self.loop.run_until_complete

    @property
    def psycopg_pool_class(self) -> Any:
        import psycopg_pool

        return psycopg_pool.AsyncConnectionPool

    @classmethod
    def title(cls, group: str, n: int) -> str:
        return f"{group}-asyncio, {plural(n, cls.worker)}"

    def pool(self, cls: Any, dsn: str, **kwargs: Any) -> Any:
        pool = cls(dsn, open=False, **kwargs)
        self.wait(pool.open(wait=True, timeout=30.0))
        self.stack.callback(lambda: self.wait(pool.close()))
        return pool

    def connect(self, dsn: str, **kwargs: Any) -> Any:
        conn = self.wait(psycopg.AsyncConnection.connect(dsn, **kwargs))
        self.stack.callback(lambda: self.wait(conn.close()))
        return conn

    def client(self, pool: Any) -> Any:
        conn = self.wait(pool.connect())
        self.stack.callback(lambda: self.wait(conn.close()))
        return conn

    def checkout(self, pool: Any, api: str) -> AOp:
        if api == "getconn/putconn":

            async def op_getconn() -> None:
                await pool.putconn(await pool.getconn())

            return op_getconn

        async def op() -> None:
            async with pool.connection():
                pass

        return op

    def block(self, pool: Any, sql: str = "SELECT 1") -> AOp:
        async def op() -> None:
            async with pool.connection() as conn:
                await (await conn.execute(sql)).fetchone()

        return op

    def query(self, conn: Any, sql: str = "SELECT 1", commit: bool = False) -> AOp:
        async def op() -> None:
            await (await conn.execute(sql)).fetchone()
            if commit:
                await conn.commit()

        return op

    def run(
        self, n: int, make_op: Callable[[int], Any], seconds: float, think: float = 0
    ) -> Sample:
        return run_tasks(self.loop, n, make_op, seconds, think)


Driver = Threads  # Tasks is a Threads: either one runs a workload
DRIVERS: tuple[type[Threads], ...] = (Threads, Tasks)


def scenario(
    title: str,
    ratio: RatioKind,
    seconds: float,
    build: Callable[[ExitStack], list[Contender]],
    **kwargs: Any,
) -> Scenario:
    """A Scenario whose contenders ``build(stack)`` makes; what it opens on ``stack`` is closed
    after the rounds."""

    @contextmanager
    def setup() -> Iterator[Sequence[Contender]]:
        with ExitStack() as stack:
            yield build(stack)

    return Scenario(title, setup, ratio, seconds, **kwargs)


def pinned(s: Scenario) -> Scenario:
    """``s`` with this process's threads on one CPU: the main thread is pinned while the
    scenario is set up and run, so the threads started meanwhile inherit it (Linux only)."""
    inner = s.setup

    @contextmanager
    def setup() -> Iterator[Sequence[Contender]]:
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(before)})
        try:
            with inner() as contenders:
                yield contenders
        finally:
            os.sched_setaffinity(0, before)

    return replace(s, name=f"{s.name}, pinned to 1 CPU", setup=setup)


def can_pin() -> bool:
    get = getattr(os, "sched_getaffinity", None)
    return get is not None and len(get(0)) > 1


# -- running scenarios ---------------------------------------------------------------------------


@contextmanager
def counting_server_conns(dsn: str, app: str, into: dict[str, float]) -> Iterator[None]:
    """Count the server connections named ``app`` every 10 ms meanwhile; the peak goes to
    ``into["server conns"]``."""
    stop = threading.Event()
    peak = [0]
    conn = psycopg.connect(dsn, autocommit=True, application_name="bench-sampler")
    sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"

    errors: list[BaseException] = []

    def sample() -> None:
        try:
            while True:
                row = conn.execute(sql, (app,)).fetchone()
                peak[0] = max(peak[0], int(row[0]) if row else 0)
                if stop.wait(0.01):
                    return
        except BaseException as ex:
            errors.append(ex)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield
    finally:
        stop.set()
        sampler.join()
        conn.close()
    if errors:
        raise errors[0]
    into["server conns"] = peak[0]


def _measure(c: Contender, seconds: float, dsn: str) -> Round:
    gc.collect()
    extra: dict[str, float] = {}
    cpu0 = time.process_time()
    if c.app is not None:
        with counting_server_conns(dsn, c.app, extra):
            sample = c.run(seconds)
    else:
        sample = c.run(seconds)
    cpu = time.process_time() - cpu0
    lat = sorted(sample.latencies_ns)
    return Round(
        ops_per_s=sample.ops / sample.elapsed if sample.elapsed > 0 else math.nan,
        p50_us=_quantile_us(lat, 0.50),
        p99_us=_quantile_us(lat, 0.99),
        cpu_us=cpu / sample.ops * 1e6 if sample.ops else math.nan,
        extra={**sample.extra, **extra},
    )


def run_scenario(
    s: Scenario, *, rounds: int, warmup: float, dsn: str, progress: Callable[[str], None]
) -> list[Result]:
    """A warm-up run per contender, then interleaved rounds (the order rotates)."""
    rounds = s.rounds or rounds
    with s.setup() as contenders:
        names = [c.name for c in contenders]
        if len(set(names)) != len(names):
            raise ValueError(f"{s.name}: contender names are not unique: {names}")
        # a baseline that is not there (PgBouncer not installed) gives no ratio
        results = {
            c.name: Result(
                s.name,
                c.name,
                s.ratio,
                {k: v for k, v in {**s.baselines, **c.baselines}.items() if v in names},
            )
            for c in contenders
        }
        if s.warmup and warmup > 0:
            for c in contenders:
                c.run(warmup)
        for r in range(rounds):
            progress(f"round {r + 1}/{rounds}")
            k = r % len(contenders)
            this = {c.name: _measure(c, s.seconds, dsn) for c in [*contenders[k:], *contenders[:k]]}
            for name, fig in this.items():
                res = results[name]
                res.rounds.append(fig)
                for label, base in res.baselines.items():
                    b, v = this[base].ops_per_s, fig.ops_per_s
                    ok = b > 0 and v > 0
                    value = (b / v if s.ratio == "time" else v / b) if ok else math.nan
                    res.ratios.setdefault(label, []).append(value)
    return list(results.values())


# -- reporting -----------------------------------------------------------------------------------


def print_table(s: Scenario, results: Sequence[Result], file: TextIO) -> None:
    """The scenario's table: ops/s, p50/p99 in us, CPU us per unit, extras, ratios."""
    extras = list(dict.fromkeys(k for r in results for rd in r.rounds for k in rd.extra))
    labels = list(dict.fromkeys(label for r in results for label in r.baselines))
    what = "time/" if s.ratio == "time" else "x "
    width = max(len("contender"), *(len(r.contender) for r in results))
    cols = ["ops/s", "p50 us", "p99 us", "cpu us", *extras, *(f"{what}{b}" for b in labels)]
    widths = [max(8, len(c)) for c in cols]
    better = "lower" if s.ratio == "time" else "higher"
    print(f"{s.name}", file=file)
    if s.description:
        print(f"  {s.description}", file=file)
    if labels:
        print(f"  ratios: per-round medians, {better} is better", file=file)
    print(
        "  "
        + f"{'contender':<{width}}"
        + "".join(f"  {c:>{w}}" for c, w in zip(cols, widths, strict=True)),
        file=file,
    )
    for r in results:
        cells = [fmt(r.ops_per_s, ",.0f"), fmt(r.p50_us, ".1f"), fmt(r.p99_us, ".1f")]
        cells.append(fmt(r.cpu_us, ".1f"))
        cells += [
            fmt(v, ",.0f" if k in PEAK_FIGURES or (v or 0) >= 100 else ".2f")
            for k in extras
            for v in [r.extra(k)]
        ]
        cells += ["" if label not in r.baselines else fmt(r.ratio(label)) for label in labels]
        line = "".join(f"  {c:>{w}}" for c, w in zip(cells, widths, strict=True))
        print(f"  {r.contender:<{width}}{line}", file=file)
    print(file=file)


def print_targets(targets: Sequence[Target], file: TextIO) -> None:
    width = max((len(t.name) for t in targets), default=0)
    for t in targets:
        print(f"  {t.verdict:<6}  {t.name:<{width}}  {t.measured}  (goal: {t.goal})", file=file)


def _finite(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def results_json(
    results: Sequence[Result], targets: Sequence[Target], meta: dict[str, Any]
) -> dict[str, Any]:
    return {
        "meta": meta,
        "results": [
            {
                "scenario": r.scenario,
                "contender": r.contender,
                "ops_per_s": _finite(r.ops_per_s),
                "p50_us": _finite(r.p50_us),
                "p99_us": _finite(r.p99_us),
                "cpu_us": _finite(r.cpu_us),
                "extra": {
                    k: r.extra(k) for k in dict.fromkeys(x for d in r.rounds for x in d.extra)
                },
                "ratio_kind": r.ratio_kind,
                "ratios": {label: _finite(r.ratio(label)) for label in r.baselines},
                "baselines": r.baselines,
                "rounds": [vars(d) for d in r.rounds],
            }
            for r in results
        ],
        "targets": [vars(t) for t in targets],
    }


def draw_chart(path: str, results: Sequence[Result], targets: Sequence[Target]) -> str | None:
    """A PNG: per scenario, each contender's first ratio (or ops/s); then the targets in green
    (met) or red (missed). Returns why it could not, or None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no chart: matplotlib is not installed (pip install 'pgpoolkit[chart]')"
    groups: dict[str, list[Result]] = {}
    for r in results:
        groups.setdefault(r.scenario, []).append(r)
    n = len(groups) + (1 if targets else 0)
    cols = 3
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.2 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax, (name, group) in zip(flat, groups.items(), strict=False):
        ratios = [r.ratio() for r in group]
        use_ratio = any(v is not None for v in ratios)
        values = [
            (v or 0.0) if use_ratio else r.ops_per_s for v, r in zip(ratios, group, strict=True)
        ]
        ax.barh([r.contender[:40] for r in group], values, color="#4c72b0")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(
            ("time ratio" if group[0].ratio_kind == "time" else "throughput ratio")
            if use_ratio
            else "ops/s",
            fontsize=8,
        )
        ax.tick_params(labelsize=7)
    if targets:
        ax = flat[len(groups)]
        colors = {True: "#55a868", False: "#c44e52", None: "#999999"}
        ax.barh(
            [t.name[:48] for t in targets],
            [1] * len(targets),
            color=[colors[t.met] for t in targets],
        )
        ax.set_title("targets: green met, red MISSED, grey n/a", fontsize=9)
        ax.tick_params(labelsize=6)
        ax.set_xticks([])
    for ax in flat[n:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return None


# -- the server, PgBouncer, the versions ---------------------------------------------------------


def server_dsn(stack: ExitStack, dsn: str | None, log: Callable[[str], None]) -> str:
    """``dsn``, else ``$PGPOOLKIT_DSN``, else a throwaway local PostgreSQL's (removed when
    ``stack`` closes); SetupError when none can be had or reached."""
    dsn = dsn or os.environ.get(DSN_ENV) or None
    if dsn is None:
        log("starting a throwaway PostgreSQL (pass --dsn to use yours)...")
        pg = TemporaryPostgres()
        try:
            pg.start()
        except (RuntimeError, OSError) as ex:
            pg.cleanup()
            raise SetupError(f"can't start a throwaway PostgreSQL: {one_line(ex)}") from None
        stack.callback(pg.cleanup)
        dsn = pg.dsn
    try:
        with psycopg.connect(dsn, connect_timeout=5):
            pass
    except psycopg.Error as ex:
        raise SetupError(f"can't connect: {one_line(ex)}") from None
    return dsn


def versions(pgbouncer: str | None) -> dict[str, Any]:
    try:
        import psycopg_pool

        pool_version: str | None = psycopg_pool.__version__
    except ImportError:
        pool_version = None
    bouncer = None
    if pgbouncer:
        out = subprocess.run([pgbouncer, "--version"], capture_output=True, text=True, check=False)
        bouncer = next(iter(out.stdout.strip().splitlines()), None)
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "psycopg": psycopg.__version__,
        "libpq": psycopg.pq.version(),
        "psycopg_impl": psycopg.pq.__impl__,
        "psycopg_pool": pool_version,
        "pgpoolkit": pgpoolkit.__version__,
        "pgbouncer": bouncer,
    }


def find_pgbouncer(option: str | None) -> tuple[str | None, str | None]:
    """The pgbouncer program (``option``: a path, ``off``, ``install``: apt-get install it when
    missing, as root), or None and why."""
    if option == "off":
        return None, "pgbouncer: left out (--pgbouncer off)"
    if option not in (None, "install"):
        found = shutil.which(option)
        return (found, None) if found else (None, f"pgbouncer: {option} not found")
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/bin")
    if found is None and option == "install" and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "pgbouncer"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
        )
        found = shutil.which("pgbouncer", path="/usr/sbin:/usr/bin")
    if found is None:
        return (
            None,
            "pgbouncer: not installed (apt-get install -y pgbouncer, or --pgbouncer install)",
        )
    return found, None


#: PgBouncer before 1.21 can't do prepared statements in transaction mode
NO_PREPARE: dict[str, Any] = {"prepare_threshold": None}


def start_pgbouncer(
    stack: ExitStack, ctx: Context, clients: int, size: int = POOL_SIZE
) -> str | None:
    """A PgBouncer in transaction mode with ``size`` server connections in front of
    ``ctx.dsn`` (stopped when ``stack`` closes): its DSN, or None (why goes to the notes)."""
    if ctx.pgbouncer is None:
        return None
    server = conninfo_to_dict(ctx.dsn)
    user = str(server.get("user") or pwd.getpwuid(os.getuid()).pw_name)
    target = {
        k: v for k, v in server.items() if k in ("host", "port", "dbname", "user", "password")
    }
    target.setdefault("dbname", user)
    directory = tempfile.mkdtemp(prefix="pgpoolkit-bench-pgbouncer-")
    stack.callback(shutil.rmtree, directory, True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def quote(v: object) -> str:
        text = str(v)
        return (
            text
            if text and not any(c in text for c in " '\\=")
            else "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
        )

    ini = os.path.join(directory, "pgbouncer.ini")
    with open(ini, "w", encoding="utf-8") as f:
        f.write(
            f"[databases]\nbench = {' '.join(f'{k}={quote(v)}' for k, v in target.items())}\n"
            f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {directory}/userlist.txt\npool_mode = transaction\n"
            f"default_pool_size = {size}\nmin_pool_size = {size}\nreserve_pool_size = 0\n"
            f"max_client_conn = {clients + 100}\nmax_db_connections = {size}\n"
            f"logfile = {directory}/pgbouncer.log\npidfile = {directory}/pgbouncer.pid\n"
        )
    with open(os.path.join(directory, "userlist.txt"), "w", encoding="utf-8") as f:
        f.write(f'"{user}" ""\n')
    argv = [ctx.pgbouncer, "-q", ini]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            account = pwd.getpwnam("nobody")
        for name in [directory, *(os.path.join(directory, n) for n in os.listdir(directory))]:
            os.chown(name, account.pw_uid, account.pw_gid)
        argv[1:1] = ["-u", account.pw_name]
    with open(os.path.join(directory, "stderr.log"), "wb") as err:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
        )

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(5.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    stack.callback(stop)
    dsn = make_conninfo(host="127.0.0.1", port=port, dbname="bench", user=user)
    deadline = time.monotonic() + 10.0
    while True:
        try:
            with psycopg.connect(dsn, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return dsn
        except psycopg.Error as ex:
            if proc.poll() is not None or time.monotonic() > deadline:
                logs = ""
                for name in ("stderr.log", "pgbouncer.log"):
                    with contextlib.suppress(OSError), open(os.path.join(directory, name)) as f:
                        logs += f.read()
                tail = " | ".join(logs.strip().splitlines()[-2:])
                ctx.note(f"pgbouncer: did not start: {one_line(ex)} {tail}".strip())
                return None
            time.sleep(0.05)


def dump_json(doc: dict[str, Any], path: str, file: TextIO) -> None:
    text = json.dumps(doc, indent=2)
    if path == "-":
        print(text, file=file)
    else:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text + "\n")
