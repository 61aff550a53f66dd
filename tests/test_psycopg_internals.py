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
