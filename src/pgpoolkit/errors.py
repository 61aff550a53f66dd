"""Exceptions raised by pgpoolkit.

The pool errors subclass :class:`psycopg.OperationalError`, as psycopg_pool's do, so code that
already catches psycopg's operational errors (retry loops, web frameworks' error pages) keeps
working when it moves to pgpoolkit.
"""

from __future__ import annotations

import psycopg

__all__ = [
    "IdleInTransactionTimeout",
    "PolicyViolation",
    "PoolClosed",
    "PoolError",
    "PoolTimeout",
    "TooManyClients",
    "TooManyRequests",
]


class PoolError(psycopg.OperationalError):
    """Base class of the errors raised by a pgpoolkit pool."""


class PoolTimeout(PoolError):
    """No server connection became available within the timeout.

    The message carries the pool's state when the wait ended (in use, idle, waiting, connecting)
    and the last connection error, if any: enough to tell an undersized pool from an unreachable
    server.
    """


class PoolClosed(PoolError):
    """The pool is closed, or not open yet, so it cannot hand out connections."""


class TooManyRequests(PoolError):
    """The wait queue is full (``max_waiting``): the request was refused without waiting."""


class PolicyViolation(PoolError):
    """The client did something its pooling mode cannot support.

    The message names the mode and what to do instead.
    """


class TooManyClients(PoolError):
    """``max_clients`` pooled connections are open already: ``connect()`` refused another."""


class IdleInTransactionTimeout(PoolError):
    """The client sat idle inside a transaction longer than the pool's
    ``idle_in_transaction_timeout``: its transaction was rolled back and its server connection
    given to others. Raised once, at the client's next use; the client can go on."""


class BudgetExceeded(PoolError, ValueError):
    """A PoolManager refused a pool size: the sizes of its pools together would exceed the
    server's connection budget. The message says how much is left and which pools hold the
    rest."""


class UnknownPool(PoolError, KeyError):
    """A PoolManager has no pool of that name; the message lists the names it has."""

    def __str__(self) -> str:  # KeyError would show the message quoted
        return str(self.args[0]) if self.args else ""


class NoFreeSlot(PoolError):
    """Every connection slot a pool shares across processes is taken (a PoolManager with
    ``across_processes=True``): the request waits as for a full pool."""
