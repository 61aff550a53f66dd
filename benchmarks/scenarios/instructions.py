"""instructions: machine instructions per unit in the client process, counted by valgrind
(cachegrind) in a child Python, once idle and once for N units; the difference per unit does
not move with the machine's noise as throughput does. Not in the default run: ``--only
instructions`` (about 15 s per variant; needs ``apt-get install valgrind``)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from contextlib import ExitStack

from harness import Contender, Context, Sample, Scenario, scenario

ORDER = 90
DEFAULT = False
VARIANTS = {
    "raw psycopg": "raw.execute(Q).fetchone()",
    "pgpoolkit getconn/putconn": "c = pk.getconn(); c.execute(Q).fetchone(); pk.putconn(c)",
    "pgpoolkit connection()": "with pk.connection() as c: c.execute(Q).fetchone()",
    "psycopg_pool connection()": "with pp.connection() as c: c.execute(Q).fetchone()",
    "pgpoolkit session client": "session.execute(Q).fetchone()",
    "pgpoolkit transaction client": "transaction.execute(Q).fetchone()",
    "pgpoolkit getconn/putconn, no query": "pk.putconn(pk.getconn())",
    "psycopg_pool getconn/putconn, no query": "pp.putconn(pp.getconn())",
    "pgpoolkit connection(), no query": "with pk.connection(): pass",
    "psycopg_pool connection(), no query": "with pp.connection(): pass",
}
CHILD = """
import sys, psycopg, psycopg_pool, pgpoolkit
dsn, n = sys.argv[1], int(sys.argv[2])
kw = {"autocommit": True}
raw = psycopg.connect(dsn, **kw)
pk = pgpoolkit.Pool(dsn, min_size=2, max_size=2, kwargs=kw)
pk_tx = pgpoolkit.Pool(dsn, min_size=2, max_size=2, kwargs=kw, mode="transaction")
pp = psycopg_pool.ConnectionPool(dsn, min_size=2, max_size=2, kwargs=kw)
for p in (pk, pk_tx, pp):
    p.wait()
session, transaction, Q = pk.connect(), pk_tx.connect(), "SELECT 1"
def unit():
    %s
for _ in range(200 + n):
    unit()
"""


def count(dsn: str, code: str, units: int) -> tuple[int, int]:
    """Instructions and first-level instruction-cache misses of the child doing ``units``."""
    argv = ["valgrind", "--tool=cachegrind", "--cache-sim=yes", "--cachegrind-out-file=/dev/null"]
    python = os.path.realpath(sys.executable)  # not a wrapper script
    done = subprocess.run(
        [*argv, python, "-c", CHILD % code, dsn, str(units)],
        capture_output=True,
        text=True,
        check=False,
    )
    found = [re.search(rf"{k}\s+(?:refs|misses):\s+([\d,]+)", done.stderr) for k in ("I", "I1")]
    if done.returncode != 0 or not all(found):
        raise RuntimeError(f"valgrind failed: {' '.join(done.stderr.splitlines()[-3:])}")
    return tuple(int(m[1].replace(",", "")) for m in found if m)  # type: ignore[return-value]


def instructions(ctx: Context, units: int) -> Scenario:
    def build(stack: ExitStack) -> list[Contender]:
        def contender(name: str, code: str) -> Contender:
            def run(_: float) -> Sample:
                idle, busy = count(ctx.dsn, code, 0), count(ctx.dsn, code, units)
                per_unit = {
                    "instructions": (busy[0] - idle[0]) / units,
                    "I1 misses": (busy[1] - idle[1]) / units,
                }
                return Sample(units, 1.0, [], per_unit)

            return Contender(name, run)

        return [contender(name, code) for name, code in VARIANTS.items()]

    return scenario(
        "instructions per unit (valgrind)",
        "time",
        0.0,
        build,
        rounds=1,
        warmup=False,
        description=f"{units} units; client process only; ops/s and latencies not meaningful",
    )


def scenarios(ctx: Context) -> list[Scenario]:
    if shutil.which("valgrind") is None:
        ctx.note("instructions: valgrind is not installed (apt-get install -y valgrind)")
        return []
    return [instructions(ctx, ctx.pick(2000, 2000, 50))]
