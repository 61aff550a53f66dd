"""The command line (``python -m pgpoolkit``) and the benchmark harness, run as subprocesses."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"


def run(
    *args: str, timeout: float = 60.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "PGPOOLKIT_DSN"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=full_env,
        check=False,
    )


def closed_port() -> int:
    """A port on 127.0.0.1 nobody listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def demo_tables(dsn: str) -> list[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE 'pgpoolkit_demo_%'"
        ).fetchall()
    return [str(r[0]) for r in rows]


def test_demo_runs_and_summarizes(dsn: str) -> None:
    before = demo_tables(dsn)
    p = run(
        *shlex.split("-m pgpoolkit demo --seconds 1 --clients 12 --tasks 30 --max-size 3"),
        "--dsn",
        dsn,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    assert "Traceback" not in p.stderr
    assert "[1/2] 12 threads" in out
    assert "[2/2] 30 asyncio tasks" in out
    assert out.count("checkout wait: p50") == 2
    assert out.count("pool.stats(): requests") == 2
    # the peak seen in pg_stat_activity is reported against max_size, and within it
    peaks = [
        int(line.split("peak ")[1].split()[0])
        for line in out.splitlines()
        if "server connections: peak" in line
    ]
    assert len(peaks) == 2
    assert all(1 <= peak <= 3 for peak in peaks), out
    assert "(max_size 3)" in out
    assert "verdict: OK: 12 threads and 30 tasks ran" in out
    # the table it made is gone
    assert demo_tables(dsn) == before


def test_demo_unreachable_dsn_exits_2_without_traceback() -> None:
    p = run(
        "-m",
        "pgpoolkit",
        "demo",
        "--seconds",
        "1",
        "--dsn",
        f"host=127.0.0.1 port={closed_port()} user=someone password=hunter2-secret "
        "connect_timeout=3",
        timeout=30,
    )
    assert p.returncode == 2, p.stdout + p.stderr
    assert "Traceback" not in p.stderr + p.stdout
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("pgpoolkit demo: error: can't connect to ")
    assert "Connection refused" in lines[0] or "failed" in lines[0]
    assert "hunter2-secret" not in p.stdout + p.stderr
    assert "password=***" in lines[0]


def test_demo_url_password_is_masked() -> None:
    p = run(
        "-m",
        "pgpoolkit",
        "demo",
        "--seconds",
        "1",
        "--dsn",
        f"postgresql://someone:hunter2-secret@127.0.0.1:{closed_port()}/db?connect_timeout=3",
        timeout=30,
    )
    assert p.returncode == 2, p.stdout + p.stderr
    assert "hunter2-secret" not in p.stdout + p.stderr
    assert "Traceback" not in p.stderr


def test_demo_invalid_dsn_is_not_echoed() -> None:
    p = run("-m", "pgpoolkit", "demo", "--dsn", "host=x password=hunter2 secret", timeout=30)
    assert p.returncode == 2
    assert "hunter2" not in p.stdout + p.stderr
    assert "secret" not in p.stdout + p.stderr
    assert p.stderr.strip().startswith("pgpoolkit demo: error: the DSN is not in valid")
    assert "Traceback" not in p.stderr


def test_demo_without_postgres_binaries_exits_2() -> None:
    p = run(
        "-m",
        "pgpoolkit",
        "demo",
        "--seconds",
        "1",
        env={"PGPOOLKIT_PG_BINDIR": "/nonexistent/pgpoolkit-bindir"},
        timeout=30,
    )
    assert p.returncode == 2, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert "can't start a throwaway PostgreSQL" in lines[0]
    assert "initdb and pg_ctl" in lines[0]
    assert "--dsn" in lines[0]


@pytest.mark.parametrize("mode", ["transaction", "statement"])
def test_demo_in_every_mode(dsn: str, mode: str) -> None:
    p = run(
        "-m",
        "pgpoolkit",
        "demo",
        "--dsn",
        dsn,
        "--mode",
        mode,
        "--seconds",
        "1",
        "--clients",
        "20",
        "--tasks",
        "40",
        timeout=60,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"mode={mode}" in p.stdout or mode in p.stdout


def test_help_and_no_command() -> None:
    p = run("-m", "pgpoolkit", "--help", timeout=30)
    assert p.returncode == 0
    assert "demo" in p.stdout
    p = run("-m", "pgpoolkit", "demo", "--help", timeout=30)
    assert p.returncode == 0
    for option in ("--dsn", "--clients", "--seconds", "--max-size", "--mode"):
        assert option in p.stdout
    p = run("-m", "pgpoolkit", timeout=30)
    assert p.returncode == 2
    assert "usage: pgpoolkit" in p.stderr


def test_bad_arguments_exit_2() -> None:
    p = run("-m", "pgpoolkit", "demo", "--clients", "0", timeout=30)
    assert p.returncode == 2
    assert "--clients" in p.stderr
    assert "Traceback" not in p.stderr


def test_main_is_the_console_script_entry_point() -> None:
    """pyproject's ``pgpoolkit`` script names the CLI's main, which ``python -m`` runs too."""
    import re

    import pgpoolkit.__main__
    from pgpoolkit.cli import main

    found = re.search(
        r'^pgpoolkit = "([\w.]+):(\w+)"$', (ROOT / "pyproject.toml").read_text(), re.M
    )
    assert found is not None
    assert getattr(importlib.import_module(found[1]), found[2]) is main
    assert pgpoolkit.__main__.main is main
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0


SMOKE_TITLES = (
    "checkout, 2 threads",
    "checkout-asyncio, 2 tasks",
    "select1, 3 threads",
    "select1-asyncio, 3 tasks",
    "per-statement, 3 threads",
    "per-statement-asyncio, 3 tasks",
    "reset_always, 2 threads",
    "reset_always-asyncio, 2 tasks",
    "txn, 3 threads",
    "many-clients, 12 threads",
    "many-clients-asyncio, 30 tasks",
    "spike, min_size=1",
    "connect-per-request, 1 thread",
    "memory, 500 idle clients",
)


def schemas(dsn: str) -> set[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'pgpoolkit_bench_%'"
        ).fetchall()
    return {str(r[0]) for r in rows}


def test_bench_smoke_runs_every_scenario_and_summarizes_targets(dsn: str, tmp_path: Path) -> None:
    before = schemas(dsn)
    out_json = tmp_path / "bench.json"
    p = run(
        "-m", "pgpoolkit", "bench", "--smoke", "--dsn", dsn, "--json", str(out_json), timeout=90
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    out, err = p.stdout, p.stderr
    pinned = len(os.sched_getaffinity(0)) > 1
    titles = [*SMOKE_TITLES]
    if pinned:
        titles += [
            "checkout, 2 threads, pinned to 1 CPU",
            "checkout-asyncio, 2 tasks, pinned to 1 CPU",
        ]
    # progress: a line per scenario, numbered
    progress = [line for line in err.splitlines() if line.startswith("[")]
    assert len(progress) == len(titles), err
    assert progress[0].startswith(f"[1/{len(titles)}] checkout, 2 threads: ")
    # a table per scenario, with the figures the suite promises
    for title in titles:
        assert f"\n{title}\n" in out, out
    header = next(line for line in out.splitlines() if "contender" in line)
    for column in ("ops/s", "p50 us", "p99 us", "cpu us", "time/psycopg_pool"):
        assert column in header
    assert "x raw" in out and "time/session" in out and "time/default" in out
    # the targets of issue 11, every one of them, each with a verdict
    summary = out[out.index("issue 11 targets") :]
    verdicts = [line.split()[0] for line in summary.splitlines()[1:] if line.startswith("  ")]
    assert set(verdicts) <= {"met", "MISSED", "n/a"}
    for name in (
        "checkout, 1 thread: getconn/putconn",  # not run by --smoke: n/a
        "checkout-asyncio, 4 tasks, pinned to 1 CPU: connection()",
        "select1, 4 threads, session: pgpoolkit vs psycopg_pool",
        "select1-asyncio, 16 tasks: pgpoolkit vs raw",
        "per-statement, 4 threads: transaction vs session",
        "per-statement-asyncio, 16 tasks: transaction, + commit vs session",
        "many-clients, 200 threads: vs PgBouncer",
        "many-clients-asyncio, 1,000 tasks: vs PgBouncer",
        "spike, min_size=1, threads: pgpoolkit",
        "spike, min_size=1, asyncio: pgpoolkit",
        "memory per idle client, Pool",
        "memory per idle client, AsyncPool",
    ):
        lines = [line for line in summary.splitlines() if name in line]
        assert len(lines) == 1, (name, summary)
    assert [line.split()[0] for line in summary.splitlines() if "spike" in line] != ["n/a"] * 2
    # the JSON has every result and the targets
    doc = json.loads(out_json.read_text())
    assert doc["meta"]["preset"] == "smoke"
    assert {r["scenario"] for r in doc["results"]} == set(titles)
    assert all(r["ops_per_s"] > 0 and r["cpu_us"] > 0 for r in doc["results"])
    spike = [r for r in doc["results"] if r["scenario"] == "spike, min_size=1"]
    assert len(spike) == 4
    for r in spike:  # 10 requests on a pool of max_size 50
        assert 1 <= r["extra"]["conns opened"] <= 10, r
        assert r["p50_us"] >= 5000  # each request holds its connection 5 ms
    memory = [r for r in doc["results"] if r["scenario"].startswith("memory")]
    assert len(memory) == 2
    for r in memory:
        assert 0 < r["extra"]["bytes/client"] < 100_000, r
        assert r["extra"]["server conns"] <= 5
    many = [r for r in doc["results"] if r["scenario"].startswith("many-clients")]
    assert all(1 <= r["extra"]["server conns"] <= 10 for r in many), many
    # the txn table's schema is gone
    assert schemas(dsn) == before


def _fake_missing_matplotlib(tmp_path: Path) -> dict[str, str]:
    """An environment in which 'import matplotlib' fails."""
    fake = tmp_path / "fake" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no matplotlib here')\n")
    return {
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "fake"), os.environ.get("PYTHONPATH", "")])
    }


def test_bench_chart_or_a_note_without_matplotlib(dsn: str, tmp_path: Path) -> None:
    chart = tmp_path / "chart.png"
    args = ("-m", "pgpoolkit", "bench", "--smoke", "--only", "memory", "--dsn", dsn)
    p = run(*args, "--chart", str(chart), env=_fake_missing_matplotlib(tmp_path), timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    notes = [line for line in p.stderr.splitlines() if "chart" in line]
    assert notes == ["no chart: matplotlib is not installed (pip install 'pgpoolkit[chart]')"]
    assert not chart.exists()
    assert "issue 11 targets" in p.stdout  # it went on
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    p = run(*args, "--chart", str(chart), timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"chart: {chart}" in p.stderr
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_json_to_stdout_and_only(dsn: str) -> None:
    args = ("-m", "pgpoolkit", "bench", "--smoke", "--only", "connect-per", "--json", "-")
    p = run(*args, "--dsn", dsn, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    doc = json.loads(p.stdout)  # only JSON on stdout: the tables went to stderr
    assert [r["contender"] for r in doc["results"]] == [
        "new psycopg connection per unit",
        "pgpoolkit connection()",
        "pgpoolkit.connect() + close()",
        "psycopg_pool connection()",
    ]
    assert doc["results"][0]["ratios"] == {"new conn": 1.0}
    assert "\nconnect-per-request, 1 thread\n" in p.stderr
    p = run(*args[:5], "nothing-like-it", "--dsn", dsn, timeout=60)
    assert p.returncode == 2
    assert "no scenario matches --only 'nothing-like-it'" in p.stderr


def test_bench_finds_the_suite_from_the_current_directory_or_suite(tmp_path: Path) -> None:
    """Installed from a wheel, run elsewhere: no benchmarks/ unless --suite names one."""
    lib = tmp_path / "lib"
    shutil.copytree(ROOT / "src" / "pgpoolkit", lib / "pgpoolkit")
    env = {**os.environ, "PYTHONPATH": str(lib)}
    env.pop("PGPOOLKIT_BENCHMARKS", None)

    def bench(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "pgpoolkit", "bench", *args]
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=30, cwd=tmp_path, env=env, check=False
        )

    p = bench("--dsn", "host=127.0.0.1")
    assert p.returncode == 2, p.stdout + p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("pgpoolkit bench: error: no benchmark suite found at ")
    assert "--suite PATH" in lines[0]
    p = bench("--suite", str(BENCHMARKS), "--list")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "checkout: checkout, 1 thread" in p.stdout
    assert "instructions: " in p.stdout


def test_bench_unreachable_dsn_exits_2_without_traceback() -> None:
    dsn = f"host=127.0.0.1 port={closed_port()} password=hunter2-secret connect_timeout=3"
    p = run("-m", "pgpoolkit", "bench", "--dsn", dsn, timeout=30)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("pgpoolkit bench: error: can't connect")
    assert "hunter2-secret" not in p.stdout + p.stderr


def test_bench_help() -> None:
    p = run("-m", "pgpoolkit", "--help", timeout=30)
    assert "bench" in p.stdout
    p = run("-m", "pgpoolkit", "bench", "--help", timeout=30)
    assert p.returncode == 0
    for option in ("--dsn", "--quick", "--full", "--json", "--chart", "--pgbouncer", "--only"):
        assert option in p.stdout
    assert "--suite" in p.stdout
    assert "--smoke" not in p.stdout  # for CI, not documented
    p = run("-m", "pgpoolkit", "bench", "--quick", "--full", timeout=30)
    assert p.returncode == 2
    assert "not allowed with argument" in p.stderr


def test_bench_unwritable_output_fails_before_running(dsn: str) -> None:
    out = "/nonexistent-pgpoolkit-dir/out.json"
    p = run("-m", "pgpoolkit", "bench", "--smoke", "--dsn", dsn, "--json", out, timeout=30)
    assert p.returncode == 2, p.stdout + p.stderr
    assert p.stderr.strip().splitlines() == [
        f"pgpoolkit bench: error: can't write {out}: "
        "/nonexistent-pgpoolkit-dir is not a writable directory"
    ]


def test_harness_helpers() -> None:
    """The FIFO ideal of the spike, the per-round ratios, pinning."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spike = importlib.import_module("scenarios.spike")
        harness = importlib.import_module("harness")
    finally:
        sys.path.remove(str(BENCHMARKS))
    # one connection at 0: the requests queue behind each other
    assert spike.fifo([0.0], 3, 1.0) == [1.0, 2.0, 3.0]
    # a second connection at 1.5 takes the third request
    assert spike.fifo([0.0, 1.5], 3, 1.0) == [1.0, 2.0, 2.5]
    assert spike.fifo([], 3, 1.0) == []

    # two contenders, the second twice as fast per round: its time ratio is 0.5
    def fixed(ops: int) -> Any:
        return lambda seconds: harness.Sample(ops, 1.0, [1000] * ops, {"conns opened": ops})

    @contextlib.contextmanager
    def pair() -> Iterator[list[Any]]:
        yield [harness.Contender("slow", fixed(10)), harness.Contender("fast", fixed(20))]

    s = harness.Scenario("pair", pair, "time", 0.0, {"slow": "slow", "gone": "absent"})
    results = harness.run_scenario(s, rounds=3, warmup=0, dsn="", progress=lambda _: None)
    fast = harness.find(results, "pair", "fast")
    assert fast.ratio("slow") == 0.5 and fast.baselines == {"slow": "slow"}
    assert fast.extra("conns opened") == 20 and len(fast.rounds) == 3
    if not harness.can_pin():
        return
    before = os.sched_getaffinity(0)
    seen: list[set[int]] = []

    @contextlib.contextmanager
    def setup() -> Iterator[list[Any]]:
        seen.append(os.sched_getaffinity(0))
        yield []

    pinned = harness.pinned(harness.Scenario("x", setup, "time", 0.0))
    assert pinned.name == "x, pinned to 1 CPU"
    with pinned.setup():
        assert len(os.sched_getaffinity(0)) == 1
    assert seen == [{min(before)}]
    assert os.sched_getaffinity(0) == before


def test_a_new_scenario_is_a_file(dsn: str, tmp_path: Path) -> None:
    """benchmarks/README.md's example scenario, dropped into a copy of the suite, runs."""
    import re

    suite = tmp_path / "benchmarks"
    shutil.copytree(BENCHMARKS, suite, ignore=shutil.ignore_patterns("__pycache__"))
    readme = (BENCHMARKS / "README.md").read_text()
    found = re.search(r"## Adding a scenario.*?```python\n(.*?)```", readme, re.S)
    assert found is not None
    (suite / "scenarios" / "prepared.py").write_text(found[1])
    args = ("bench", "--suite", str(suite), "--smoke", "--only", "prepared", "--dsn", dsn)
    p = run("-m", "pgpoolkit", *args, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    for title in ("prepared, 4 threads", "prepared-asyncio, 4 tasks"):
        assert f"\n{title}\n" in p.stdout, p.stdout
    assert "x psycopg_pool" in p.stdout


def test_bench_invalid_dsn_is_not_echoed() -> None:
    p = run("-m", "pgpoolkit", "bench", "--dsn", "host=x password=hunter2 garbage", timeout=30)
    assert p.returncode == 2
    assert "not in valid libpq connection string" in p.stderr
    assert "hunter2" not in p.stdout + p.stderr
