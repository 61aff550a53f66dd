"""The ``pgpoolkit`` command line (``python -m pgpoolkit``, the ``pgpoolkit`` script).

``pgpoolkit demo`` runs a short concurrent workload through a :class:`~pgpoolkit.Pool` (threads)
and an :class:`~pgpoolkit.AsyncPool` (asyncio tasks) and shows what the pool did: many clients,
few server connections. Without ``--dsn`` (or ``PGPOOLKIT_DSN``) it starts a throwaway local
PostgreSQL and removes it at the end.

``pgpoolkit bench`` runs the benchmark suite of a source checkout (``benchmarks/run.py``, found
with ``--suite PATH`` or in ``./benchmarks``: the benchmarks are not part of the installed
package) side by side with psycopg_pool, PgBouncer and raw psycopg, and checks the performance
targets.

Exit status: 0 when the pool behaved, 1 when the verdict is a failure, 2 on a usage or
connection error (a one-line message, no traceback), 130 when interrupted.

This file parses the command line; the commands live in ``demo.py`` and ``bench.py``, what
they share in ``_common.py``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from .. import __version__
from . import bench
from ._common import (
    DSN_ENV,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    PROG,
    CommandError,
    _positive_float,
    _positive_int,
)
from .demo import demo

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``pgpoolkit`` argument parser (``bench`` only appears in the help: the benchmark
    suite parses its own options)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="pgpoolkit: an in-process PostgreSQL connection pool for psycopg 3.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = commands.add_parser(
        "demo",
        help="run a short concurrent workload through the pool and show what it did",
        description=(
            "Run many threads, then many asyncio tasks, over a small pool for a few seconds, "
            "and show throughput, checkout waits, the server connections seen in "
            "pg_stat_activity and the pool's stats. Without --dsn (or "
            f"{DSN_ENV}) a throwaway local PostgreSQL is started and removed at the end. "
            "The demo creates a small table and drops it at the end."
        ),
    )
    p.add_argument(
        "--dsn",
        help=f"libpq connection string or URI of the server to use (default: ${DSN_ENV}, "
        "else a throwaway local PostgreSQL)",
    )
    p.add_argument(
        "--clients",
        type=_positive_int,
        default=50,
        metavar="N",
        help="threads in the threaded part (default: 50)",
    )
    p.add_argument(
        "--tasks",
        type=_positive_int,
        default=200,
        metavar="N",
        help="tasks in the asyncio part (default: 200)",
    )
    p.add_argument(
        "--seconds",
        type=_positive_float,
        default=5.0,
        metavar="S",
        help="total run time, split between the two parts (default: 5)",
    )
    p.add_argument(
        "--max-size",
        type=_positive_int,
        default=5,
        metavar="M",
        help="the pools' max_size: server connections at most (default: 5)",
    )
    p.add_argument(
        "--mode",
        choices=("session", "transaction", "statement"),
        default="session",
        help="pooling mode (default: session)",
    )
    p.set_defaults(func=demo)
    bench.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The command line entry point; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # the suite parses its own options
        try:
            return bench.bench(argv[1:])
        except CommandError as ex:
            print(f"{PROG} bench: error: {ex}", file=sys.stderr, flush=True)
            return EXIT_ERROR
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    try:
        return func(args)
    except CommandError as ex:
        print(f"{PROG} {args.command}: error: {ex}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
