#!/usr/bin/env python
"""Run psycopg's own connection-pool test suite (``tests/pool``) against a pool implementation.

Targets:

``psycopg_pool``
    the installed psycopg_pool package (the baseline);
``pgpoolkit``
    pgpoolkit's psycopg_pool-compatible names: a throwaway package named ``psycopg_pool``,
    written to a temporary directory and put first on ``PYTHONPATH`` (and ``MYPYPATH``),
    re-exports ``pgpoolkit.compat`` (or ``--compat-module``) as ``psycopg_pool`` and as each
    of the submodules the tests import (``psycopg_pool.pool``, ``psycopg_pool.sched``, ...).

Getting psycopg's tests (this script downloads nothing): from a clone of
https://github.com/psycopg/psycopg at a 3.3 tag (e.g. ``git clone --branch 3.3.4 ...``),
pass the clone itself, or extract only what the suite needs, e.g.::

    git -C psycopg archive 3.3.4 tests tools/pproxy_fix.py | tar -x -C /tmp/psycopg-tests
    python scripts/psycopg_pool_suite.py /tmp/psycopg-tests --target pgpoolkit

``tools/pproxy_fix.py`` (beside ``tests/``) is needed by the tests using the ``proxy`` fixture.
The suite also needs ``pytest``, ``anyio``, ``pproxy``, ``mypy`` and ``packaging``
(``pip install anyio pproxy``); ``pytest-timeout`` is used when installed.

Without ``--dsn`` a :class:`pgpoolkit.testing.TemporaryPostgres` is started for the run.
Arguments after ``--`` go to pytest (e.g. ``-- -k null -x``). The last line printed is
``psycopg_pool suite against <target>: N passed, N failed, N skipped, N errors``; the exit
status is pytest's.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

# What psycopg's tests/pool imports from psycopg_pool ("" is the package itself). The tests
# also reach `psycopg_pool.base` as an attribute of the package, and many private attributes
# of the pools (`_pool`, `_waiting`, `_workers`, ...): see the tests themselves.
EXPECTED: dict[str, tuple[str, ...]] = {
    "": (
        "AsyncConnectionPool",
        "AsyncNullConnectionPool",
        "ConnectionPool",
        "NullConnectionPool",
        "PoolClosed",
        "PoolTimeout",
        "TooManyRequests",
        "__version__",
    ),
    "base": ("AttemptWithBackoff",),
    "pool": ("ShrinkPool",),
    "pool_async": ("ShrinkPool", "WaitingClient"),
    "sched": ("Scheduler",),
    "sched_async": ("AsyncScheduler",),
}
SUBMODULES = tuple(sub for sub in EXPECTED if sub)

# The shim package. A name missing from the target fails only the tests that use it.
# "import *" re-exports for mypy --strict too (tests/pool/test_module.py), but not dunders.
_INIT_TEMPLATE = '''\
"""psycopg_pool shim for psycopg's test suite, re-exporting {module} (generated)."""

from {module} import *  # noqa: F403

try:
    from {module} import __version__ as __version__
except ImportError:
    from pgpoolkit import __version__ as __version__

from . import {submodules}
'''

# Submodules re-export `<module>.<sub>` if that exists, else <module>, private names included.
_SUBMODULE_TEMPLATE = '''\
"""psycopg_pool.{sub} shim, re-exporting {module}.{sub} or else {module} (generated)."""

import importlib

try:
    _source = importlib.import_module("{module}.{sub}")
except ModuleNotFoundError as ex:
    if ex.name != "{module}.{sub}":
        raise
    _source = importlib.import_module("{module}")
globals().update({{k: v for k, v in vars(_source).items() if not k.startswith("__")}})
'''

# Run before the suite: fails if psycopg_pool can't be imported, lists the missing names.
_PREFLIGHT = """\
import importlib, sys
expected = {expected!r}
package = importlib.import_module("psycopg_pool")
print("psycopg_pool:", package.__file__, "->", package.ConnectionPool)
modules = {{sub: ".".join(filter(None, ["psycopg_pool", sub])) for sub in expected}}
missing = [
    f"{{modules[sub]}}.{{name}}"
    for sub, names in expected.items()
    for name in names
    if not hasattr(importlib.import_module(modules[sub]), name)
]
if missing:
    print("missing (the tests using them will fail):", ", ".join(missing), file=sys.stderr)
"""

# pytest settings; the same as psycopg's pyproject.toml (an extracted tests/ may lack it).
_PYTEST_INI = """\
[pytest]
addopts = -ra
filterwarnings = error
"""

_SUMMARY_RE = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)\b")


def find_root(path: Path) -> Path:
    """The directory holding psycopg's ``tests`` package (a checkout or an extract)."""
    for root in (path, path.parent):
        if (root / "tests" / "pool").is_dir() and (root / "tests" / "conftest.py").is_file():
            return root.resolve()
    raise SystemExit(f"{path}: no psycopg tests/pool here (see --help for how to get it)")


def write_shim(directory: Path, module: str) -> None:
    """Write a ``psycopg_pool`` package in *directory* re-exporting *module*."""
    package = directory / "psycopg_pool"
    package.mkdir()
    init = _INIT_TEMPLATE.format(module=module, submodules=", ".join(SUBMODULES))
    (package / "__init__.py").write_text(init)
    (package / "py.typed").write_text("")
    for sub in SUBMODULES:
        text = _SUBMODULE_TEMPLATE.format(module=module, sub=sub)
        (package / f"{sub}.py").write_text(text)


@contextlib.contextmanager
def server(dsn: str | None) -> Iterator[str]:
    """Yield *dsn*, or the DSN of a throwaway server running for the duration."""
    if dsn:
        yield dsn
        return
    from pgpoolkit.testing import TemporaryPostgres

    with TemporaryPostgres() as pg:
        yield pg.dsn


def summarize(output: str) -> dict[str, int]:
    """Counts from pytest's closing line (``== 3 failed, 5 passed, 1 skipped in 2.0s ==``)."""
    counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    lines = [line for line in output.splitlines() if line.startswith("=") and " in " in line]
    for number, word in _SUMMARY_RE.findall(lines[-1] if lines else ""):
        key = "errors" if word.startswith("error") else word
        if key in counts:
            counts[key] += int(number)
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        usage="%(prog)s TESTS [options] [-- PYTEST_ARGS...]",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("tests", type=Path, help="psycopg checkout or extract, or its tests/")
    parser.add_argument("--target", choices=("psycopg_pool", "pgpoolkit"), default="pgpoolkit")
    parser.add_argument("--dsn", help="server to test against (default: a TemporaryPostgres)")
    parser.add_argument(
        "--compat-module",
        default="pgpoolkit.compat",
        help="module the shim re-exports with --target pgpoolkit (default: %(default)s)",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="per test, in seconds")
    parser.add_argument(
        "--max-time", type=float, default=1200.0, help="kill pytest after this many seconds"
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    pytest_args = argv[split + 1 :]
    root = find_root(args.tests)
    if not (root / "tools" / "pproxy_fix.py").is_file():
        print(f"warning: no {root}/tools/pproxy_fix.py: the proxy tests will fail", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="psycopg-pool-suite-") as tmp:
        env = dict(os.environ)
        if args.target == "pgpoolkit":
            write_shim(Path(tmp), args.compat_module)
            for var in ("PYTHONPATH", "MYPYPATH"):
                env[var] = os.pathsep.join(filter(None, [tmp, env.get(var)]))
        # Fail early (rather than in every test) if the shim or the target can't be imported.
        check = _PREFLIGHT.format(expected=EXPECTED)
        found = subprocess.run([sys.executable, "-c", check], env=env, cwd=tmp, check=False)
        if found.returncode:
            print(f"cannot import psycopg_pool for --target {args.target}", file=sys.stderr)
            return 2
        ini = Path(tmp) / "pytest.ini"
        ini.write_text(_PYTEST_INI)
        command = [sys.executable, "-m", "pytest", str(root / "tests" / "pool")]
        command += ["-c", str(ini), f"--rootdir={root}", "-o", f"cache_dir={tmp}/cache"]
        command += ["-p", "no:randomly", "-p", "no:asyncio", "-p", "no:benchmark"]
        if importlib.util.find_spec("pytest_timeout"):
            command.append(f"--timeout={args.timeout:g}")
        command += pytest_args
        with server(args.dsn) as dsn:
            env["PSYCOPG_TEST_DSN"] = dsn
            env.setdefault("COLUMNS", "200")  # pytest's short summary: don't cut the reasons
            # Like `tee`: show pytest's output as it comes, and keep it for the counts.
            proc = subprocess.Popen(
                command, cwd=root, env=env, stdout=subprocess.PIPE, text=True, errors="replace"
            )
            # A pool that leaves threads behind can hang pytest's exit: kill it eventually.
            watchdog = threading.Timer(args.max_time, proc.kill)
            watchdog.start()
            assert proc.stdout is not None
            output = []
            try:
                for line in proc.stdout:
                    sys.stdout.write(line)
                    output.append(line)
                status = proc.wait()
            finally:
                watchdog.cancel()
            if status == -signal.SIGKILL:
                print(f"\npytest killed after --max-time={args.max_time:g}s", file=sys.stderr)
                status = 1

    counts = summarize("".join(output))
    print(
        f"psycopg_pool suite against {args.target}: {counts['passed']} passed, "
        f"{counts['failed']} failed, {counts['skipped']} skipped, {counts['errors']} errors"
    )
    return status


if __name__ == "__main__":
    sys.exit(main())
