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
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

# The submodules psycopg's tests/pool imports, and what from: `psycopg_pool.pool.ShrinkPool`,
# `psycopg_pool.pool_async.{ShrinkPool,WaitingClient}`, `psycopg_pool.base.AttemptWithBackoff`
# (reached as an attribute of the package), `psycopg_pool.sched.Scheduler`,
# `psycopg_pool.sched_async.AsyncScheduler`.
SUBMODULES = ("base", "pool", "pool_async", "sched", "sched_async")
# The top-level names the tests use (besides `__version__`).
PUBLIC_NAMES = (
    "AsyncConnectionPool",
    "AsyncNullConnectionPool",
    "ConnectionPool",
    "NullConnectionPool",
    "PoolClosed",
    "PoolTimeout",
    "TooManyRequests",
)

# The shim package. Its submodules re-export `<module>.<sub>` if that exists, else <module>
# (private names included); a name missing there fails only the tests that use it.
_INIT_TEMPLATE = '''\
"""psycopg_pool shim for psycopg's test suite, re-exporting {module} (generated)."""

from {module} import *  # noqa: F403
{imports}
try:
    from {module} import __version__ as __version__
except ImportError:
    from pgpoolkit import __version__ as __version__

from . import {submodules}
'''

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
    # "import X as X": explicit re-exports, for mypy --strict (tests/pool/test_module.py).
    imports = "".join(f"from {module} import {name} as {name}\n" for name in PUBLIC_NAMES)
    init = _INIT_TEMPLATE.format(module=module, imports=imports, submodules=", ".join(SUBMODULES))
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
    parser.add_argument("--timeout", type=float, default=60.0, help="per test, in seconds")
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
        check = "import psycopg_pool as p; print('psycopg_pool:', p.__file__, p.ConnectionPool)"
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
            # Like `tee`: show pytest's output as it comes, and keep it for the counts.
            proc = subprocess.Popen(
                command, cwd=root, env=env, stdout=subprocess.PIPE, text=True, errors="replace"
            )
            assert proc.stdout is not None
            output = []
            for line in proc.stdout:
                sys.stdout.write(line)
                output.append(line)
            status = proc.wait()

    counts = summarize("".join(output))
    print(
        f"psycopg_pool suite against {args.target}: {counts['passed']} passed, "
        f"{counts['failed']} failed, {counts['skipped']} skipped, {counts['errors']} errors"
    )
    return status


if __name__ == "__main__":
    sys.exit(main())
