"""A small harness to run benchmark contenders side by side in one process.

A :class:`Scenario` opens its resources once (pools, connections, an event loop) and hands out
its :class:`Contender` s. Every contender runs the same number of rounds of the same length;
the rounds are interleaved (round 1 of every contender, then round 2, ..., in an order that
rotates from round to round), so that a drift of the machine (CPU frequency, another process,
the server's caches) hits every contender alike. The figures reported are medians over the
rounds; the ratio against the baseline is the median of the per-round ratios (each round's
contenders ran next to each other in time).

Standard library only, so that any benchmark script can use it.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TextIO

__all__ = [
    "Contender",
    "Result",
    "RoundFigures",
    "Sample",
    "Scenario",
    "can_pin",
    "pinned",
    "print_table",
    "results_json",
    "run_scenarios",
    "run_tasks",
    "run_threads",
]

#: "time": baseline throughput / throughput (time per op relative to the baseline, lower is
#: better); "throughput": throughput / baseline throughput (higher is better)
RatioKind = Literal["time", "throughput"]


@dataclass
class Sample:
    """What one run of a contender measured."""

    ops: int
    elapsed: float  # seconds, wall clock, from the start of the first worker to the last's end
    latencies_ns: list[int]


@dataclass
class Contender:
    """A competitor in a scenario.

    ``run(seconds)`` runs the unit of work repeatedly for about ``seconds`` and returns the
    :class:`Sample`. ``baseline`` names the contender it is compared with (default: the
    scenario's baseline).
    """

    name: str
    run: Callable[[float], Sample]
    baseline: str | None = None


@dataclass
class Scenario:
    """A set of contenders measured against each other.

    ``setup()`` is a context manager yielding the contenders: resources are opened once for all
    the rounds and closed at the end.
    """

    name: str
    setup: Callable[[], AbstractContextManager[Sequence[Contender]]]
    ratio: RatioKind
    baseline: str | None = None
    description: str = ""


@dataclass
class RoundFigures:
    ops: int
    elapsed: float
    ops_per_s: float
    p50_us: float
    p99_us: float
    max_us: float = 0.0


@dataclass
class Result:
    """A contender's figures in a scenario: medians over the rounds."""

    scenario: str
    contender: str
    ratio_kind: RatioKind
    baseline: str | None
    rounds: list[RoundFigures] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)

    @property
    def ops_per_s(self) -> float:
        return statistics.median(r.ops_per_s for r in self.rounds)

    @property
    def p50_us(self) -> float:
        return statistics.median(r.p50_us for r in self.rounds)

    @property
    def p99_us(self) -> float:
        return statistics.median(r.p99_us for r in self.rounds)

    @property
    def max_us(self) -> float:
        return statistics.median(r.max_us for r in self.rounds)

    @property
    def ratio(self) -> float | None:
        return statistics.median(self.ratios) if self.ratios else None


# -- measuring ---------------------------------------------------------------------------------


def _quantile_us(sorted_ns: Sequence[int], fraction: float) -> float:
    if not sorted_ns:
        return 0.0
    index = min(len(sorted_ns) - 1, max(0, round(fraction * len(sorted_ns)) - 1))
    return sorted_ns[index] / 1000.0


def figures(sample: Sample) -> RoundFigures:
    lat = sorted(sample.latencies_ns)
    return RoundFigures(
        ops=sample.ops,
        elapsed=sample.elapsed,
        ops_per_s=sample.ops / sample.elapsed if sample.elapsed > 0 else 0.0,
        p50_us=_quantile_us(lat, 0.50),
        p99_us=_quantile_us(lat, 0.99),
        max_us=lat[-1] / 1000.0 if lat else 0.0,
    )


def _timed_loop(op: Callable[[], object], duration_ns: int) -> tuple[int, int, list[int]]:
    """Run ``op`` until ``duration_ns`` have passed; (start, end, latencies) in ns."""
    clock = time.perf_counter_ns
    lat: list[int] = []
    append = lat.append
    start = t0 = clock()
    deadline = start + duration_ns
    while t0 < deadline:
        op()
        t1 = clock()
        append(t1 - t0)
        t0 = t1
    return start, t0, lat


def run_threads(
    nthreads: int, make_op: Callable[[int], Callable[[], object]], seconds: float
) -> Sample:
    """Run ``make_op(i)()`` in a loop in each of ``nthreads`` threads for ``seconds``.

    With one thread the loop runs in the calling thread. The ops are made before the clock
    starts; the threads start together (a barrier).
    """
    duration_ns = int(seconds * 1e9)
    ops = [make_op(i) for i in range(nthreads)]
    if nthreads == 1:
        start, end, lat = _timed_loop(ops[0], duration_ns)
        return Sample(len(lat), (end - start) / 1e9, lat)

    barrier = threading.Barrier(nthreads)
    outcomes: list[tuple[int, int, list[int]] | None] = [None] * nthreads
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            barrier.wait()
            outcomes[i] = _timed_loop(ops[i], duration_ns)
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
    done = [o for o in outcomes if o is not None]
    start = min(o[0] for o in done)
    end = max(o[1] for o in done)
    lat = [x for o in done for x in o[2]]
    return Sample(len(lat), (end - start) / 1e9, lat)


def run_tasks(
    loop: asyncio.AbstractEventLoop,
    ntasks: int,
    make_op: Callable[[int], Callable[[], Coroutine[Any, Any, object]]],
    seconds: float,
) -> Sample:
    """Run ``await make_op(i)()`` in a loop in each of ``ntasks`` tasks on ``loop``.

    The tasks share one deadline. A task only lets the others run when an op really suspends:
    ops that complete without suspending (an idle connection at hand) run back to back in
    one task, and the tasks after it may find the deadline passed.
    """
    duration_ns = int(seconds * 1e9)
    ops = [make_op(i) for i in range(ntasks)]

    async def one(
        op: Callable[[], Coroutine[Any, Any, object]], deadline: int
    ) -> tuple[int, int, list[int]]:
        clock = time.perf_counter_ns
        lat: list[int] = []
        append = lat.append
        start = t0 = clock()
        while t0 < deadline:
            await op()
            t1 = clock()
            append(t1 - t0)
            t0 = t1
        return start, t0, lat

    async def main() -> list[tuple[int, int, list[int]]]:
        # one deadline for all: a task that starts late (the others did not suspend) stops
        # with them
        deadline = time.perf_counter_ns() + duration_ns
        return list(await asyncio.gather(*(one(op, deadline) for op in ops)))

    done = loop.run_until_complete(main())
    start = min(o[0] for o in done)
    end = max(o[1] for o in done)
    lat = [x for o in done for x in o[2]]
    return Sample(len(lat), (end - start) / 1e9, lat)


# -- running scenarios -------------------------------------------------------------------------


def _ratio(kind: RatioKind, value: float, base: float) -> float:
    if value <= 0 or base <= 0:
        return float("nan")
    return base / value if kind == "time" else value / base


def run_scenarios(
    scenarios: Sequence[Scenario],
    *,
    rounds: int,
    seconds: float,
    warmup: float,
    log: TextIO | None = sys.stderr,
    first: int = 1,
    total: int | None = None,
) -> list[Result]:
    """Run every scenario: a warm-up run per contender, then interleaved rounds.

    Progress goes to ``log``, a line per scenario, numbered from ``first`` out of ``total``
    (default: these scenarios), for a caller that runs scenarios in several calls.
    """
    results: list[Result] = []
    total = len(scenarios) if total is None else total
    digits = len(str(total))
    for n, scenario in enumerate(scenarios, first):
        t0 = time.perf_counter()
        if log is not None:
            print(f"[{n:>{digits}}/{total}] {scenario.name} ...", file=log, end="", flush=True)
        with scenario.setup() as contenders:
            names = [c.name for c in contenders]
            if len(set(names)) != len(names):
                raise ValueError(f"{scenario.name}: contender names are not unique: {names}")
            by_name = {c.name: c for c in contenders}
            scenario_results = {
                c.name: Result(
                    scenario.name, c.name, scenario.ratio, c.baseline or scenario.baseline
                )
                for c in contenders
            }
            for res in scenario_results.values():
                if res.baseline is not None and res.baseline not in by_name:
                    raise ValueError(f"{scenario.name}: unknown baseline {res.baseline!r}")
            if warmup > 0:
                for c in contenders:
                    c.run(warmup)
            for r in range(rounds):
                k = r % len(contenders)
                order = [*contenders[k:], *contenders[:k]]
                this_round: dict[str, RoundFigures] = {}
                for c in order:
                    gc.collect()
                    this_round[c.name] = figures(c.run(seconds))
                for name, fig in this_round.items():
                    res = scenario_results[name]
                    res.rounds.append(fig)
                    if res.baseline is not None:
                        base = this_round[res.baseline].ops_per_s
                        res.ratios.append(_ratio(scenario.ratio, fig.ops_per_s, base))
            results.extend(scenario_results.values())
        if log is not None:
            print(
                f" {plural(len(names), 'contender')}, {time.perf_counter() - t0:.1f} s",
                file=log,
                flush=True,
            )
    return results


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def pinned(scenario: Scenario, cpu: int | None = None) -> Scenario:
    """``scenario`` run with this process's threads on one CPU (``cpu``, default: the first
    this process may use): the calling thread is pinned while the scenario's resources are
    set up and its rounds run, so the threads it starts meanwhile (a pool's workers, the
    benchmark's threads) inherit the pin; it is undone at the end. Threads started before
    keep their CPUs. Linux only (``os.sched_setaffinity``)."""
    inner = scenario.setup

    @contextmanager
    def setup() -> Iterator[Sequence[Contender]]:
        before = os.sched_getaffinity(0)
        target = min(before) if cpu is None else cpu
        os.sched_setaffinity(0, {target})
        try:
            with inner() as contenders:
                yield contenders
        finally:
            os.sched_setaffinity(0, before)

    return replace(
        scenario,
        name=f"{scenario.name}, pinned to 1 CPU",
        setup=setup,
        description=(f"{scenario.description}; " if scenario.description else "")
        + "the benchmark's threads pinned to one CPU",
    )


def can_pin() -> bool:
    """Whether :func:`pinned` works here (Linux, more than one CPU allowed)."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    return getaffinity is not None and len(getaffinity(0)) > 1


# -- reporting ---------------------------------------------------------------------------------


def _groups(results: Sequence[Result]) -> Iterator[tuple[str, list[Result]]]:
    seen: dict[str, list[Result]] = {}
    for r in results:
        seen.setdefault(r.scenario, []).append(r)
    yield from seen.items()


def print_table(
    results: Sequence[Result],
    scenarios: Sequence[Scenario] = (),
    file: TextIO = sys.stdout,
) -> None:
    """A table per scenario: ops/s, p50/p99 latency in microseconds, ratio to the baseline."""
    descriptions = {s.name: s.description for s in scenarios}
    width = max([len("contender"), *(len(r.contender) for r in results)])
    for name, group in _groups(results):
        kind = group[0].ratio_kind
        what = "time per op" if kind == "time" else "throughput"
        better = "lower is better" if kind == "time" else "higher is better"
        print(f"{name}", file=file)
        if descriptions.get(name):
            print(f"  {descriptions[name]}", file=file)
        header = f"  {'contender':<{width}}  {'ops/s':>10}  {'p50 us':>8}  {'p99 us':>8}"
        header += f"  ratio ({what} vs baseline, {better})"
        print(header, file=file)
        for r in group:
            ratio = r.ratio
            if ratio is None:
                ratio_text = ""
            elif r.baseline == r.contender:
                ratio_text = "1.00  (baseline)"
            else:
                ratio_text = f"{ratio:.2f}  vs {r.baseline}"
            print(
                f"  {r.contender:<{width}}  {r.ops_per_s:>10,.0f}  {r.p50_us:>8.1f}  "
                f"{r.p99_us:>8.1f}  {ratio_text}",
                file=file,
            )
        print(file=file)


def _finite(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def results_json(results: Sequence[Result], meta: dict[str, Any]) -> str:
    """The results (medians, and every round's figures) as a JSON document."""
    doc = {
        "meta": meta,
        "results": [
            {
                "scenario": r.scenario,
                "contender": r.contender,
                "ops_per_s": r.ops_per_s,
                "p50_us": r.p50_us,
                "p99_us": r.p99_us,
                "ratio": _finite(r.ratio),
                "ratio_kind": r.ratio_kind,
                "baseline": r.baseline,
                "rounds": [vars(f) for f in r.rounds],
            }
            for r in results
        ],
    }
    return json.dumps(doc, indent=2)
