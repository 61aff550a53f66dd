"""The whole benchmark suite in one run, with the issue's targets: ``python -m pgpoolkit bench``.

    python benchmarks/suite.py [--dsn DSN] [--quick | --full] [--json PATH] [--chart PATH]
                               [--pgbouncer PATH|off] [--only TEXT]

Runs, against ``--dsn`` or a throwaway local PostgreSQL it starts and removes:

- checkout-only (bench_checkout.py): acquire + release, pgpoolkit vs psycopg_pool, threads and
  asyncio, unpinned and with the benchmark's threads pinned to one CPU;
- select1 (bench_checkout.py): a ``SELECT 1`` per checkout vs raw persistent connections;
- per-statement modes (bench_modes.py): transaction and statement pooling vs session pooling;
- txn (bench_txn.py): a pgbench-like transaction, pools vs PgBouncer vs raw psycopg;
- many-clients (bench_modes.py): hundreds of clients over 10 server connections;
- spike (bench_spike.py): 50 requests at once on an empty pool with slow connects;
- connect-per-request (bench_connect.py): a new connection per unit vs a pooled one;
- memory (bench_memory.py): bytes per open idle transaction-mode client;

then prints the tables and the issue's targets with what this run measured (met / MISSED).
``--quick`` (the default) takes about a minute on a 2-CPU machine, ``--full`` about 4. Progress
goes to stderr, the tables to stdout; ``--json PATH`` also writes every figure as JSON (``-``:
to stdout, instead of the tables) and ``--chart PATH`` a PNG chart (needs matplotlib).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, TextIO

import bench_checkout
import bench_connect
import bench_memory
import bench_modes
import bench_spike
import bench_txn
import psycopg
from _common import (
    Extras,
    SetupError,
    Target,
    connect_check,
    one_line,
    plural,
    server_dsn,
    versions,
)
from _pgbouncer import find_pgbouncer, pgbouncer_version
from harness import Result, Scenario, can_pin, pinned, print_table, results_json, run_scenarios

__all__ = ["PRESETS", "Preset", "SetupError", "build_parser", "main", "run_suite"]


@dataclass(frozen=True)
class Preset:
    """How long and how wide the suite runs."""

    name: str
    rounds: int
    warmup: float
    checkout_seconds: float
    checkout_workers: tuple[int, ...]
    pin: str  # "all": pinned variants of every checkout scenario; "max": of the widest only
    select1_seconds: float
    select1_threads: tuple[int, ...]
    select1_tasks: tuple[int, ...]
    modes_seconds: float
    modes_threads: tuple[int, ...]
    modes_tasks: tuple[int, ...]
    txn_seconds: float
    txn_threads: tuple[int, ...]
    many_seconds: float
    many_threads: tuple[int, ...]
    many_tasks: tuple[int, ...]
    spike_rounds: int
    spike_warmup: bool
    spike_min_sizes: tuple[int, ...]
    spike: bench_spike.Spike
    connect_seconds: float
    connect_threads: tuple[int, ...]
    memory_rounds: int
    memory_clients: int
    memory_rss: bool


PRESETS: dict[str, Preset] = {
    "quick": Preset(
        name="quick",
        rounds=3,
        warmup=0.05,
        checkout_seconds=0.1,
        checkout_workers=(4,),
        pin="max",
        select1_seconds=0.15,
        select1_threads=(4,),
        select1_tasks=(16,),
        modes_seconds=0.1,
        modes_threads=(4,),
        modes_tasks=(16,),
        txn_seconds=0.25,
        txn_threads=(16,),
        many_seconds=0.3,
        many_threads=(200,),
        many_tasks=(1000,),
        spike_rounds=2,
        spike_warmup=False,
        spike_min_sizes=(1,),
        spike=bench_spike.Spike(),
        connect_seconds=0.2,
        connect_threads=(1, 4),
        memory_rounds=1,
        memory_clients=10_000,
        memory_rss=True,
    ),
    "full": Preset(
        name="full",
        rounds=5,
        warmup=0.1,
        checkout_seconds=0.3,
        checkout_workers=(1, 4),
        pin="all",
        select1_seconds=0.3,
        select1_threads=(1, 4, 16),
        select1_tasks=(1, 4, 16),
        modes_seconds=0.25,
        modes_threads=(1, 4),
        modes_tasks=(1, 16),
        txn_seconds=0.5,
        txn_threads=(16, 64),
        many_seconds=0.5,
        many_threads=(200,),
        many_tasks=(1000,),
        spike_rounds=5,
        spike_warmup=True,
        spike_min_sizes=(0, 1),
        spike=bench_spike.Spike(),
        connect_seconds=0.3,
        connect_threads=(1, 4),
        memory_rounds=3,
        memory_clients=10_000,
        memory_rss=True,
    ),
    # CI: every scenario and contender once, briefly, to keep the code working
    "smoke": Preset(
        name="smoke",
        rounds=1,
        warmup=0.0,
        checkout_seconds=0.03,
        checkout_workers=(2,),
        pin="max",
        select1_seconds=0.03,
        select1_threads=(2,),
        select1_tasks=(3,),
        modes_seconds=0.03,
        modes_threads=(2,),
        modes_tasks=(3,),
        txn_seconds=0.05,
        txn_threads=(3,),
        many_seconds=0.1,
        many_threads=(12,),
        many_tasks=(30,),
        spike_rounds=1,
        spike_warmup=False,
        spike_min_sizes=(1,),
        spike=bench_spike.Spike(requests=10, work=0.005, connect_delay=0.03, max_size=10),
        connect_seconds=0.05,
        connect_threads=(1,),
        memory_rounds=1,
        memory_clients=500,
        memory_rss=False,
    ),
}

#: the groups of scenarios, in the order they run and print
GROUPS = (
    "checkout-only",
    "select1",
    "per-statement",
    "txn",
    "many-clients",
    "spike",
    "connect-per-request",
    "memory",
)


@dataclass
class Part:
    """A group of scenarios run with the same settings and printed by the same function."""

    group: str
    scenarios: list[Scenario]
    rounds: int
    seconds: float
    warmup: float
    print_tables: Callable[[Sequence[Result], Sequence[Scenario], TextIO], None]
    targets: Callable[[Sequence[Result]], list[Target]] = lambda results: []
    annotate: Callable[[list[dict[str, Any]], Sequence[Result]], None] = lambda e, r: None
    before: Callable[[], object] | None = None
    chart: Callable[[Sequence[Result]], tuple[str, list[float]]] | None = None
    results: list[Result] = field(default_factory=list)


def _print_plain(results: Sequence[Result], scenarios: Sequence[Scenario], file: TextIO) -> None:
    print_table(results, scenarios, file=file)


def _parts(
    dsn: str,
    preset: Preset,
    stack: ExitStack,
    pgbouncer: str | None,
    notes: list[str],
    log: Callable[[str], None],
) -> list[Part]:
    p = preset
    parts: list[Part] = []

    # checkout-only: unpinned, and pinned to one CPU (the widest worker count, or all)
    checkout = [bench_checkout.checkout_threads(dsn, n) for n in p.checkout_workers]
    checkout += [bench_checkout.checkout_tasks(dsn, n) for n in p.checkout_workers]
    if can_pin():
        widths = p.checkout_workers if p.pin == "all" else p.checkout_workers[-1:]
        checkout += [pinned(bench_checkout.checkout_threads(dsn, n)) for n in widths]
        checkout += [pinned(bench_checkout.checkout_tasks(dsn, n)) for n in widths]
    else:
        notes.append("checkout-only: not pinned (needs os.sched_setaffinity and 2+ CPUs)")
    parts.append(
        Part(
            "checkout-only",
            checkout,
            p.rounds,
            p.checkout_seconds,
            p.warmup,
            _print_plain,
            bench_checkout.targets,
        )
    )

    select1 = [bench_checkout.select1_threads(dsn, n) for n in p.select1_threads]
    select1 += [bench_checkout.select1_tasks(dsn, n) for n in p.select1_tasks]
    parts.append(
        Part(
            "select1",
            select1,
            p.rounds,
            p.select1_seconds,
            p.warmup,
            _print_plain,
            bench_checkout.targets,
        )
    )

    modes_extras = Extras(dsn, warmup=p.warmup > 0)
    per_statement = [
        bench_modes.per_statement_threads(dsn, n, modes_extras) for n in p.modes_threads
    ]
    per_statement += [bench_modes.per_statement_tasks(dsn, n, modes_extras) for n in p.modes_tasks]

    def modes_print(results: Sequence[Result], scenarios: Sequence[Scenario], file: TextIO) -> None:
        bench_modes.print_tables(results, scenarios, modes_extras, file)

    def modes_targets(results: Sequence[Result]) -> list[Target]:
        return bench_modes.targets(results, modes_extras, notes)

    def modes_annotate(entries: list[dict[str, Any]], results: Sequence[Result]) -> None:
        figs = bench_modes.figures_of(results, modes_extras)
        for entry, r in zip(entries, results, strict=True):
            fig = figs[(r.scenario, r.contender)]
            entry["time_ratio_vs_raw"] = fig.time_vs_raw
            entry["cpu_us_per_op"] = fig.cpu_us
            entry["cpu_ratio"] = fig.cpu_vs_base
            entry["peak_server_connections"] = fig.peak

    parts.append(
        Part(
            "per-statement",
            per_statement,
            p.rounds,
            p.modes_seconds,
            p.warmup,
            modes_print,
            modes_targets,
            modes_annotate,
        )
    )

    txn_extras = Extras(dsn, warmup=p.warmup > 0)
    txn_setup = bench_txn.TxnSetup(
        stack, dsn, txn_extras, bench_txn.find_pgbench(None), pgbouncer, notes, log
    )

    def txn_print(results: Sequence[Result], scenarios: Sequence[Scenario], file: TextIO) -> None:
        bench_txn.print_tables(results, scenarios, txn_extras, file)

    def txn_annotate(entries: list[dict[str, Any]], results: Sequence[Result]) -> None:
        for entry, r in zip(entries, results, strict=True):
            bench_txn.annotate(entry, r, txn_extras)

    parts.append(
        Part(
            "txn",
            bench_txn.scenarios_for(p.txn_threads, txn_setup),
            p.rounds,
            p.txn_seconds,
            p.warmup,
            txn_print,
            annotate=txn_annotate,
            before=lambda: txn_setup.table,
        )
    )

    many_opts = bench_modes.ManyOptions(0.001, pgbouncer, notes, modes_extras)
    many = [bench_modes.many_clients_threads(dsn, n, many_opts) for n in p.many_threads]
    many += [bench_modes.many_clients_tasks(dsn, n, many_opts) for n in p.many_tasks]
    parts.append(
        Part(
            "many-clients",
            many,
            p.rounds,
            p.many_seconds,
            p.warmup,
            modes_print,
            modes_targets,
            modes_annotate,
        )
    )

    spike_extras = bench_spike.SpikeExtras(warmup=p.spike_warmup)

    def spike_print(results: Sequence[Result], scenarios: Sequence[Scenario], file: TextIO) -> None:
        bench_spike.print_tables(results, scenarios, spike_extras, file)

    def spike_annotate(entries: list[dict[str, Any]], results: Sequence[Result]) -> None:
        for entry, r in zip(entries, results, strict=True):
            bench_spike.annotate(entry, r, spike_extras)

    parts.append(
        Part(
            "spike",
            bench_spike.scenarios_for(dsn, p.spike_min_sizes, spike_extras, p.spike),
            p.spike_rounds,
            1.0,
            1.0 if p.spike_warmup else 0.0,
            spike_print,
            lambda results: bench_spike.targets(results, spike_extras),
            spike_annotate,
            chart=lambda results: (
                "server connections opened (median of the rounds)",
                [
                    float(f.opened if f is not None else 0)
                    for f in (bench_spike.figures_of(r, spike_extras) for r in results)
                ],
            ),
        )
    )

    parts.append(
        Part(
            "connect-per-request",
            bench_connect.scenarios_for(dsn, p.connect_threads),
            p.rounds,
            p.connect_seconds,
            p.warmup,
            _print_plain,
            bench_connect.targets,
        )
    )

    memory_extras = bench_memory.MemoryExtras(warmup=False, notes=notes)

    def memory_print(
        results: Sequence[Result], scenarios: Sequence[Scenario], file: TextIO
    ) -> None:
        bench_memory.print_tables(results, scenarios, memory_extras, file)

    def memory_annotate(entries: list[dict[str, Any]], results: Sequence[Result]) -> None:
        for entry, r in zip(entries, results, strict=True):
            bench_memory.annotate(entry, r, memory_extras)

    parts.append(
        Part(
            "memory",
            bench_memory.scenarios_for(dsn, p.memory_clients, memory_extras, p.memory_rss),
            p.memory_rounds,
            1.0,
            0.0,
            memory_print,
            lambda results: bench_memory.targets(results, memory_extras),
            memory_annotate,
            chart=lambda results: (
                "bytes per open idle client (tracemalloc)",
                [bench_memory.traced_per_client(r, memory_extras) or 0.0 for r in results],
            ),
        )
    )
    return parts


# -- the targets -------------------------------------------------------------------------------

#: the issue's targets, in its order, for the summary (a target's name starts with its scenario)
TARGET_ORDER = (
    "checkout",
    "select1",
    "per-statement",
    "many-clients",
    "spike",
    "connect-per-request",
    "memory",
)


def _ordered(targets: Sequence[Target]) -> list[Target]:
    def key(t: Target) -> int:
        for i, prefix in enumerate(TARGET_ORDER):
            if t.name.startswith(prefix):
                return i
        return len(TARGET_ORDER)

    return sorted(targets, key=key)


def print_summary(targets: Sequence[Target], file: TextIO) -> None:
    print("targets (issue 4), as measured in this run:", file=file)
    if not targets:
        print("  (no target measured: no scenario ran)", file=file)
        return
    width = max(len(t.name) for t in targets)
    for t in targets:
        print(f"  {t.verdict:<6}  {t.name:<{width}}  {t.measured}", file=file)
        print(f"  {'':<6}  {'':<{width}}  goal: {t.goal}", file=file)
    met = sum(t.met is True for t in targets)
    missed = sum(t.met is False for t in targets)
    unknown = sum(t.met is None for t in targets)
    line = f"  {met} met, {missed} MISSED"
    if unknown:
        line += f", {unknown} not measured"
    print(line, file=file)


# -- the chart ---------------------------------------------------------------------------------


NO_MATPLOTLIB = "no chart: matplotlib is not installed (pip install matplotlib)"

#: a panel's metric: its label and a value per result of one scenario
Metric = Callable[[Sequence[Result]], tuple[str, list[float]]]


def _ops_metric(results: Sequence[Result]) -> tuple[str, list[float]]:
    return "ops/s", [r.ops_per_s for r in results]


def _panels(parts: Sequence[Part]) -> list[tuple[str, list[Result], str, list[float], str]]:
    """(scenario, results, metric label, values, ratio note) per scenario that ran."""
    panels = []
    for part in parts:
        metric = part.chart or _ops_metric
        for name in dict.fromkeys(r.scenario for r in part.results):
            group = [r for r in part.results if r.scenario == name]
            label, values = metric(group)
            kind = group[0].ratio_kind
            note = (
                ""
                if part.chart
                else (
                    "labels: time vs baseline, lower is better"
                    if kind == "time"
                    else "labels: throughput vs baseline, higher is better"
                )
            )
            panels.append((name, group, label, values, note))
    return panels


def write_chart(path: str, parts: Sequence[Part], targets: Sequence[Target]) -> str | None:
    """A PNG: a bar chart per scenario (ops/s, or the scenario's own figure), and the targets
    (green: met, red: missed). None when written, else why not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        return NO_MATPLOTLIB
    panels = _panels(parts)
    cols = 3
    rows = max(1, -(-len(panels) // cols))
    target_height = 0.6 + 0.22 * len(targets) if targets else 0.0
    fig = plt.figure(figsize=(7.0 * cols, 3.3 * rows + target_height))
    grid = fig.add_gridspec(
        rows + (1 if targets else 0),
        cols,
        height_ratios=[3.3] * rows + ([target_height] if targets else []),
    )
    compact = FuncFormatter(
        lambda x, _pos: f"{x / 1e6:g}M" if x >= 1e6 else f"{x / 1e3:g}k" if x >= 1e3 else f"{x:g}"
    )
    for k, (name, group, label, values, note) in enumerate(panels):
        ax = fig.add_subplot(grid[k // cols, k % cols])
        labels = [r.contender for r in group]
        colors = ["tab:blue" if "pgpoolkit" in text else "tab:gray" for text in labels]
        bars = ax.barh(range(len(group)), values, color=colors)
        ax.set_yticks(range(len(group)), labels=labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(name + (f"\n({note})" if note else ""), fontsize=8)
        ax.set_xlabel(label, fontsize=7)
        ax.xaxis.set_major_formatter(compact)
        ax.tick_params(axis="x", labelsize=7)
        for bar, r, value in zip(bars, group, values, strict=True):
            text = (
                f" {value:,.0f}"
                if note == ""
                else (f" {r.ratio:.2f}" if r.ratio is not None and r.ratio == r.ratio else "")
            )
            ax.annotate(
                text,
                (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                va="center",
                fontsize=6,
            )
    if targets:
        ax = fig.add_subplot(grid[rows, :])
        ax.axis("off")
        ax.set_title("targets (issue 4)", fontsize=9, loc="left")
        step = 1.0 / (len(targets) + 1)
        for i, t in enumerate(targets):
            color = {"met": "tab:green", "MISSED": "tab:red"}.get(t.verdict, "tab:gray")
            ax.text(
                0.0,
                1.0 - (i + 1) * step,
                f"{t.verdict:<6}  {t.name}: {t.measured}   (goal: {t.goal})",
                color=color,
                fontsize=7,
                family="monospace",
                transform=ax.transAxes,
                va="center",
            )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# -- running -----------------------------------------------------------------------------------


def run_suite(
    *,
    dsn: str | None = None,
    preset: str = "quick",
    json_path: str | None = None,
    chart_path: str | None = None,
    pgbouncer: str | None = None,
    only: str | None = None,
    out: TextIO = sys.stdout,
    log: TextIO = sys.stderr,
    title: str = "pgpoolkit benchmark suite",
) -> int:
    """Run the suite; returns the exit status (0; SetupError is raised when it can't run)."""
    settings = PRESETS[preset]
    t_begin = time.perf_counter()

    def say(text: str) -> None:
        print(text, file=log, flush=True)

    for path in (json_path, chart_path):
        if path is not None and path != "-":
            directory = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
                raise SetupError(f"can't write {path}: {directory} is not a writable directory")
    if chart_path is not None and importlib.util.find_spec("matplotlib") is None:
        say(NO_MATPLOTLIB)
        chart_path = None
    program, why = find_pgbouncer(pgbouncer)
    notes: list[str] = [why] if why else []
    to_stdout = json_path == "-"
    table_out = log if to_stdout else out
    with ExitStack() as stack:
        dsn = server_dsn(stack, dsn, say)
        server_version = connect_check(dsn)
        parts = _parts(dsn, settings, stack, program, notes, say)
        if only:
            for part in parts:
                part.scenarios = [s for s in part.scenarios if only in s.name]
            parts = [part for part in parts if part.scenarios]
            if not parts:
                raise SetupError(f"no scenario name contains {only!r}")
        total = sum(len(part.scenarios) for part in parts)
        say(f"{title} ({settings.name}): {plural(total, 'scenario')}, {_rounds(settings)}")
        number = 1
        for part in parts:
            if part.before is not None:
                part.before()
            part.results = run_scenarios(
                part.scenarios,
                rounds=part.rounds,
                seconds=part.seconds,
                warmup=part.warmup,
                log=log,
                first=number,
                total=total,
            )
            number += len(part.scenarios)
    elapsed = time.perf_counter() - t_begin
    meta: dict[str, Any] = {
        **versions(),
        "pgbouncer": pgbouncer_version(program),
        "server_version": server_version,
        "preset": settings.name,
        "rounds": settings.rounds,
        "rounds_text": _rounds(settings),
        "total_seconds": round(elapsed, 1),
    }
    targets: list[Target] = []
    seen: set[str] = set()
    for part in parts:
        for t in part.targets(part.results):
            if t.name not in seen:  # checkout and select1 share a target function
                seen.add(t.name)
                targets.append(t)
    targets = _ordered(targets)

    print(_header(meta), file=table_out)
    print(file=table_out)
    for part in parts:
        part.print_tables(part.results, part.scenarios, table_out)
    for note in dict.fromkeys(notes):
        print(note, file=table_out)
    if notes:
        print(file=table_out)
    print_summary(targets, table_out)
    print(
        "ratios: medians of the per-round ratios (the contenders of a round run back to back)",
        file=table_out,
    )

    if json_path is not None:
        doc = _json(parts, meta, targets, notes)
        if to_stdout:
            print(doc, file=out)
        else:
            with open(json_path, "w", encoding="utf-8") as f:
                f.write(doc + "\n")
            say(f"JSON written to {json_path}")
    if chart_path is not None:
        problem = write_chart(chart_path, parts, targets)
        say(problem if problem is not None else f"chart written to {chart_path}")
    return 0


def _rounds(p: Preset) -> str:
    return (
        f"{plural(p.rounds, 'interleaved round')} per contender (spike "
        f"{p.spike_rounds}, memory {p.memory_rounds})"
    )


def _header(meta: dict[str, Any]) -> str:
    v = meta["server_version"]
    return (
        f"pgpoolkit {meta['pgpoolkit']}, psycopg {meta['psycopg']} ({meta['psycopg_impl']}), "
        f"psycopg_pool {meta['psycopg_pool']}, {meta['pgbouncer'] or 'no PgBouncer'}, "
        f"PostgreSQL {v // 10000}.{v % 10000}, {meta['implementation']} {meta['python']}, "
        f"{meta['cpus']} CPUs ({meta['machine']})\n"
        f"preset {meta['preset']}: {meta['rounds_text']}, medians; "
        f"the run took {meta['total_seconds']} s"
    )


def _json(
    parts: Sequence[Part], meta: dict[str, Any], targets: Sequence[Target], notes: Sequence[str]
) -> str:
    entries: list[dict[str, Any]] = []
    for part in parts:
        doc = json.loads(results_json(part.results, {}))
        part_entries: list[dict[str, Any]] = doc["results"]
        for entry in part_entries:
            entry["group"] = part.group
        part.annotate(part_entries, part.results)
        entries += part_entries
    return json.dumps(
        {
            "meta": meta,
            "results": entries,
            "targets": [t.as_dict() for t in targets],
            "notes": list(dict.fromkeys(notes)),
        },
        indent=2,
    )


# -- command line ------------------------------------------------------------------------------


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run the pgpoolkit benchmark suite and check the performance targets.",
    )
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The suite's options (also those of ``python -m pgpoolkit bench``)."""
    parser.add_argument(
        "--dsn",
        help="libpq connection string or URI of the server to use (default: $PGPOOLKIT_DSN, "
        "else a throwaway local PostgreSQL)",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick",
        dest="preset",
        action="store_const",
        const="quick",
        help="a short run, about a minute on 2 CPUs (the default)",
    )
    size.add_argument(
        "--full",
        dest="preset",
        action="store_const",
        const="full",
        help="every worker count, longer and more rounds (several minutes)",
    )
    size.add_argument(
        "--smoke", dest="preset", action="store_const", const="smoke", help=argparse.SUPPRESS
    )
    parser.set_defaults(preset="quick")
    parser.add_argument(
        "--json", metavar="PATH", help="also write every figure as JSON to PATH ('-': stdout)"
    )
    parser.add_argument(
        "--chart", metavar="PATH", help="also draw a PNG chart to PATH (needs matplotlib)"
    )
    parser.add_argument(
        "--pgbouncer",
        metavar="PATH",
        help="the pgbouncer program (default: found on PATH or in /usr/sbin); 'off' to leave "
        "PgBouncer out",
    )
    parser.add_argument(
        "--only", metavar="TEXT", help="run only the scenarios whose name contains TEXT"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_suite(
            dsn=args.dsn,
            preset=args.preset,
            json_path=args.json,
            chart_path=args.chart,
            pgbouncer=args.pgbouncer,
            only=args.only,
        )
    except SetupError as ex:
        print(f"error: {one_line(ex)}", file=sys.stderr)
        return 2
    except psycopg.Error as ex:
        print(f"error: database error: {one_line(ex)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
