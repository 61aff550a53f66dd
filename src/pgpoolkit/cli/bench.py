"""``pgpoolkit bench``: runs the benchmark suite of a pgpoolkit source checkout.

The suite is not part of the installed package: it compares pgpoolkit with psycopg_pool, raw
psycopg and PgBouncer, needs psycopg_pool (``pip install -e '.[bench]'``) and is a tool of the
project, not of the library. The command finds it where the user says, never through this
file's location: ``--suite PATH``, else ``$PGPOOLKIT_BENCHMARKS``, else ``./benchmarks`` (the
current directory is a checkout's root, as in the README). It then runs ``benchmarks/run.py``,
which owns every other option (``pgpoolkit bench --help`` shows them).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from ._common import PROG, CommandError

SUITE_ENV = "PGPOOLKIT_BENCHMARKS"
_RUNNER = "run.py"

_NOT_FOUND = (
    "no benchmark suite found at {where}: the benchmarks live in the benchmarks/ directory of a "
    "pgpoolkit source checkout (git clone, then pip install -e '.[bench]'); run this command "
    f"from the checkout's root, or pass --suite PATH (or set {SUITE_ENV})"
)


def find_suite(option: str | None) -> Path:
    """The benchmarks directory: ``option``, else ``$PGPOOLKIT_BENCHMARKS``, else
    ``./benchmarks``; CommandError when it has no ``run.py``."""
    path = Path(option or os.environ.get(SUITE_ENV) or "benchmarks").expanduser()
    if not (path / _RUNNER).is_file():
        raise CommandError(_NOT_FOUND.format(where=path.resolve()))
    return path.resolve()


def bench(argv: Sequence[str]) -> int:
    """Run the suite with ``argv`` (the arguments after ``bench``); its exit status."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--suite", metavar="PATH")
    known, rest = pre.parse_known_args(argv)
    suite = find_suite(known.suite)
    if str(suite) not in sys.path:
        sys.path.insert(0, str(suite))
    spec = importlib.util.spec_from_file_location("pgpoolkit_bench_runner", suite / _RUNNER)
    if spec is None or spec.loader is None:
        raise CommandError(f"can't load {suite / _RUNNER}")
    runner = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = runner  # dataclasses look their module up there
    spec.loader.exec_module(runner)
    status: int = runner.main(rest, prog=f"{PROG} bench", title=f"{PROG} {__version__} bench")
    return status


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``bench`` in ``pgpoolkit --help``; its own options are the suite's (see :func:`bench`)."""
    commands.add_parser(
        "bench",
        add_help=False,
        help="run the benchmark suite of a source checkout side by side with psycopg_pool, "
        "PgBouncer and raw psycopg, and check the performance targets "
        "(--suite PATH, default ./benchmarks; 'bench --help' for its options)",
    )
