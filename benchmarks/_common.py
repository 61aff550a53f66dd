"""What the benchmark scripts share beyond the harness: the server to run against, argument
parsing, the versions in the report, figures the harness does not measure (client CPU time,
peak server connections) and the issue's targets.

The harness (harness.py) stays standard library only; this module uses psycopg and pgpoolkit.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg

import pgpoolkit
from pgpoolkit.testing import TemporaryPostgres

__all__ = [
    "DSN_ENV",
    "Extras",
    "SetupError",
    "Target",
    "connect_check",
    "counts",
    "fmt",
    "median_ratio",
    "one_line",
    "plural",
    "positive",
    "print_targets",
    "server_dsn",
    "versions",
]

DSN_ENV = "PGPOOLKIT_DSN"


class SetupError(Exception):
    """The benchmark can't run (no server, can't connect): a one-line message, exit 2."""


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def one_line(ex: BaseException | str) -> str:
    text = " ".join(str(ex).split())
    return text or type(ex).__name__


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "" if value is None or value != value else format(value, spec)


def median_ratio(values: Sequence[float], bases: Sequence[float]) -> float | None:
    """Median of the per-round ratios value / base (the rounds ran back to back)."""
    ratios = [
        v / b
        for v, b in zip(values, bases, strict=False)
        if v > 0 and b > 0 and not math.isnan(v) and not math.isnan(b)
    ]
    return statistics.median(ratios) if ratios else None


# -- arguments ---------------------------------------------------------------------------------


def counts(text: str) -> list[int]:
    """``1,4,16`` -> [1, 4, 16] (argparse type)."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a list like 1,4, got {text!r}") from None
    if not values or any(c < 1 for c in values):
        raise argparse.ArgumentTypeError(f"expected counts >= 1, got {text}")
    return values


def add_run_arguments(
    parser: argparse.ArgumentParser,
    *,
    rounds: int = 5,
    rounds_help: str = "rounds per contender",
    seconds: float | None = None,
    seconds_help: str = "length of one round of one contender",
    warmup: bool = True,
) -> None:
    """The options every benchmark script takes: --dsn, --rounds and, where the script times
    rounds, --seconds and --warmup."""
    parser.add_argument(
        "--dsn",
        help=f"server to use (default: ${DSN_ENV}, else a throwaway local PostgreSQL)",
    )
    parser.add_argument(
        "--rounds", type=positive(int), default=rounds, help=f"{rounds_help} (default: {rounds})"
    )
    if seconds is not None:
        parser.add_argument(
            "--seconds",
            type=positive(float),
            default=seconds,
            help=f"{seconds_help} (default: {seconds:g})",
        )
    if warmup:
        parser.add_argument(
            "--warmup",
            type=float,
            default=0.1,
            help="warm-up run per contender before the rounds, seconds (default: 0.1)",
        )


def positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type: ``kind(text)``, which must be > 0."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid value {text!r}") from None
        if not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"expected a value > 0, got {text}")
        return value

    return parse


# -- the server --------------------------------------------------------------------------------


def server_dsn(stack: ExitStack, dsn: str | None, log: Callable[[str], None]) -> str:
    """``dsn``, else ``$PGPOOLKIT_DSN``, else a throwaway local PostgreSQL's (removed when
    ``stack`` closes). Raises SetupError when none can be had."""
    if dsn is None:
        dsn = os.environ.get(DSN_ENV) or None
    if dsn is not None:
        return dsn
    log("starting a throwaway PostgreSQL (initdb + pg_ctl; pass --dsn to use yours)...")
    t0 = time.perf_counter()
    pg = TemporaryPostgres()
    try:
        pg.start()
    except (RuntimeError, OSError) as ex:
        pg.cleanup()
        raise SetupError(
            f"can't start a throwaway PostgreSQL: {one_line(ex)} Or pass --dsn, or set {DSN_ENV}."
        ) from None
    stack.callback(pg.cleanup)
    log(f"  ready in {time.perf_counter() - t0:.1f} s: {pg.dsn}")
    return pg.dsn


def connect_check(dsn: str) -> int:
    """The server's version number; SetupError if it can't be reached."""
    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            return conn.info.server_version
    except psycopg.Error as ex:
        raise SetupError(f"can't connect: {one_line(ex)}") from None


def versions() -> dict[str, Any]:
    """What the figures depend on: Python, the libraries, the machine."""
    try:
        import psycopg_pool

        pool_version: str | None = psycopg_pool.__version__
    except ImportError:
        pool_version = None
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "psycopg": psycopg.__version__,
        "libpq": psycopg.pq.version(),
        "psycopg_impl": psycopg.pq.__impl__,
        "psycopg_pool": pool_version,
        "pgpoolkit": pgpoolkit.__version__,
    }


# -- figures the harness does not measure ------------------------------------------------------


@dataclass
class Extras:
    """What the harness does not measure, per (scenario, contender), every run (the warm-up
    run first, when there is one): the client process's CPU time per unit, and the peak
    number of server connections seen in pg_stat_activity."""

    dsn: str
    warmup: bool
    cpu_us: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    peaks: dict[tuple[str, str], list[int]] = field(default_factory=dict)

    def metered(
        self, scenario: str, contender: str, run: Callable[[float], Any]
    ) -> Callable[[float], Any]:
        """``run``, also recording the CPU time of this process (all its threads) per unit."""

        def metered_run(seconds: float) -> Any:
            c0 = time.process_time()
            sample = run(seconds)
            cpu = time.process_time() - c0
            per_op = cpu / sample.ops * 1e6 if sample.ops else math.nan
            self.cpu_us.setdefault((scenario, contender), []).append(per_op)
            return sample

        return metered_run

    def cpu_rounds(self, scenario: str, contender: str) -> list[float]:
        runs = self.cpu_us.get((scenario, contender), [])
        return runs[1:] if self.warmup else runs

    @contextmanager
    def sampling(self, scenario: str, contender: str, application_name: str) -> Iterator[None]:
        """Count the server connections named ``application_name`` every 10 ms meanwhile."""
        stop = threading.Event()
        peak = [0]
        errors: list[BaseException] = []
        conn = psycopg.connect(self.dsn, autocommit=True, application_name="bench-sampler")

        def sample() -> None:
            try:
                while True:
                    row = conn.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                        (application_name,),
                    ).fetchone()
                    peak[0] = max(peak[0], int(row[0]) if row else 0)
                    if stop.wait(0.01):
                        return
            except BaseException as ex:
                errors.append(ex)

        sampler = threading.Thread(target=sample, name="bench-sampler", daemon=True)
        sampler.start()
        try:
            yield
        finally:
            stop.set()
            sampler.join()
            conn.close()
        if errors:
            raise errors[0]
        self.peaks.setdefault((scenario, contender), []).append(peak[0])

    def peak(self, scenario: str, contender: str) -> int | None:
        """The highest count seen in any run (the warm-up included: a peak is a peak)."""
        seen = self.peaks.get((scenario, contender))
        return max(seen) if seen else None


# -- targets -----------------------------------------------------------------------------------


@dataclass
class Target:
    """One of the issue's targets, and what this run measured.

    ``met`` is None when the run did not measure it (a scenario left out or skipped).
    """

    name: str
    goal: str
    measured: str
    met: bool | None

    @property
    def verdict(self) -> str:
        return "n/a" if self.met is None else ("met" if self.met else "MISSED")

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "goal": self.goal,
            "measured": self.measured,
            "met": self.met,
        }


def print_targets(targets: Sequence[Target], file: Any) -> None:
    """A line per target: verdict, name, what was measured, the goal."""
    if not targets:
        return
    width = max(len(t.name) for t in targets)
    for t in targets:
        print(f"  {t.verdict:<6}  {t.name:<{width}}  {t.measured}  (goal: {t.goal})", file=file)
