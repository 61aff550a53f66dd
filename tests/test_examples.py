"""Every program in examples/ runs against the test server and prints what it promises.

Each runs as its own process, as a user would run it, with the server's DSN in PGPOOLKIT_DSN
(the one variable the examples read) and libpq's own defaults pointed nowhere, so that an example
that ignored PGPOOLKIT_DSN could not reach a server by accident.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

#: example -> (extra arguments, patterns its output must match, module it needs)
EXPECTED: dict[str, tuple[list[str], list[str], str | None]] = {
    "asyncio_app.py": ([], [r"^served 500 requests"], None),
    "callbacks.py": ([], [r"^work_mem after reset: (?!64MB)\S+$"], None),
    "custom_policy.py": (
        [],
        [r"transactions work", r"^refused: transaction-no-listen pooling mode does not allow"],
        None,
    ),
    "dropin_connect.py": ([], [r"^stored 100 records over 1 server connection\(s\)$"], None),
    "pool_manager.py": (
        [],
        [r"^Budget\(total=\d+", r"^refused: pool 'huge' asks for 10000", r"^\['web'\] True$"],
        None,
    ),
    "prometheus_metrics.py": (
        ["0.3", "0"],  # serve for 0.3 s on any free port
        [r'^pgpoolkit_statements_total\{mode="transaction",pool="web"\} [1-9]'],
        "prometheus_client",
    ),
    "quickstart.py": ([], [r"^sum: 9900$", r"^PoolStats\(name='quickstart'"], None),
    "threaded_worker.py": (
        [],
        [r"^200 jobs done once each: True$", r"^8 threads over at most 3 server connections$"],
        None,
    ),
    "transaction_mode.py": (
        [],
        [
            r"^sum: 49500$",
            r"^100 clients open",
            r"^\{'tz': 'Asia/Tokyo'\}$",
            r"^pinned clients: 1$",
            r"^pinned clients: 0$",
        ],
        None,
    ),
}


#: every program in examples/: one without an entry above must exit 0 and print something
EXAMPLE_NAMES = sorted(p.name for p in EXAMPLES.glob("*.py"))


def test_every_entry_names_an_example() -> None:
    assert set(EXPECTED) <= set(EXAMPLE_NAMES)


def run_example(path: Path, args: list[str], dsn: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update(
        PGPOOLKIT_DSN=dsn,
        PGHOST="/nonexistent-pgpoolkit-example",  # libpq's defaults lead nowhere
        PGPORT="1",
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p),
    )
    return subprocess.run(
        [sys.executable, str(path), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_example_runs(name: str, dsn: str) -> None:
    args, patterns, needs = EXPECTED.get(name, ([], [r"\S"], None))
    if needs is not None and importlib.util.find_spec(needs) is None:
        pytest.skip(f"{name} needs {needs}")
    result = run_example(EXAMPLES / name, args, dsn)
    assert result.returncode == 0, f"{name} exited {result.returncode}:\n{result.stderr}"
    for pattern in patterns:
        assert re.search(pattern, result.stdout, re.MULTILINE), (
            f"{name}: no line matches {pattern!r} in:\n{result.stdout}"
        )


def test_the_examples_read_the_variable() -> None:
    """An example connects where PGPOOLKIT_DSN says: a malformed one stops it at once."""
    result = run_example(EXAMPLES / "dropin_connect.py", [], "host='unterminated")
    assert result.returncode != 0
    assert "conninfo cannot be parsed" in result.stderr


def test_the_docs_show_every_example() -> None:
    """docs/examples.md embeds each program (the site shows its source)."""
    page = (ROOT / "docs" / "examples.md").read_text()
    missing = [name for name in EXAMPLE_NAMES if f'--8<-- "examples/{name}"' not in page]
    assert not missing, f"docs/examples.md does not show {missing}"
