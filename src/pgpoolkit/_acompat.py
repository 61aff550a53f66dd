"""The concurrency primitives of the two I/O shells, under matching names.

The asyncio shell (``aio/``) is the source; ``tools/async_to_sync.py`` writes the threaded shell
from it by dropping ``async``/``await`` and renaming ``AWaiter`` -> ``Waiter``, ``aspawn`` ->
``spawn`` and so on. Each pair below does the same job with its own machinery.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Generic, TypeVar

from ._core import Slot

T = TypeVar("T")

#: the longest timeout the threading primitives accept (an infinite timeout is clamped to it)
_TIMEOUT_MAX = threading.TIMEOUT_MAX


def _clamp(timeout: float) -> float:
    return min(max(timeout, 0.0), _TIMEOUT_MAX)


Worker = threading.Thread
AWorker = asyncio.Task[None]


class Waiter(Generic[T]):
    """A queued request in the threaded pool: a lock held until the pool wakes it, or until
    its deadline (a ``time.monotonic()`` value) passes."""

    __slots__ = ("_lock", "deadline", "error", "slot")

    def __init__(self, deadline: float) -> None:
        self.slot: Slot[T] | None = None
        self.error: BaseException | None = None
        self.deadline = deadline
        self._lock = threading.Lock()
        self._lock.acquire()

    def wake(self) -> None:
        self._lock.release()

    def wait(self) -> bool:
        """Block until woken (True) or the deadline passes (False)."""
        return self._lock.acquire(timeout=_clamp(self.deadline - time.monotonic()))


class AWaiter(Generic[T]):
    """A queued request in the asyncio pool: a future the pool resolves, True when it wakes
    the request, False when its deadline passes (see ADeadlines).

    Not ``asyncio.wait_for``: on Python < 3.12 it swallows a cancellation that arrives once
    the future is resolved, and the cancelled task would go on holding a connection. Here a
    cancellation always propagates; the pool gives back what it was handed.
    """

    __slots__ = ("_future", "deadline", "error", "slot")

    def __init__(self, deadline: float) -> None:
        self.slot: Slot[T] | None = None
        self.error: BaseException | None = None
        self.deadline = deadline
        self._future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def wake(self) -> None:
        if not self._future.done():
            self._future.set_result(True)

    def expire(self) -> None:
        if not self._future.done():
            self._future.set_result(False)

    async def wait(self) -> bool:
        """Wait until woken (True) or the deadline passes (False)."""
        return await self._future


class Deadlines:
    """The threaded pool's waiters time out by themselves (their lock's timeout)."""

    __slots__ = ()

    def __init__(self, waiters: Iterable[Any]) -> None:
        pass

    def watch(self, deadline: float) -> None:
        pass

    def cancel(self) -> None:
        pass


class ADeadlines:
    """Expires the asyncio pool's waiters whose deadline passed, with one timer for all.

    A timer per wait (as ``asyncio.wait(timeout=)`` makes) is a push on the event loop's heap
    of timers, whose entries compare in Python: with a thousand tasks queued for ten
    connections that was a fifth of the loop's time. Here one timer is set to the nearest
    deadline and moved only when a nearer one comes, which with one timeout for all requests
    never happens: a wait costs no timer at all.
    """

    __slots__ = ("_at", "_handle", "_waiters")

    def __init__(self, waiters: Iterable[Any]) -> None:
        #: the pool's queue of AWaiters (a live view)
        self._waiters = waiters
        self._handle: asyncio.TimerHandle | None = None
        self._at = math.inf

    def watch(self, deadline: float) -> None:
        """Make sure a waiter with this deadline is expired at the latest then."""
        if deadline >= self._at or deadline == math.inf:
            return
        if self._handle is not None:
            self._handle.cancel()
        loop = asyncio.get_running_loop()
        self._at = deadline
        self._handle = loop.call_at(loop.time() + (deadline - time.monotonic()), self._sweep)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None
        self._at = math.inf

    def _sweep(self) -> None:
        self._handle = None
        self._at = math.inf
        now = time.monotonic()
        nearest = math.inf
        for waiter in self._waiters:
            if waiter.deadline <= now:
                waiter.expire()
            elif waiter.deadline < nearest:
                nearest = waiter.deadline
        self.watch(nearest)


class Event:
    """A flag a background worker sleeps on, so that close() can wake it at once."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait_timeout(self, timeout: float) -> bool:
        """Sleep until set (True) or the timeout passes (False)."""
        return self._event.wait(_clamp(timeout))


class AEvent:
    """A flag a background task sleeps on, so that close() can wake it at once."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait_timeout(self, timeout: float) -> bool:
        """Sleep until set (True) or the timeout passes (False)."""
        try:
            await asyncio.wait_for(self._event.wait(), max(timeout, 0.0))
        except asyncio.TimeoutError:
            return False
        return True


Lock = threading.Lock


class Guard:
    """Marks a pooled connection busy on its server connection (threads): the owner's
    thread may nest, another thread (the pool's maintenance) only takes it if free.
    ``active_at`` is when it was last released: the end of the client's last operation."""

    __slots__ = ("_lock", "active_at")

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.active_at = time.monotonic()

    def acquire(self) -> None:
        self._lock.acquire()

    def try_acquire(self) -> bool:
        return self._lock.acquire(blocking=False)

    def release(self) -> None:
        self.active_at = time.monotonic()
        self._lock.release()


class NoGuard:
    """The guard of the clients of a pool with no idle_in_transaction_timeout: nothing ever
    needs to know whether they are busy, or since when, so marking it costs nothing."""

    __slots__ = ()

    active_at = 0.0

    # C functions stored on the class do not bind to the instance: ``NO_GUARD.acquire()`` is a
    # call to ``tuple()``, with no Python frame (every statement of every client makes two)
    acquire: Callable[[], object] = tuple
    release: Callable[[], object] = tuple

    def try_acquire(self) -> bool:
        return False


NO_GUARD = NoGuard()


class AGuard:
    """Marks a pooled connection busy on its server connection (asyncio): a count, as only
    the event loop's thread uses it. ``active_at`` is when it was last released."""

    __slots__ = ("_depth", "active_at")

    def __init__(self) -> None:
        self._depth = 0
        self.active_at = time.monotonic()

    def acquire(self) -> None:
        self._depth += 1

    def try_acquire(self) -> bool:
        if self._depth:
            return False
        self._depth = 1
        return True

    def release(self) -> None:
        self.active_at = time.monotonic()
        self._depth -= 1


#: The asyncio pool's lock. The core is only called from the event loop's thread and no call
#: into it awaits, so it is never contended: a C lock is the cheapest context manager there is
#: (cheaper than a Python class whose __enter__ does nothing).
ALock = threading.Lock
#: yields of the GIL before a contended pool lock is waited for in the kernel (wait_for_lock)
LOCK_SPINS = 20


def wait_for_lock(lock: Any) -> None:
    """Take ``lock`` (a pool's), which another thread holds: let the holder finish first.

    A pool's lock is held for a few bytecodes and never across I/O, so its holder is most
    likely runnable and waiting for the GIL, taken from it in the middle of those bytecodes
    (CPython switches threads every 5 ms). Blocking on the lock straight away puts this thread
    to sleep in the kernel and every thread after it too (a convoy: with 4 threads checking
    out at once, a lock and a list cost 1.8 us per checkout and return instead of 0.3 us).
    Yielding the GIL lets the holder release the lock within a few yields; past LOCK_SPINS of
    them (a holder that is not running), this thread blocks.
    """
    for _ in range(LOCK_SPINS):
        time.sleep(0)  # releases the GIL: the holder runs
        if lock.acquire(False):
            return
    lock.acquire()


#: a pause (the pool manager's drain polls the pool it deletes)
sleep = time.sleep
asleep = asyncio.sleep
#: a pooled connection's lock around binding (held while the pool is waited for)
BindLock = threading.Lock
ABindLock = asyncio.Lock


_exiting = False


@atexit.register
def _at_exit() -> None:
    global _exiting
    _exiting = True


#: guards the threaded pools' worker sets, so that gather() never copies a set while it
#: changes; never held while a thread starts (a process forked then would inherit it held)
_workers_lock = threading.Lock()


def _renew_workers_lock_in_child() -> None:
    # a thread of the parent may have held it at the fork: the child's pools (reopened by
    # pool.py's at-fork hook, registered after this one) need it free
    global _workers_lock
    _workers_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_workers_lock_in_child)


def spawn(workers: set[Worker], func: Callable[..., None], *args: Any, name: str) -> None:
    """Run ``func(*args)`` in a daemon thread (it never keeps the interpreter from exiting),
    listed in ``workers`` while it runs."""

    def run() -> None:
        try:
            func(*args)
        finally:
            with _workers_lock:
                workers.discard(thread)

    thread = threading.Thread(target=run, name=name, daemon=True)
    with _workers_lock:
        workers.add(thread)
    try:
        thread.start()
    except BaseException:  # not started (interrupted, or no more threads): not listed
        if thread.ident is None:
            with _workers_lock:
                workers.discard(thread)
        raise


def aspawn(
    workers: set[AWorker], func: Callable[..., Coroutine[Any, Any, None]], *args: Any, name: str
) -> None:
    """Run ``func(*args)`` as a task, listed in ``workers`` while it runs."""
    task = asyncio.get_running_loop().create_task(func(*args), name=name)
    workers.add(task)
    task.add_done_callback(workers.discard)


def spawn_detached(
    loop: object, workers: set[Worker], func: Callable[..., None], *args: Any, name: str
) -> None:
    """From a finalizer, which may run in any thread while it holds any lock: run
    ``func(*args)`` in a new daemon thread, taking none of the pool's locks to start it.
    Nothing once the interpreter is exiting: a thread started then never runs (and its start
    would wait for it forever), and the server closes the connection anyway."""
    if _exiting or sys.is_finalizing():
        return
    with contextlib.suppress(RuntimeError):  # can't start new threads at shutdown
        threading.Thread(target=func, args=args, name=name, daemon=True).start()


def aspawn_detached(
    loop: asyncio.AbstractEventLoop | None,
    workers: set[AWorker],
    func: Callable[..., Coroutine[Any, Any, None]],
    *args: Any,
    name: str,
) -> None:
    """From a finalizer, which may run in any thread: hand ``func(*args)`` to the pool's event
    loop as a task (nothing if the loop is gone, and the pool with it)."""
    if loop is None or loop.is_closed():
        return
    with contextlib.suppress(RuntimeError):  # the loop is closing
        loop.call_soon_threadsafe(functools.partial(aspawn, workers, func, *args, name=name))


def gather(workers: Iterable[Worker], timeout: float) -> None:
    """Wait up to ``timeout`` seconds in all for the workers to end."""
    import time

    deadline = time.monotonic() + timeout
    current = threading.current_thread()
    with _workers_lock:
        workers = list(workers)
    for worker in workers:
        if worker is not current and worker.ident is not None:  # (listed, not started yet)
            worker.join(max(0.0, deadline - time.monotonic()))


async def agather(workers: Iterable[AWorker], timeout: float) -> None:
    """Wait up to ``timeout`` seconds in all for the tasks to end; cancel those still running."""
    current = asyncio.current_task()
    pending = [w for w in list(workers) if w is not current and not w.done()]
    if not pending:
        return
    _, still = await asyncio.wait(pending, timeout=timeout)
    for task in still:
        task.cancel()
