"""The private parts of psycopg that pgpoolkit relies on (all used from ``_psycopg.py``, the
settings fast path of ``transaction_client.py`` and the cursors' ``_conn``): this fails loudly,
naming what moved, on a psycopg release that changed them."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import BaseConnection

CONNECTION_ATTRIBUTES = [
    "_prepared",
    "_notice_handlers",
    "_notify_handlers",
    "_autocommit",
    "_isolation_level",
    "_read_only",
    "_deferrable",
    "_begin_statement",
    "_adapters",
    "_closed",
    "_pipeline",
]
CONNECTION_METHODS = [
    "_check_connection_ok",
    "_set_autocommit_gen",
    "_notice_handler",
    "_notify_handler",
]


@pytest.mark.parametrize("cls", [psycopg.Connection, psycopg.AsyncConnection])
def test_connection_internals(cls: type[BaseConnection[object]]) -> None:
    for name in CONNECTION_METHODS:
        assert callable(getattr(cls, name, None)), f"psycopg {psycopg.__version__}: {name} moved"


def test_instance_internals(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        # (_notifies_backlog, used when present, came with a later psycopg 3.2 release)
        missing = [name for name in CONNECTION_ATTRIBUTES if not hasattr(conn, name)]
        assert not missing, f"psycopg {psycopg.__version__}: {missing} moved"
        prepared = conn._prepared
        for name in ("prepare_threshold", "prepared_max", "clear", "_to_flush"):
            assert hasattr(prepared, name), f"PrepareManager.{name} moved"
        pgconn = conn.pgconn
        handlers = (pgconn.notice_handler, pgconn.notify_handler)
        assert all(callable(h) for h in handlers), "PGconn's handlers are not readable"
        cur = conn.cursor()
        assert cur._conn is conn, "Cursor._conn moved"
        adapters = conn.adapters
        assert hasattr(adapters, "register_loader")


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_clients_copied_from_a_prototype_share_no_mutable_state(dsn: str, mode: str) -> None:
    """Clients are copies of a per-class prototype (_psycopg.ClientPrototype): two clients
    share no list, dict, set, deque or lock, but for the empty notifications backlog (never
    appended to) and the prepared-statement manager of a client holding no server connection;
    a notification goes to its own client's backlog only."""
    from collections import deque

    from pgpoolkit import Pool
    from pgpoolkit._psycopg import _SHARED_BACKLOG

    with Pool(dsn, mode=mode, min_size=2, max_size=2) as pool:
        c1, c2 = pool.connect(), pool.connect()
        for name, value in c1.__dict__.items():
            if isinstance(value, (list, dict, set, deque, bytearray)) or "lock" in name:
                shared = value is c2.__dict__[name]
                assert not shared or value is _SHARED_BACKLOG, f"{name} is shared"
        assert c1.lock is not c2.lock
        c1.add_notice_handler(lambda diag: None)
        assert not c2._notice_handlers
        if mode == "session":
            c1.autocommit = c2.autocommit = True
            c1.execute("LISTEN pgpk_proto")
            c2.execute("NOTIFY pgpk_proto, 'x'")
            c1.execute("SELECT 1")  # the notification arrives with this
            backlog = getattr(c1, "_notifies_backlog", None)
            if backlog is not None:  # psycopg 3.2.x before the backlog: handlers only
                assert [n.payload for n in backlog] == ["x"]
                assert not _SHARED_BACKLOG
                assert getattr(c2, "_notifies_backlog", None) is _SHARED_BACKLOG
        c1.close()
        c2.close()
