"""The pool's state and every decision about it, with no I/O.

``PoolCore`` knows which server connections are idle, handed out or being opened, who is waiting
and since when, when a connection expires, when to open more and what the counters say. It never
blocks and never touches a socket: the I/O shells (``pool.py`` for threads, ``aio/pool.py`` for
asyncio) call it under their lock, then carry out what it decided (open N connections, close
these ones, wake that waiter). Because the rules live here once, the two shells cannot drift, and
the rules run under hypothesis without a database (tests/test_core_state.py).

The hot path is ``checkout()`` and ``checkin()`` of a clean connection: a pop or push on the idle
stack, a check of the wait queue, and counters.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from typing import Any, Generic, Protocol, TypeVar

from ._config import PoolConfig
from .errors import PoolClosed, TooManyRequests

T = TypeVar("T")

#: first delay before retrying a failed connection attempt, then doubled up to RETRY_MAX_DELAY.
#: The retrier only runs while there is demand (requests waiting, or the pool below min_size),
#: so the cap is what those wait for after the server returns: under a second (with jitter),
#: at the price of at most one or two attempts a second while it is away
RETRY_INITIAL_DELAY = 0.2
RETRY_MAX_DELAY = 0.8
#: each delay is multiplied by a random factor in [1 - RETRY_JITTER, 1 + RETRY_JITTER]
RETRY_JITTER = 0.25
#: the default cap on connection attempts in progress at once (``num_workers``, as
#: psycopg_pool names its connecting workers): enough to grow quickly, few enough that a burst
#: of requests does not open a connection each when returned ones will serve them sooner
#: (HikariCP's spike test: 50 requests of 10 ms with 150 ms connects need about 5 connections)
MAX_CONCURRENT_CONNECTS = 3
#: a connection's lifetime is max_lifetime shortened by up to this fraction, so that the
#: connections opened together do not all expire together
LIFETIME_JITTER = 0.05


class Slot(Generic[T]):
    """One server connection owned by the pool, and its bookkeeping."""

    __slots__ = (
        "budget_slot",
        "checked_out_at",
        "client_start",
        "conn",
        "created_at",
        "defaults",
        "expires_at",
        "generation",
        "last_used",
        "leak_stack",
        "out",
        "parked_at",
        "probe",
        "reported",
        "session",
        "settings",
    )

    def __init__(self, conn: T, now: float, expires_at: float, generation: int) -> None:
        self.conn = conn
        self.created_at = now
        self.expires_at = expires_at
        self.generation = generation
        self.last_used = now
        self.checked_out_at = now
        #: True while handed out to a client; never handed to two at once
        self.out = False
        #: while out: when its transaction-mode client parked it between transactions (it
        #: keeps it until the pool needs it: see pool._reclaim); 0.0 when not parked. No
        #: connection is parked in a pool with leak_timeout: each transaction is a lease
        self.parked_at = 0.0
        #: the shell's liveness probe for this connection's socket
        self.probe: object = None
        #: what the shell knows of the connection as it was made, to restore it on return
        self.defaults: Any = None
        #: the settings a client may change and the pool restores on return
        self.settings: tuple[Any, ...] = ()
        #: the session settings transaction-mode clients set on it (name -> SQL value), which
        #: the next client's bind makes its own (SET or RESET where they differ)
        self.session: dict[str, str] = {}
        #: what the server last reported of its session parameters, as the pool expects it
        self.reported: tuple[Any, ...] = ()
        #: the advisory-lock slot it holds of a budget shared across processes, if any
        self.budget_slot: int | None = None
        #: with leak_timeout: the stack that checked it out, until a leak is reported
        self.leak_stack: Any = None
        #: what the shell's session-mode clients bound to it start with (settings, factories)
        self.client_start: Any = None

    def unpark(self, now: float) -> None:
        """It is taken up again, or back, after being parked: the time parked was not use
        (``usage_ms`` counts from ``checked_out_at``)."""
        self.checked_out_at += now - self.parked_at
        self.parked_at = 0.0


class Waiter(Protocol[T]):
    """A queued request, as the shells implement it (a lock or a future to wake)."""

    slot: Slot[T] | None
    error: BaseException | None

    def wake(self) -> None: ...


class PoolCore(Generic[T]):
    """State and decisions of one pool. Not thread-safe: the shell holds a lock around calls."""

    def __init__(self, config: PoolConfig, rng: random.Random | None = None) -> None:
        self.name = config.name
        self.min_size = config.min_size
        self.max_size = config.max_size
        self.max_waiting = config.max_waiting
        self.max_lifetime = config.max_lifetime
        self.max_idle = config.max_idle
        self.reconnect_timeout = config.reconnect_timeout
        self.num_workers = config.num_workers
        self._rng = rng or random.Random()

        self.opened = False
        self.closed = False
        self.idle: list[Slot[T]] = []  # a stack: the most recently returned is on top
        self.waiters: deque[Waiter[T]] = deque()
        self.slots: dict[T, Slot[T]] = {}
        self.in_use = 0
        self.connecting = 0
        self.generation = 0
        #: pause(): requests wait, nothing is handed out, until resume()
        self.paused = False

        #: something for the shell to do: close ``to_close`` and/or start connection attempts
        self.work = False
        self.to_close: list[T] = []

        # connection retries while the server is unreachable: one attempt (the retrier) retries
        # at a time, the others stand down at their first failure; while the last try failed,
        # ``retrying`` holds back new attempts
        self.retrier = False
        self.retrying = False
        self.retry_delay = 0.0
        self.retry_started = 0.0
        self.last_error: str | None = None
        #: checks failed in a row (check=): new connections are checked as they open
        self.check_failures = 0

        # counters
        self.requests = 0
        self.requests_queued = 0
        self.wait_ms = 0.0
        self.timeouts = 0
        self.rejected = 0
        self.usage_ms = 0.0
        self.connections_opened = 0
        self.connections_failed = 0
        self.connect_ms = 0.0
        self.connections_lost = 0
        self.connections_closed = 0
        self.returns_bad = 0
        self.clients_pinned = 0
        self.statements = 0
        self.transactions = 0

    # -- the hot path ---------------------------------------------------------------------------

    def checkout(self, now: float, retry: bool = False) -> Slot[T] | None:
        """Take an idle connection for a new request, or None if the request must queue.

        A waiter already queued is served first: a newcomer never overtakes it. Expired
        connections met on the way are closed, never handed out. ``retry``: the same request
        again, after the connection it got was found dead (counted once).
        """
        if self.closed or not self.opened:
            raise self.closed_error()
        if not retry:
            self.requests += 1
        if self.waiters or self.paused:
            return None
        idle = self.idle
        while idle:
            slot = idle.pop()
            if slot.expires_at > now:
                slot.out = True
                slot.checked_out_at = now
                self.in_use += 1
                return slot
            self._close(slot)
        return None

    def checkin(
        self,
        slot: Slot[T],
        now: float,
        reusable: bool,
        surrender: bool = False,
        statements: int = 0,
        transactions: int = 0,
        unpinned: bool = False,
    ) -> None:
        """A connection comes back from a client: reuse it, or close it if it must go
        (``surrender``: a sibling pool needs the room, under a shared budget). ``statements``,
        ``transactions``, ``unpinned``: what the client did with it (as ``client_released``)."""
        if unpinned:
            self.clients_pinned -= 1
        self.statements += statements
        self.transactions += transactions
        slot.out = False
        self.in_use -= 1
        self.usage_ms += (now - slot.checked_out_at) * 1000.0
        if self.paused and not self.in_use:
            self.work = True  # the shell tells pause() that nothing is in use any more
        if not reusable:
            self.returns_bad += 1
            self._close(slot)
        elif surrender:
            self._close(slot)
        elif (
            self.closed
            or slot.expires_at <= now
            or slot.generation != self.generation
            or self.in_use + len(self.idle) + self.connecting >= self.max_size
        ):  # the last test is only true after resize() lowered max_size
            self._close(slot)
        elif self.waiters and not self.paused:
            self._hand_over(slot, now)
        else:  # _hand_over's idle case, inlined: this is the common return
            slot.last_used = now
            self.idle.append(slot)

    def _hand_over(self, slot: Slot[T], now: float) -> None:
        """Give a ready connection to the oldest waiter, or put it on the idle stack."""
        if self.waiters and not self.paused:
            waiter = self.waiters.popleft()
            slot.out = True
            slot.checked_out_at = now
            self.in_use += 1
            waiter.slot = slot
            waiter.wake()
        else:
            slot.last_used = now
            self.idle.append(slot)

    # -- waiting --------------------------------------------------------------------------------

    def enqueue(self, waiter: Waiter[T], requeue: bool = False) -> None:
        """Queue a request that found no idle connection, or refuse it if the queue is full.
        ``requeue``: a request that waited already, queued again after the connection it got
        was found dead (counted once in ``requests_queued``)."""
        if self.max_waiting and len(self.waiters) >= self.max_waiting:
            self.rejected += 1
            raise TooManyRequests(
                f"pool {self.name!r} refused the request: the wait queue is full "
                f"(max_waiting={self.max_waiting}); {self.describe()}. "
                "Raise max_size or max_waiting, or shed load upstream"
            )
        if not requeue:
            self.requests_queued += 1
        self.waiters.append(waiter)
        self.work = True

    def waited(self, seconds: float) -> None:
        """Account the time a request spent in the queue."""
        self.wait_ms += seconds * 1000.0

    def abandon(self, waiter: Waiter[T], timed_out: bool) -> Slot[T] | None:
        """A waiter gives up (timeout, cancellation). Returns the connection it was handed
        meanwhile, if any: the caller uses it or gives it back with ``checkin``."""
        if waiter.slot is not None:
            return waiter.slot
        with suppress(ValueError):  # not queued: woken with an error (closed) meanwhile
            self.waiters.remove(waiter)
        if timed_out and waiter.error is None:
            self.timeouts += 1
        return None

    # -- connections coming and going -----------------------------------------------------------

    def lost(self, slot: Slot[T]) -> None:
        """A connection handed out at checkout turned out dead (closed by the server)."""
        slot.out = False
        self.in_use -= 1
        self.connections_lost += 1
        self._close(slot)  # (sets work: a pause() waiting for in_use to drop is told)

    def check_failed(self, error: str) -> None:
        """A connection failed the pool's check= at checkout (it is given back as lost)."""
        self.check_failures += 1
        self.last_error = error

    def client_released(self, unpinned: bool, statements: int, transactions: int) -> None:
        """A client gave its server connection back: account what it did with it."""
        if unpinned:
            self.clients_pinned -= 1
        self.statements += statements
        self.transactions += transactions

    def take_work(self) -> tuple[list[T], int]:
        """What the shell must do now: connections to close and attempts to start."""
        self.work = False
        to_close, self.to_close = self.to_close, []
        n = self._wanted()
        self.connecting += n
        return to_close, n

    def _wanted(self) -> int:
        """How many connection attempts to start: enough for the min_size and the waiters not
        already covered by an attempt in progress, within max_size. None while one attempt
        retries an unreachable server."""
        if self.closed or not self.opened or self.retrying:
            return 0
        total = len(self.idle) + self.in_use + self.connecting
        room = min(self.max_size - total, self.num_workers - self.connecting)
        waiting = 0 if self.paused else len(self.waiters)  # paused: no growth for them
        need = max(self.min_size - total, waiting - self.connecting)
        return max(0, min(need, room))

    def new_slot(
        self,
        conn: T,
        now: float,
        connect_seconds: float,
        retrier: bool = False,
        generation: int | None = None,
    ) -> Slot[T]:
        """Account a successful connection attempt (``retrier``: the one that was retrying;
        ``generation``: the pool's generation when the attempt started); returns its slot (not
        yet placed). The server answers again: attempts may start."""
        self.connecting -= 1
        self.connections_opened += 1
        self.connect_ms += connect_seconds * 1000.0
        self.retrying = False
        if retrier:
            self.retrier = False
        self.last_error = None
        lifetime = self.max_lifetime * (1.0 - LIFETIME_JITTER * self._rng.random())
        slot = Slot(
            conn, now, now + lifetime, self.generation if generation is None else generation
        )
        self.slots[conn] = slot
        return slot

    def place(self, slot: Slot[T], now: float) -> None:
        """Put a new connection to use: to the oldest waiter, or on the idle stack."""
        if (
            self.closed
            or slot.generation != self.generation  # started before a drain(): not wanted
            or len(self.idle) + self.in_use + self.connecting >= self.max_size
        ):
            self._close(slot)
        else:
            self._hand_over(slot, now)
        self.work = True  # the attempts wanted may have changed (retrying is over)

    def connect_failed(self, now: float, error: str, attempt: int) -> float | None:
        """Account a failed connection attempt; returns the delay before the next try of this
        attempt, or None if it must stop (another attempt already retries, pool closed, no
        demand left)."""
        self.connections_failed += 1
        self.last_error = error
        if attempt == 0:
            if self.retrier or self.closed:
                # stand down, and hold back new attempts until the retrier's next try
                self.retrying = self.retrier
                self.connecting -= 1
                return None
            self.retrier = True
            self.retry_started = now
            self.retry_delay = RETRY_INITIAL_DELAY
        else:
            self.retry_delay = min(self.retry_delay * 2.0, RETRY_MAX_DELAY)
        self.retrying = True
        if self.closed or not self._demand():
            self.retrier = self.retrying = False
            self.connecting -= 1
            self.work = True
            return None
        return self.retry_delay * (1.0 + RETRY_JITTER * (2.0 * self._rng.random() - 1.0))

    def attempt_abandoned(self, retrier: bool) -> None:
        """An attempt stopped because the pool is closing (``retrier``: the retrying one)."""
        self.connecting -= 1
        if retrier:
            self.retrier = self.retrying = False

    def retry_gave_up(self, now: float) -> bool:
        """True once per ``reconnect_timeout`` of failed retries: time to call
        ``reconnect_failed``. The retries go on afterwards, so the pool never stays empty."""
        if self.retrier and now - self.retry_started >= self.reconnect_timeout:
            self.retry_started = now
            return True
        return False

    def _demand(self) -> bool:
        return bool(self.waiters) or len(self.idle) + self.in_use < self.min_size

    def evict_idle(self) -> bool:
        """Close the connection idle the longest, if the pool is above min_size (a sibling
        pool needs the room, under a shared budget)."""
        if not self.idle or len(self.idle) + self.in_use <= self.min_size:
            return False
        self._close(self.idle.pop(0))  # the bottom of the stack has been idle the longest
        return True

    def _close(self, slot: Slot[T]) -> None:
        self.slots.pop(slot.conn, None)
        self.connections_closed += 1
        self.to_close.append(slot.conn)
        self.work = True

    # -- maintenance ----------------------------------------------------------------------------

    def maintain(self, now: float, alive: Callable[[Slot[T]], bool] | None = None) -> float:
        """Close idle connections past their lifetime, idle longer than max_idle while the
        pool is above min_size, or found dead by ``alive`` (the shell's look at the socket: a
        server restart, a terminated backend; replaced without waiting for a request); returns
        the seconds until the next maintenance is due."""
        size = len(self.idle) + self.in_use
        keep: list[Slot[T]] = []
        for slot in self.idle:  # the bottom of the stack has been idle the longest
            if alive is not None and not alive(slot):
                self.connections_lost += 1
                self._close(slot)
                size -= 1
            elif slot.expires_at <= now or (
                now - slot.last_used >= self.max_idle and size > self.min_size
            ):
                self._close(slot)
                size -= 1
            else:
                keep.append(slot)
        self.idle = keep
        self.work = True
        # connections placed or returned before the next run are not known yet: run again
        # within max_lifetime, and within max_idle while the pool may shrink
        due = now + min(60.0, self.max_lifetime)
        if self.max_size > self.min_size:
            due = min(due, now + self.max_idle)
        for slot in keep:
            due = min(due, slot.expires_at)
            if size > self.min_size:
                due = min(due, slot.last_used + self.max_idle)
        return max(0.01, due - now)

    def held_longer_than(self, limit: float, now: float) -> list[Slot[T]]:
        """The handed-out connections held longer than ``limit`` and not reported yet."""
        return [
            slot
            for slot in self.slots.values()
            if slot.out and slot.leak_stack is not None and now - slot.checked_out_at >= limit
        ]

    def take_idle(self, now: float) -> list[Slot[T]]:
        """Check out every idle connection at once (for ``pool.check()``)."""
        slots, self.idle = self.idle, []
        for slot in slots:
            slot.out = True
            slot.checked_out_at = now
        self.in_use += len(slots)
        return slots

    def resize(self, min_size: int, max_size: int) -> None:
        """Change the sizes; idle connections beyond the new max_size close now, handed-out
        ones when they come back."""
        self.min_size = min_size
        self.max_size = max_size
        excess = len(self.idle) + self.in_use - max_size
        while excess > 0 and self.idle:
            self._close(self.idle.pop(0))
            excess -= 1
        self.work = True

    def drain(self) -> None:
        """Replace every connection: idle ones close now, handed-out ones when returned."""
        self.generation += 1
        for slot in self.idle:
            self._close(slot)
        self.idle = []
        self.work = True

    def pause(self) -> None:
        """Hand nothing out until resume(): new requests queue (their timeouts run), clients
        give back what they hold as usual."""
        self.paused = True

    def resume(self, now: float) -> None:
        """Serve again: the idle connections go to the waiters, oldest first."""
        self.paused = False
        while self.waiters and self.idle:
            slot = self.idle.pop()
            if slot.expires_at > now:
                self._hand_over(slot, now)
            else:
                self._close(slot)
        self.work = True

    def open(self) -> None:
        if self.closed:
            raise PoolClosed(f"pool {self.name!r} was closed and cannot be opened again")
        self.opened = True
        self.work = True

    def close(self) -> list[Waiter[T]]:
        """Close the pool: idle connections go to ``to_close``, waiters are returned (with
        their error set) for the shell to wake. Handed-out connections close on return."""
        self.closed = True
        for slot in self.idle:
            self._close(slot)
        self.idle = []
        waiters = list(self.waiters)
        self.waiters.clear()
        for waiter in waiters:
            waiter.error = PoolClosed(f"pool {self.name!r} was closed while waiting")
        self.work = True
        return waiters

    def reset_counters(self) -> None:
        """Zero the counters (``pop_stats``); gauges are not counters."""
        self.requests = self.requests_queued = self.timeouts = self.rejected = 0
        self.connections_opened = self.connections_failed = self.connections_lost = 0
        self.connections_closed = self.returns_bad = 0
        self.statements = self.transactions = 0
        self.wait_ms = self.usage_ms = self.connect_ms = 0.0

    # -- reporting ------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Server connections open (idle or in use)."""
        return len(self.idle) + self.in_use

    @property
    def ready(self) -> bool:
        """True when min_size connections are open."""
        return self.size >= self.min_size

    def closed_error(self) -> PoolClosed:
        if self.closed:
            return PoolClosed(f"pool {self.name!r} is closed")
        return PoolClosed(
            f"pool {self.name!r} is not open yet: call open() or use it as a context manager"
        )

    def describe(self) -> str:
        """The pool's state in one line, for error messages (HikariCP style)."""
        text = (
            f"{self.in_use} of {self.max_size} in use, {len(self.idle)} idle, "
            f"{len(self.waiters)} waiting, {self.connecting} connecting"
        )
        if self.paused:
            text += "; paused (resume() serves again)"
        if self.last_error:
            text += f"; last connection error: {self.last_error}"
        return text
