"""A custom pooling policy: transaction pooling that refuses LISTEN.

PGPOOLKIT_DSN="host=127.0.0.1 dbname=postgres user=postgres" python examples/custom_policy.py
"""

from __future__ import annotations

import os

import pgpoolkit
from pgpoolkit import Action, ClientState, Event

#: the server: a libpq connection string (PGHOST, PGUSER... fill in what it leaves out)
DSN = os.environ.get("PGPOOLKIT_DSN", "dbname=postgres")


class NoListenTransactionPolicy(pgpoolkit.TransactionPolicy):
    """Transaction pooling; LISTEN belongs in a session-mode pool, so it is refused here."""

    name = "transaction-no-listen"
    way_out = "LISTEN from a session-mode pool"

    def decide(self, state: ClientState, event: Event, detail: str = "") -> Action:
        if event is Event.SESSION_STATE and "LISTEN" in detail:
            return Action.REFUSE
        return super().decide(state, event, detail)


def main(dsn: str) -> None:
    policy = NoListenTransactionPolicy()
    with (
        pgpoolkit.Pool(dsn, mode=policy, min_size=1, max_size=2) as pool,
        pool.connection() as conn,
    ):
        conn.autocommit = True
        print(conn.execute("SELECT 'transactions work'").fetchone())
        try:
            conn.execute("LISTEN jobs")
        except pgpoolkit.PolicyViolation as ex:
            print("refused:", ex)


if __name__ == "__main__":
    main(DSN)
