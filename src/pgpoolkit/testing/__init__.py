"""Test helpers: throwaway PostgreSQL clusters and a fault-injecting TCP proxy.

Standard library + psycopg only (no pytest): also used by ``python -m pgpoolkit demo``
and ``bench``.
"""

from __future__ import annotations

from ._postgres import TemporaryPostgres, find_postgres_bindir
from ._proxy import TcpProxy

__all__ = ["TcpProxy", "TemporaryPostgres", "find_postgres_bindir"]
