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
BENCH = ROOT / "benchmarks" / "bench_checkout.py"
BENCH_MODES = ROOT / "benchmarks" / "bench_modes.py"
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
    from pgpoolkit.__main__ import main

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0


def test_benchmark_smoke_table(dsn: str) -> None:
    p = run(
        str(BENCH),
        *shlex.split("--rounds 1 --seconds 0.1 --warmup 0.02 --threads 1 --select1 1 --pin"),
        "--dsn",
        dsn,
        timeout=90,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    titles = ["checkout, 1 thread", "checkout-asyncio, 1 task", "select1, 1 thread"]
    titles.append("select1-asyncio, 1 task")
    if len(os.sched_getaffinity(0)) > 1:
        titles += [f"{title}, pinned to 1 CPU" for title in titles[:2]]
    for title in titles:
        assert f"\n{title}\n" in out, out
    header = [line for line in out.splitlines() if "ops/s" in line and "p50 us" in line]
    assert len(header) == len(titles)
    for contender in (
        "pgpoolkit getconn/putconn",
        "pgpoolkit connection()",
        "psycopg_pool getconn/putconn",
        "psycopg_pool connection()",
        "raw psycopg (1 conn per thread)",
        "raw psycopg (1 conn per task)",
    ):
        assert contender in out
    assert "vs psycopg_pool getconn/putconn" in out
    assert "vs raw psycopg (1 conn per thread)" in out
    # the checkout targets, API for API, for every checkout scenario
    target_lines = [
        line for line in out.splitlines() if "x psycopg_pool's time per checkout" in line
    ]
    assert len(target_lines) == 2 * (len(titles) - 2)
    assert all(line.split()[0] in ("met", "MISSED") for line in target_lines)


def test_benchmark_smoke_json(dsn: str) -> None:
    p = run(
        str(BENCH),
        *shlex.split("--rounds 2 --seconds 0.1 --warmup 0 --select1 2 --json"),
        "--only",
        "select1, ",
        "--dsn",
        dsn,
        timeout=90,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    doc = json.loads(p.stdout)
    assert doc["meta"]["rounds"] == 2
    results = doc["results"]
    assert {r["scenario"] for r in results} == {"select1, 2 threads"}
    assert len(results) == 3
    for r in results:
        assert len(r["rounds"]) == 2
        assert r["ops_per_s"] > 0
        assert 0 < r["p50_us"] <= r["p99_us"]
        assert r["ratio_kind"] == "throughput"
        assert r["baseline"] == "raw psycopg (1 conn per thread)"
    raw = next(r for r in results if r["contender"] == r["baseline"])
    assert raw["ratio"] == 1.0


def test_benchmark_unreachable_dsn_exits_2() -> None:
    p = run(
        str(BENCH),
        "--dsn",
        f"host=127.0.0.1 port={closed_port()} connect_timeout=3",
        timeout=30,
    )
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    assert "can't connect" in p.stderr


def test_bench_modes_smoke_table(dsn: str) -> None:
    p = run(
        str(BENCH_MODES),
        *shlex.split(
            "--rounds 1 --seconds 0.1 --many-seconds 0.2 --warmup 0.02 --threads 1 --tasks 2 "
            "--many-threads 12 --many-tasks 30 --pgbouncer off"
        ),
        "--dsn",
        dsn,
        timeout=120,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    out = p.stdout
    titles = (
        "per-statement, 1 thread",
        "per-statement asyncio, 2 tasks",
        "many-clients, 12 threads",
        "many-clients asyncio, 30 tasks",
    )
    for title in titles:
        assert f"\n{title}\n" in out, out
    lines = out.splitlines()
    assert len([line for line in lines if "time/session" in line and "cpu/session" in line]) == 2
    assert len([line for line in lines if "server conns" in line]) == 2
    for contender in (
        "raw psycopg",
        "pgpoolkit session",
        "pgpoolkit transaction",
        "pgpoolkit statement",
        "pgpoolkit transaction, conn.autocommit=True",
        "raw psycopg, + commit",
        "pgpoolkit session, + commit",
        "pgpoolkit transaction, + commit",
    ):
        rows = [line for line in lines if line.startswith(f"  {contender}  ")]
        assert len(rows) == 2, (contender, out)  # threads and asyncio
    # the session contenders are their own baseline; raw psycopg is its own raw baseline
    for line in lines:
        if line.startswith(("  pgpoolkit session  ", "  pgpoolkit session, + commit  ")):
            assert line.split()[-3] == "1.00", line
        if line.startswith(("  raw psycopg  ", "  raw psycopg, + commit  ")):
            assert line.split()[-1] == "1.00", line
    # many clients: every pool stays within its 10 server connections, and was seen using them
    many = [line for line in lines if "persistent clients" in line or "per unit" in line]
    many = [line for line in many if line.startswith("  pgpoolkit") or "psycopg_pool," in line]
    assert len(many) == 4, out
    for line in many:
        peak = int(line.split("peak ")[1].split()[0])
        assert 1 <= peak <= 10, line
    assert "pgbouncer transaction" not in out
    assert "pgbouncer: skipped (--pgbouncer off)" in out
    target = [line for line in lines if "x session (" in line]
    assert len(target) == 4, out  # transaction and transaction + commit, threads and asyncio


# -- python -m pgpoolkit bench, and the suite's scripts -------------------------------------------

#: every group of the suite, and the scenario titles its --smoke preset runs
SMOKE_TITLES = (
    "checkout, 2 threads",
    "checkout-asyncio, 2 tasks",
    "select1, 2 threads",
    "select1-asyncio, 3 tasks",
    "per-statement, 2 threads",
    "per-statement asyncio, 3 tasks",
    "txn, 3 threads",
    "many-clients, 12 threads",
    "many-clients asyncio, 30 tasks",
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
        "-m",
        "pgpoolkit",
        "bench",
        "--smoke",
        "--dsn",
        dsn,
        "--json",
        str(out_json),
        timeout=60,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    out, err = p.stdout, p.stderr
    # progress: a line per scenario, numbered, with its contenders
    progress = [line for line in err.splitlines() if line.startswith("[")]
    pinned = len(os.sched_getaffinity(0)) > 1
    expected = len(SMOKE_TITLES) + (2 if pinned else 0)
    assert len(progress) == expected, err
    assert progress[0].startswith(f"[ 1/{expected}] checkout, 2 threads ... 4 contenders")
    # a table per scenario
    for title in SMOKE_TITLES:
        assert f"\n{title}\n" in out, out
    if pinned:
        assert "\ncheckout, 2 threads, pinned to 1 CPU\n" in out
    # the targets summary: every target of the issue that this preset measures
    summary = out[out.index("targets (issue 4), as measured in this run:") :]
    for name in (
        "checkout, 2 threads: getconn/putconn",
        "checkout-asyncio, 2 tasks: connection()",
        "per-statement, 2 threads: transaction",
        "many-clients, 12 threads: pgpoolkit transaction vs PgBouncer",
        "spike, min_size=1: pgpoolkit Pool (threads)",
        "spike, min_size=1: pgpoolkit AsyncPool (asyncio)",
        "connect-per-request, 1 thread: pgpoolkit connection()",
        "memory, 500 idle clients: pgpoolkit Pool",
    ):
        lines = [line for line in summary.splitlines() if name in line]
        assert lines, (name, summary)
        assert lines[0].split()[0] in ("met", "MISSED", "n/a"), lines[0]
    assert " met, " in summary and "MISSED" in summary
    # the JSON has every result and the targets
    doc = json.loads(out_json.read_text())
    assert doc["meta"]["preset"] == "smoke"
    assert {r["scenario"] for r in doc["results"]} >= set(SMOKE_TITLES)
    assert all(r["ops_per_s"] > 0 for r in doc["results"])
    assert {t["name"] for t in doc["targets"]} >= {"memory, 500 idle clients: pgpoolkit Pool"}
    spike = [r for r in doc["results"] if r["group"] == "spike"]
    assert len(spike) == 4
    for r in spike:  # 10 requests on a pool of max_size 10
        assert 1 <= r["connections_opened_max"] <= 10, r
        assert r["p50_us"] >= 5000  # each request holds its connection 5 ms
    memory = [r for r in doc["results"] if r["group"] == "memory"]
    assert len(memory) == 2
    for r in memory:
        assert 0 < r["bytes_per_client"] < 100_000, r
        assert r["memory_rounds"][0]["clients_open"] >= 500
        assert r["memory_rounds"][0]["servers"] <= 5
    # the txn table's schema is gone
    assert schemas(dsn) == before


def _fake_missing_matplotlib(tmp_path: Path) -> dict[str, str]:
    """An environment in which 'import matplotlib' fails."""
    fake = tmp_path / "fake" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no matplotlib here')\n")
    return {"PYTHONPATH": str(tmp_path / "fake")}


def test_bench_chart_or_a_note_without_matplotlib(dsn: str, tmp_path: Path) -> None:
    chart = tmp_path / "chart.png"
    args = ("-m", "pgpoolkit", "bench", "--smoke", "--only", "memory", "--dsn", dsn)
    p = run(*args, "--chart", str(chart), env=_fake_missing_matplotlib(tmp_path), timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    notes = [line for line in p.stderr.splitlines() if "chart" in line]
    assert notes == ["no chart: matplotlib is not installed (pip install matplotlib)"]
    assert not chart.exists()
    assert "targets (issue 4)" in p.stdout  # it went on
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    p = run(*args, "--chart", str(chart), timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"chart written to {chart}" in p.stderr
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_json_to_stdout(dsn: str) -> None:
    p = run(
        "-m",
        "pgpoolkit",
        "bench",
        "--smoke",
        "--only",
        "connect",
        "--json",
        "-",
        "--dsn",
        dsn,
        timeout=60,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    doc = json.loads(p.stdout)  # only JSON on stdout: the tables went to stderr
    assert [r["contender"] for r in doc["results"]] == [
        "new psycopg connection per unit",
        "pgpoolkit connection()",
        "pgpoolkit.connect() + close()",
        "psycopg_pool connection()",
    ]
    assert doc["targets"][0]["name"] == "connect-per-request, 1 thread: pgpoolkit connection()"
    assert "targets (issue 4)" in p.stderr


def test_bench_without_the_benchmarks_directory_exits_2(tmp_path: Path) -> None:
    """Installed from a wheel: the package without the checkout's benchmarks/."""
    lib = tmp_path / "lib"
    shutil.copytree(ROOT / "src" / "pgpoolkit", lib / "pgpoolkit")
    p = subprocess.run(
        [sys.executable, "-m", "pgpoolkit", "bench", "--dsn", "host=127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(lib)},
        check=False,
    )
    assert p.returncode == 2, p.stdout + p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("pgpoolkit bench: error: the benchmarks are not available")
    assert "checkout" in lines[0]


def test_bench_unreachable_dsn_exits_2_without_traceback() -> None:
    p = run(
        "-m",
        "pgpoolkit",
        "bench",
        "--dsn",
        f"host=127.0.0.1 port={closed_port()} password=hunter2-secret connect_timeout=3",
        timeout=30,
    )
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
    assert "--smoke" not in p.stdout  # for CI, not documented
    p = run("-m", "pgpoolkit", "bench", "--quick", "--full", timeout=30)
    assert p.returncode == 2
    assert "not allowed with argument" in p.stderr


def test_bench_txn_script_sql_table(dsn: str) -> None:
    """bench_txn.py with the table made in SQL (no pgbench) and without PgBouncer."""
    before = schemas(dsn)
    p = run(
        str(BENCHMARKS / "bench_txn.py"),
        *shlex.split(
            "--rounds 1 --seconds 0.1 --warmup 0 --threads 2 --pgbench off --pgbouncer off"
        ),
        "--dsn",
        dsn,
        timeout=90,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    assert "table made with SQL" in out
    assert "\ntxn, 2 threads\n" in out
    rows = {
        line.split("  ")[1].strip(): line
        for line in out.splitlines()
        if line.startswith(("  raw", "  pgpoolkit", "  psycopg_pool"))
    }
    assert set(rows) == {
        "raw psycopg (1 conn per thread)",
        "pgpoolkit session, connection() per unit",
        "pgpoolkit transaction, persistent clients",
        "psycopg_pool, connection() per unit",
    }
    for name, line in rows.items():
        peak = int(line.split("peak ")[1].split()[0])
        assert 1 <= peak <= (2 if name.startswith("raw") else 10), line
    assert "pgbouncer: skipped (--pgbouncer off)" in out
    assert schemas(dsn) == before


def test_bench_spike_script_json(dsn: str) -> None:
    p = run(
        str(BENCHMARKS / "bench_spike.py"),
        *shlex.split(
            "--rounds 1 --no-warmup --min-size 0 --requests 8 --work-ms 5 --connect-ms 40 --json"
        ),
        "--dsn",
        dsn,
        timeout=90,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    doc = json.loads(p.stdout)
    results = doc["results"]
    assert [r["contender"] for r in results] == [
        "pgpoolkit Pool (threads)",
        "psycopg_pool ConnectionPool (threads)",
        "pgpoolkit AsyncPool (asyncio)",
        "psycopg_pool AsyncConnectionPool (asyncio)",
    ]
    for r in results:
        # min_size=0: nothing was open, so every request waited for a 40 ms connect at least
        assert r["connections_opened"] >= 1
        assert r["connections_opened_max"] <= 50
        assert r["rounds"][0]["ops"] == 8
        assert r["p50_us"] >= 40_000 + 5_000, r
        assert r["ideal_p50_ms"] >= 45.0, r
        assert r["hold_ms"] >= 5.0
    assert len(doc["targets"]) == 2


def test_bench_connect_and_memory_scripts(dsn: str) -> None:
    p = run(
        str(BENCHMARKS / "bench_connect.py"),
        *shlex.split("--rounds 1 --seconds 0.1 --warmup 0 --threads 1"),
        "--dsn",
        dsn,
        timeout=60,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "\nconnect-per-request, 1 thread\n" in p.stdout
    assert "vs new psycopg connection per unit" in p.stdout
    assert "connect-per-request, 1 thread: pgpoolkit connection()" in p.stdout
    p = run(
        str(BENCHMARKS / "bench_memory.py"),
        *shlex.split("--rounds 1 --clients 300 --json"),
        "--dsn",
        dsn,
        timeout=60,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    doc = json.loads(p.stdout)
    assert len(doc["results"]) == 2
    for r in doc["results"]:
        assert 0 < r["bytes_per_client"] < 100_000
        assert r["rss_bytes_per_client"] is not None  # measured in a child process
        assert r["rounds"][0]["ops"] == 300
    assert doc["notes"] == []


def test_suite_script_only_filter_and_unknown_filter(dsn: str) -> None:
    p = run(
        str(BENCHMARKS / "suite.py"),
        "--smoke",
        "--only",
        "select1-asyncio",
        "--dsn",
        dsn,
        timeout=60,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "\nselect1-asyncio, 3 tasks\n" in p.stdout
    assert "\nselect1, 2 threads\n" not in p.stdout
    p = run(str(BENCHMARKS / "suite.py"), "--smoke", "--only", "nothing-like-it", "--dsn", dsn)
    assert p.returncode == 2
    assert "no scenario name contains 'nothing-like-it'" in p.stderr


def test_fifo_ideal_and_pinning_helpers() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        bench_spike = importlib.import_module("bench_spike")
        harness = importlib.import_module("harness")
    finally:
        sys.path.remove(str(BENCHMARKS))
    # one connection at 0: the requests queue behind each other
    assert bench_spike.fifo_latencies([0.0], 3, 1.0) == [1.0, 2.0, 3.0]
    # a second connection at 1.5 takes the third request
    assert bench_spike.fifo_latencies([0.0, 1.5], 3, 1.0) == [1.0, 2.0, 2.5]
    assert bench_spike.fifo_latencies([], 3, 1.0) == []
    if not harness.can_pin():
        return
    before = os.sched_getaffinity(0)
    seen: list[set[int]] = []

    @contextlib.contextmanager
    def setup() -> Iterator[list[Any]]:
        seen.append(os.sched_getaffinity(0))
        yield []

    scenario = harness.pinned(harness.Scenario("x", setup, ratio="time"))
    assert scenario.name == "x, pinned to 1 CPU"
    with scenario.setup():
        assert len(os.sched_getaffinity(0)) == 1
    assert seen == [{min(before)}]
    assert os.sched_getaffinity(0) == before


def test_bench_unwritable_output_fails_before_running(dsn: str) -> None:
    p = run(
        "-m",
        "pgpoolkit",
        "bench",
        "--smoke",
        "--dsn",
        dsn,
        "--json",
        "/nonexistent-pgpoolkit-dir/out.json",
        timeout=30,
    )
    assert p.returncode == 2, p.stdout + p.stderr
    assert p.stderr.strip().splitlines() == [
        "pgpoolkit bench: error: can't write /nonexistent-pgpoolkit-dir/out.json: "
        "/nonexistent-pgpoolkit-dir is not a writable directory"
    ]
