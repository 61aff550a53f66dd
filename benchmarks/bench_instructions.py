"""Machine instructions per unit of work, counted by valgrind: the hot path without the noise.

    python benchmarks/bench_instructions.py [--dsn DSN] [--units N] [--only TEXT] [--json]

Throughput on a shared 2-core virtual machine moves by 10-30% from one run to the next, which
hides any change to the pool's hot path smaller than that. Instructions do not move: each
variant below runs in a child Python under ``valgrind --tool=cachegrind`` twice, once doing
nothing and once doing ``--units`` units, and the difference divided by the units is what one
unit executes in the client process (the server is not counted). The count includes the
psycopg, asyncio and kernel-interface code a unit runs, so a pool's overhead is its count minus
raw psycopg's. Cachegrind also simulates the CPU caches; its first-level instruction-cache
misses per unit are printed beside the count.

Variants (each one SELECT 1 per unit unless it says "no query"):

- raw psycopg: ``conn.execute()`` on one connection;
- pgpoolkit getconn/putconn, pgpoolkit connection(), psycopg_pool connection();
- pgpoolkit session client, pgpoolkit transaction client: ``client.execute()`` on one pooled
  connection held open (transaction mode binds and releases around each statement);
- the four checkouts with no query (the checkout and return alone).

Needs valgrind (``apt-get install valgrind``); without it the script says so and exits 2. About
15 seconds per variant. Not part of ``python -m pgpoolkit bench``: see docs/performance.md for
what it showed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from contextlib import ExitStack

from _common import SetupError, add_run_arguments, connect_check, server_dsn

VARIANTS = {
    "raw psycopg": "raw",
    "pgpoolkit getconn/putconn": "pk_getconn",
    "pgpoolkit connection()": "pk_connection",
    "psycopg_pool connection()": "pp_connection",
    "pgpoolkit session client": "pk_session_client",
    "pgpoolkit transaction client": "pk_transaction_client",
    "pgpoolkit getconn/putconn, no query": "pk_getconn_noquery",
    "psycopg_pool getconn/putconn, no query": "pp_getconn_noquery",
    "pgpoolkit connection(), no query": "pk_connection_noquery",
    "psycopg_pool connection(), no query": "pp_connection_noquery",
}

#: the child: sets up every pool (so that both runs of a variant do the same setup), warms the
#: chosen unit up, then runs it N times
CHILD = r"""
import sys
import psycopg, psycopg_pool, pgpoolkit
dsn, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
kw = {"autocommit": True}
raw = psycopg.connect(dsn, **kw)
pk = pgpoolkit.Pool(dsn, min_size=2, max_size=2, kwargs=kw)
pk_tx = pgpoolkit.Pool(dsn, min_size=2, max_size=2, kwargs=kw, mode="transaction")
pp = psycopg_pool.ConnectionPool(dsn, min_size=2, max_size=2, kwargs=kw)
for pool in (pk, pk_tx, pp):
    pool.wait()
session_client, transaction_client = pk.connect(), pk_tx.connect()
Q = "SELECT 1"

def raw_():
    raw.execute(Q).fetchone()
def pk_getconn():
    c = pk.getconn(); c.execute(Q).fetchone(); pk.putconn(c)
def pk_connection():
    with pk.connection() as c:
        c.execute(Q).fetchone()
def pp_connection():
    with pp.connection() as c:
        c.execute(Q).fetchone()
def pk_session_client():
    session_client.execute(Q).fetchone()
def pk_transaction_client():
    transaction_client.execute(Q).fetchone()
def pk_getconn_noquery():
    pk.putconn(pk.getconn())
def pp_getconn_noquery():
    pp.putconn(pp.getconn())
def pk_connection_noquery():
    with pk.connection():
        pass
def pp_connection_noquery():
    with pp.connection():
        pass

unit = globals()["raw_" if name == "raw" else name]
for _ in range(200):
    unit()
for _ in range(n):
    unit()
"""

_IREFS = re.compile(r"I\s+refs:\s+([\d,]+)")
_I1_MISSES = re.compile(r"I1\s+misses:\s+([\d,]+)")


def count(python: str, dsn: str, variant: str, units: int) -> tuple[int, int]:
    """Instructions and I1 misses of the child doing ``units`` units."""
    proc = subprocess.run(
        [
            "valgrind",
            "--tool=cachegrind",
            "--cache-sim=yes",
            "--cachegrind-out-file=/dev/null",
            python,
            "-c",
            CHILD,
            dsn,
            variant,
            str(units),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    irefs, misses = _IREFS.search(proc.stderr), _I1_MISSES.search(proc.stderr)
    if proc.returncode != 0 or irefs is None or misses is None:
        tail = " ".join(proc.stderr.strip().splitlines()[-3:])
        raise SetupError(f"valgrind run of {variant!r} failed (exit {proc.returncode}): {tail}")
    return int(irefs[1].replace(",", "")), int(misses[1].replace(",", ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(
        parser, rounds=1, rounds_help="runs of each variant, the lowest kept", warmup=False
    )
    parser.add_argument(
        "--units", type=int, default=2000, help="units per counted run (default: 2000)"
    )
    parser.add_argument("--only", metavar="TEXT", help="run only the variants whose name has TEXT")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("bench_instructions: valgrind is not installed (apt-get install valgrind)")
        return 2
    names = [name for name in VARIANTS if args.only is None or args.only in name]
    # the real interpreter: valgrind must not count a wrapper script (pyenv's shims)
    python = os.path.realpath(sys.executable)
    results = {}
    with ExitStack() as stack:
        try:
            dsn = server_dsn(stack, args.dsn, lambda line: print(line, file=sys.stderr))
            connect_check(dsn)
            for i, name in enumerate(names, 1):
                print(f"[{i}/{len(names)}] {name} ...", file=sys.stderr, flush=True)
                best: tuple[float, float] | None = None
                for _ in range(args.rounds):
                    base = count(python, dsn, VARIANTS[name], 0)
                    full = count(python, dsn, VARIANTS[name], args.units)
                    per_unit = (
                        (full[0] - base[0]) / args.units,
                        (full[1] - base[1]) / args.units,
                    )
                    best = per_unit if best is None or per_unit[0] < best[0] else best
                assert best is not None
                results[name] = best
        except SetupError as ex:
            print(f"bench_instructions: {ex}")
            return 2
    if args.json:
        found = {k: {"instructions": v[0], "i1_misses": v[1]} for k, v in results.items()}
        print(json.dumps(found))
        return 0
    raw = results.get("raw psycopg")
    print(f"\ninstructions per unit in the client process ({args.units} units, valgrind)")
    print(f"  {'variant':38s} {'instructions':>12s} {'I1 misses':>10s} {'vs raw':>8s}")
    for name, (irefs, misses) in results.items():
        extra = "" if raw is None or "no query" in name else f"{irefs - raw[0]:+8,.0f}"
        print(f"  {name:38s} {irefs:12,.0f} {misses:10,.0f} {extra:>8s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
