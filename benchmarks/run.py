"""The benchmark suite: every scenario of ``benchmarks/scenarios/``, side by side with the peers.

    python benchmarks/run.py [--dsn DSN] [--quick | --full] [--only TEXT] [--json PATH]
                             [--chart PATH] [--pgbouncer PATH|install|off]

(``python -m pgpoolkit bench`` runs this file.) Against ``--dsn`` or a throwaway local
PostgreSQL, it runs each scenario's contenders in interleaved rounds, then prints a table per
scenario and the issue's targets with the figure measured and met / MISSED / n/a. Progress goes
to stderr, the tables to stdout. Exit status: 0 whatever the verdicts (benchmarks, not tests),
2 with a one-line message when it can't run.

A scenario file in ``scenarios/`` defines ``ORDER`` (where it runs), ``scenarios(ctx)`` and
optionally ``targets(results, ctx)`` and ``DEFAULT = False`` (only run when ``--only`` names
it). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import harness  # noqa: E402
from harness import Context, Result, Scenario, SetupError, Target  # noqa: E402

PRESETS = {  # rounds, warm-up seconds
    "quick": (3, 0.05),
    "full": (5, 0.1),
    "smoke": (1, 0.0),  # CI: every scenario and contender once, tiny
}


def scenario_modules() -> list[ModuleType]:
    """The scenario files, in their ``ORDER``."""
    names = sorted(p.stem for p in (HERE / "scenarios").glob("*.py") if p.stem != "__init__")
    modules = [importlib.import_module(f"scenarios.{name}") for name in names]
    return sorted(modules, key=lambda m: getattr(m, "ORDER", 100))


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=(__doc__ or "").split("\n\n")[0])
    p.add_argument(
        "--dsn",
        help=f"server to use (default: ${harness.DSN_ENV}, else a throwaway "
        "local PostgreSQL, removed at the end)",
    )
    size = p.add_mutually_exclusive_group()
    for name, text in (
        ("quick", "about a minute on 2 CPUs (the default)"),
        ("full", "every worker count, more and longer rounds (~5 min)"),
        ("smoke", argparse.SUPPRESS),
    ):
        size.add_argument(f"--{name}", dest="preset", action="store_const", const=name, help=text)
    p.set_defaults(preset="quick")
    p.add_argument(
        "--only",
        metavar="TEXT",
        help="only the scenarios whose name (or file name) "
        "contains TEXT; 'instructions' runs the valgrind profile",
    )
    p.add_argument("--json", metavar="PATH", help="also write every figure as JSON ('-': stdout)")
    p.add_argument("--chart", metavar="PATH", help="also draw a PNG chart (needs matplotlib)")
    p.add_argument(
        "--pgbouncer",
        metavar="PATH",
        help="the pgbouncer program (default: on PATH "
        "or in /usr/sbin); 'install': apt-get install it if missing; 'off'",
    )
    p.add_argument(
        "--rounds", type=int, metavar="N", help="rounds per contender (default: the preset's)"
    )
    p.add_argument(
        "--scale", type=float, default=1.0, metavar="F", help="rounds F times longer (default: 1)"
    )
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument(
        "--suite",
        metavar="PATH",
        help="(pgpoolkit bench) the benchmarks directory (default: ./benchmarks)",
    )
    return p


class Progress:
    """One progress line on stderr: rewritten in place on a terminal, a line per scenario
    otherwise."""

    def __init__(self, total: int) -> None:
        self.total, self.n, self.t0 = total, 0, time.perf_counter()
        self.tty = sys.stderr.isatty()
        self.name = ""

    def start(self, name: str) -> None:
        self.n += 1
        self.name = name
        self.s0 = time.perf_counter()
        self.update("setting up")

    def update(self, what: str) -> None:
        if self.tty:
            spent = time.perf_counter() - self.t0
            line = f"[{self.n}/{self.total}] {self.name}: {what} ({spent:.0f} s)"
            print(f"\r\x1b[K{line}", end="", file=sys.stderr, flush=True)

    def done(self) -> None:
        line = f"[{self.n}/{self.total}] {self.name}: {time.perf_counter() - self.s0:.1f} s"
        print(f"\r\x1b[K{line}" if self.tty else line, file=sys.stderr, flush=True)


def run_suite(args: argparse.Namespace, title: str = "pgpoolkit benchmarks") -> int:
    for path in (args.json, args.chart):  # fail before running, not after
        parent = Path(path or ".").resolve().parent
        if path and path != "-" and not os.access(parent, os.W_OK):
            raise SetupError(f"can't write {path}: {parent} is not a writable directory")
    rounds, warmup = PRESETS[args.preset]
    rounds = args.rounds if args.rounds and args.rounds > 0 else rounds
    modules = scenario_modules()
    only = args.only
    out = sys.stderr if args.json == "-" else sys.stdout
    with ExitStack() as stack:
        dsn = harness.server_dsn(stack, args.dsn, lambda line: print(line, file=sys.stderr))
        program, why = harness.find_pgbouncer(args.pgbouncer)
        ctx = Context(dsn, args.preset, program, [why] if why else [])
        plan: list[tuple[ModuleType, list[Scenario]]] = []
        for m in modules:
            named = only is not None and only in m.__name__.rsplit(".", 1)[-1]
            if not getattr(m, "DEFAULT", True) and not named:
                continue
            found = [
                replace(s, seconds=s.seconds * args.scale)
                for s in m.scenarios(ctx)
                if only is None or named or only in s.name
            ]
            if found or only is None:
                plan.append((m, found))
        total = sum(len(found) for _, found in plan)
        if total == 0:
            raise SetupError(f"no scenario matches --only {only!r} (see --list)")
        progress = Progress(total)
        results: list[Result] = []
        tables: list[tuple[Scenario, list[Result]]] = []
        targets: list[Target] = []
        ran = {m.__name__ for m, _ in plan}
        plan += [(m, []) for m in modules if m.__name__ not in ran and hasattr(m, "targets")]
        plan.sort(key=lambda item: getattr(item[0], "ORDER", 100))
        for m, found in plan:  # every target is printed: n/a when its scenario did not run
            mine: list[Result] = []
            for s in found:
                progress.start(s.name)
                got = harness.run_scenario(
                    s, rounds=rounds, warmup=warmup, dsn=dsn, progress=progress.update
                )
                progress.done()
                tables.append((s, got))
                mine += got
            results += mine
            if hasattr(m, "targets"):
                targets += m.targets(mine, ctx)
        meta = {
            "title": title,
            "preset": args.preset,
            "rounds": rounds,
            "versions": harness.versions(program),
            "notes": ctx.notes,
        }
    v = meta["versions"]
    print(
        f"{title}, {args.preset} preset, {rounds} rounds: pgpoolkit {v['pgpoolkit']}, psycopg "
        f"{v['psycopg']} ({v['psycopg_impl']}, libpq {v['libpq']}), psycopg_pool "
        f"{v['psycopg_pool']}, {v['pgbouncer'] or 'no PgBouncer'}, Python {v['python']}, "
        f"{v['cpus']} CPUs",
        file=out,
    )
    print(file=out)
    for s, got in tables:
        harness.print_table(s, got, out)
    if targets:
        print("issue 11 targets (one run, noisy machine: read ratios):", file=out)
        harness.print_targets(targets, out)
    for note in ctx.notes:
        print(f"  note: {note}", file=out)
    if args.json:
        harness.dump_json(harness.results_json(results, targets, meta), args.json, sys.stdout)
    if args.chart:
        why_not = harness.draw_chart(args.chart, results, targets)
        print(why_not or f"chart: {args.chart}", file=sys.stderr)
    return 0


def main(
    argv: Sequence[str] | None = None, prog: str | None = None, title: str | None = None
) -> int:
    args = build_parser(prog).parse_args(argv)
    name = prog or "benchmarks"
    if args.list:
        ctx = Context("", args.preset)
        for m in scenario_modules():
            tail = "" if getattr(m, "DEFAULT", True) else "  (only with --only)"
            names = ", ".join(s.name for s in m.scenarios(ctx))
            print(f"{m.__name__.rsplit('.', 1)[-1]}: {names}{tail}")
        return 0
    try:
        import psycopg_pool  # noqa: F401
    except ImportError:
        print(
            f"{name}: error: psycopg_pool is not installed: pip install -e '.[bench]'",
            file=sys.stderr,
        )
        return 2
    dsn = args.dsn or os.environ.get(harness.DSN_ENV)
    if dsn and _password(dsn) is False:
        print(
            f"{name}: error: the DSN is not in valid libpq connection string or URI syntax "
            "(not shown: it may hold a password)",
            file=sys.stderr,
        )
        return 2
    secret = _password(dsn) if dsn else None
    try:
        return run_suite(args, title or name)
    except (SetupError, OSError, _psycopg_error()) as ex:
        text = harness.one_line(ex)
        text = text.replace(secret, "***") if isinstance(secret, str) and secret else text
        print(f"{name}: error: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130


def _psycopg_error() -> type[Exception]:
    import psycopg

    return psycopg.Error


def _password(dsn: str) -> str | bool:
    """The DSN's password ("" if none), or False if it is not a valid DSN."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        return str(conninfo_to_dict(dsn).get("password") or "")
    except ProgrammingError:
        return False


if __name__ == "__main__":
    sys.exit(main())
