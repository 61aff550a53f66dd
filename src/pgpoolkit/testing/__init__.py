"""Test helpers for your own test suite: a throwaway PostgreSQL server and a fault-injecting
TCP proxy (documented in docs/testing.md, with pytest fixtures).

- :class:`TemporaryPostgres`: a throwaway PostgreSQL cluster (``initdb`` + ``pg_ctl``) on
  ``127.0.0.1`` and a free port, removed at the end; a context manager.
- :class:`TcpProxy`: a loopback TCP forwarder that resets, refuses or blackholes the
  connections through it on demand, to test what a pool does when the network fails.
- :func:`find_postgres_bindir`: the directory of the PostgreSQL server programs.

Standard library + psycopg only (no pytest), so that they work in any test runner; pgpoolkit's
test suite and ``python -m pgpoolkit demo`` and ``bench`` use them too. The names in
``__all__`` are public API, with the same compatibility promise as the rest of pgpoolkit.
"""

from __future__ import annotations

from ._postgres import TemporaryPostgres, find_postgres_bindir
from ._proxy import TcpProxy

__all__ = ["TcpProxy", "TemporaryPostgres", "find_postgres_bindir"]
