"""The connection budget that an overcommitted PoolManager's pools share at run time.

With ``overcommit=True`` the pools' sizes are caps whose sum may exceed the budget (PgBouncer's
``max_db_connections`` over pool sizes); this keeps the server connections the pools hold
together (open or being opened) within it. A pool takes a ticket before it opens a connection
and gives it back when the connection is closed. When the budget is spent:

- an idle connection of a sibling pool above its ``min_size`` is closed to make room (the
  sibling furthest above its fair share first, its connection idle the longest), and the
  request takes the ticket it frees;
- otherwise the request waits; a sibling above its fair share then gives up (closes) a
  connection that comes back, instead of keeping it or handing it to its own waiters, so that
  a pool under its fair share is never starved by a busy sibling.

A pool's fair share is the budget split in proportion to the sizes: what it would hold if every
pool were busy. Sizes are what the operator declared each pool's weight to be, and the rule
needs no demand history (Multigres rebalances by recent demand every few seconds; this is the
same max-min fairness with the declared sizes as weights).

No I/O here, and the lock is never held across a call into a pool: the pools act on what these
methods return.
"""

from __future__ import annotations

import threading
import zlib
from typing import Any

__all__ = ["TAKE_SLOT", "TAKE_THIS_SLOT", "SharedBudget", "slot_namespace"]


# -- across processes: the budget PostgreSQL itself enforces -----------------------------------
#
# Each server connection of a pool holds one of N session-level advisory locks (slots) in a
# namespace its pool's name selects: pg_try_advisory_lock(namespace, slot). A connection that
# finds no free slot is closed; a process that dies frees its slots with its connections.


def slot_namespace(pool_name: str) -> int:
    """The advisory-lock namespace (first key) of a pool's slots: the same in every process."""
    return zlib.crc32(f"pgpoolkit:{pool_name}".encode()) & 0x7FFFFFFF


#: take the first free slot, looking from a random one (one round trip; LIMIT 1 stops at the
#: first lock taken, the slots it could not take it did not lock)
TAKE_SLOT = (
    "SELECT slot FROM (SELECT (g + %(start)s) %% %(n)s AS slot"
    " FROM generate_series(0, %(n)s - 1) AS g) AS slots"
    " WHERE pg_try_advisory_lock(%(namespace)s, slot) LIMIT 1"
)
#: take one slot again (DISCARD ALL released it)
TAKE_THIS_SLOT = "SELECT pg_try_advisory_lock(%(namespace)s, %(slot)s)"


class SharedBudget:
    """Tickets for server connections, shared by a manager's pools."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._lock = threading.Lock()
        #: pool -> connections it holds (open or being opened)
        self._held: dict[Any, int] = {}
        #: pool -> its declared size (its weight)
        self._sizes: dict[Any, int] = {}
        #: pools whose requests wait for a ticket, in the order they started waiting
        self._starved: dict[Any, None] = {}

    def join(self, pool: Any, size: int) -> None:
        with self._lock:
            self._held.setdefault(pool, 0)
            self._sizes[pool] = size

    def leave(self, pool: Any) -> None:
        with self._lock:
            self._sizes.pop(pool, None)
            self._starved.pop(pool, None)
            if not self._held.get(pool):
                self._held.pop(pool, None)

    def held(self) -> int:
        """Connections the pools hold together."""
        return sum(self._held.values())

    def share(self, pool: Any) -> float:
        total_size = sum(self._sizes.values())
        return self.total * self._sizes.get(pool, 0) / total_size if total_size else 0.0

    def take(self, pool: Any) -> tuple[bool, Any]:
        """A pool wants to open a connection: (True, None) if it may; (False, victim) if not,
        where ``victim`` is a sibling that should close an idle connection to make room (or
        None: the pool waits for a connection to be closed)."""
        with self._lock:
            if sum(self._held.values()) < self.total:
                self._held[pool] = self._held.get(pool, 0) + 1
                self._starved.pop(pool, None)
                return True, None
            self._starved[pool] = None
            candidates = [
                other for other in self._held if other is not pool and other._has_evictable_idle()
            ]
            if not candidates:
                return False, None
            victim = max(candidates, key=lambda other: self._held[other] - self.share(other))
            return False, victim

    def give_back(self, pool: Any, wake: bool = True) -> list[Any]:
        """A pool closed a connection (or gave up opening one): its ticket is free. Returns
        the starved pools to wake, furthest under its fair share first (the first that still
        needs the ticket takes it; the others wait again); none if not ``wake``."""
        with self._lock:
            if self._held.get(pool):
                self._held[pool] -= 1
            if not self._starved or not wake:
                return []
            woken = sorted(
                self._starved, key=lambda other: self._held.get(other, 0) - self.share(other)
            )
            self._starved.clear()
            return woken

    def should_surrender(self, pool: Any) -> bool:
        """A connection comes back to ``pool``: close it rather than keep it, because a sibling
        under its fair share waits while ``pool`` is above its own."""
        if not self._starved:
            return False
        with self._lock:
            if self._held.get(pool, 0) <= self.share(pool):
                return False
            return any(self._held.get(other, 0) < self.share(other) for other in self._starved)
