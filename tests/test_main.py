"""The command line (``python -m pgpoolkit``) and the benchmark harness, run as subprocesses."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks" / "bench_checkout.py"
BENCH_MODES = ROOT / "benchmarks" / "bench_modes.py"


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
    p = run("-m", "pgpoolkit", "demo", "--dsn", dsn, "--mode", mode, "--seconds", "1",
            "--clients", "20", "--tasks", "40", timeout=60)
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
        *shlex.split("--rounds 1 --seconds 0.2 --warmup 0.05 --threads 1"),
        "--dsn",
        dsn,
        timeout=90,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    for title in ("checkout, 1 thread", "checkout-asyncio, 1 task", "select1, 1 thread"):
        assert title in out
    header = [line for line in out.splitlines() if "ops/s" in line and "p50 us" in line]
    assert len(header) == 3
    for contender in (
        "pgpoolkit getconn/putconn",
        "pgpoolkit connection()",
        "psycopg_pool getconn/putconn",
        "psycopg_pool connection()",
        "raw psycopg (1 conn per thread)",
    ):
        assert contender in out
    assert "vs psycopg_pool getconn/putconn" in out
    assert "vs raw psycopg (1 conn per thread)" in out


def test_benchmark_smoke_json(dsn: str) -> None:
    p = run(
        str(BENCH),
        *shlex.split("--rounds 2 --seconds 0.1 --warmup 0 --threads 2 --only select1 --json"),
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
