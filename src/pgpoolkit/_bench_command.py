"""``pgpoolkit bench``: runs the benchmark suite of a source checkout (``benchmarks/suite.py``;
the benchmarks are not part of the installed package) and checks the performance targets."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from . import __version__
from ._cli import DSN_ENV, PROG, CommandError, _dsn_password, _one_line

# -- the bench command -----------------------------------------------------------------------------

#: the files that make a benchmarks/ directory usable by the bench command
_SUITE_FILES = ("suite.py", "harness.py")


def benchmarks_dir() -> Path | None:
    """The ``benchmarks/`` directory of the source checkout this package runs from (else of
    the current directory's checkout), or None: installed from a wheel, there is none."""
    candidates = [Path(__file__).resolve().parents[2] / "benchmarks", Path.cwd() / "benchmarks"]
    for candidate in candidates:
        if all((candidate / name).is_file() for name in _SUITE_FILES):
            return candidate
    return None


def _load_suite() -> ModuleType:
    """``benchmarks/suite.py``, imported with ``benchmarks/`` on ``sys.path``."""
    directory = benchmarks_dir()
    if directory is None:
        raise CommandError(
            "the benchmarks are not available: they live in the benchmarks/ directory of a "
            "pgpoolkit source checkout, which an installed package does not have; run "
            "'python -m pgpoolkit bench' from a checkout (git clone, then pip install -e "
            "'.[bench]')"
        )
    if importlib.util.find_spec("psycopg_pool") is None:
        raise CommandError(
            "the benchmarks compare with psycopg_pool, which is not installed: "
            "pip install 'pgpoolkit[bench]'"
        )
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    spec = importlib.util.spec_from_file_location("pgpoolkit_bench_suite", directory / "suite.py")
    if spec is None or spec.loader is None:
        raise CommandError(f"can't load {directory / 'suite.py'}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def bench(args: argparse.Namespace) -> int:
    dsn_arg: str | None = args.dsn if args.dsn is not None else os.environ.get(DSN_ENV) or None
    password: str | None = None
    if dsn_arg is not None:
        try:
            conninfo_to_dict(dsn_arg)
        except psycopg.Error:
            raise CommandError(
                "the DSN is not in valid libpq connection string or URI syntax "
                "(not shown: it may hold a password)"
            ) from None
        password = _dsn_password(dsn_arg)
    suite = _load_suite()
    try:
        return int(
            suite.run_suite(
                dsn=dsn_arg,
                preset=args.preset,
                json_path=args.json,
                chart_path=args.chart,
                pgbouncer=args.pgbouncer,
                only=args.only,
                title=f"{PROG} {__version__} bench",
            )
        )
    except suite.SetupError as ex:
        raise CommandError(_one_line(str(ex), password)) from None
    except psycopg.Error as ex:
        raise CommandError(f"database error: {_one_line(str(ex), password)}") from None
    except OSError as ex:  # --json or --chart to a path that can't be written
        raise CommandError(_one_line(str(ex), password)) from None


def _add_bench_parser(commands: Any) -> None:
    p = commands.add_parser(
        "bench",
        help="run the benchmark suite side by side with psycopg_pool, PgBouncer and raw "
        "psycopg, and check the performance targets",
        description=(
            "Run a short version of the benchmark suite (checkout-only, select1, "
            "per-statement pooling modes, a pgbench-like transaction, many clients, a spike "
            "of demand, connect-per-request, memory per client) with pgpoolkit, psycopg_pool, "
            "raw psycopg and, when installed, PgBouncer side by side, then print the tables "
            "and the performance targets with their measured ratios (met / MISSED). Without "
            f"--dsn (or {DSN_ENV}) a throwaway local PostgreSQL is started and removed at the "
            "end. Needs a source checkout (the benchmarks/ directory) and psycopg_pool "
            "(pip install -e '.[bench]'). Progress goes to stderr, the tables to stdout."
        ),
    )
    p.add_argument(
        "--dsn",
        help=f"libpq connection string or URI of the server to use (default: ${DSN_ENV}, "
        "else a throwaway local PostgreSQL)",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--quick",
        dest="preset",
        action="store_const",
        const="quick",
        help="a short run: about a minute on a 2-CPU machine (the default)",
    )
    size.add_argument(
        "--full",
        dest="preset",
        action="store_const",
        const="full",
        help="every worker count, more and longer rounds (about 4 minutes on 2 CPUs)",
    )
    size.add_argument(
        "--smoke", dest="preset", action="store_const", const="smoke", help=argparse.SUPPRESS
    )
    p.set_defaults(preset="quick")
    p.add_argument(
        "--json",
        metavar="PATH",
        help="also write every figure as JSON to PATH ('-': to stdout, instead of the tables)",
    )
    p.add_argument(
        "--chart",
        metavar="PATH",
        help="also draw a chart (PNG) to PATH; needs matplotlib",
    )
    p.add_argument(
        "--pgbouncer",
        metavar="PATH",
        help="the pgbouncer program (default: found on PATH or in /usr/sbin); 'off' to leave "
        "PgBouncer out",
    )
    p.add_argument("--only", metavar="TEXT", help="run only the scenarios whose name contains TEXT")
    p.set_defaults(func=bench)


# -- argument parsing ------------------------------------------------------------------------------
