"""Property tests of PoolCore, the pool's pure state machine: no database, no I/O, no threads.

A hypothesis ``RuleBasedStateMachine`` plays the I/O shell around a ``PoolCore[int]`` (a
connection is an int): it checks connections out and in, queues fake waiters, carries out what
``take_work()`` decides (connection attempts that later succeed, or fail and retry; connections
to close), runs the maintenance, resizes, drains, closes, and moves a fake clock. It keeps its own
model of who holds what, and after every step checks the core against it: sizes within max_size,
a connection never held twice, FIFO service, counters, liveness of the growth decisions.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from pgpoolkit import _core
from pgpoolkit._config import make_config
from pgpoolkit._core import PoolCore, Slot
from pgpoolkit.errors import PoolClosed, TooManyRequests

#: seconds the fake clock moves by: small steps, and steps past max_idle and max_lifetime
TICKS = [0.0, 0.001, 0.3, 1.5, 7.0, 45.0, 700.0]


def mix(**weights: int) -> list[str]:
    """A list to pick actions from, each repeated by its weight, in the order given (the first
    comes more often than its weight says: hypothesis likes to draw index 0, so the profiles
    list first what moves the pool on)."""
    return [action for action, weight in weights.items() for _ in range(weight)]


#: workloads: how often each action comes, and how many clients come at once
# fmt: off
PROFILES = {
    "steady": (mix(attempt_ok=3, give_back=5, take_work=3, waiter=3, request=2, attempt_fail=1,
                   lost=1, tick=2, admin=1, open=3), [1]),
    "contention": (mix(attempt_ok=2, give_back=4, take_work=3, waiter=3, request=5,
                       attempt_fail=1, lost=1, tick=1, admin=1, open=3), [1, 1, 2, 3]),
    "outage": (mix(attempt_fail=4, give_back=3, take_work=3, waiter=3, request=3, attempt_ok=1,
                   lost=2, tick=3, admin=1, open=3), [1, 1, 2]),
    "churn": (mix(attempt_ok=2, give_back=4, take_work=2, tick=4, waiter=1, attempt_fail=1,
                  lost=1, request=3, admin=3, open=3), [1, 1, 2]),
}
# fmt: on

#: the rarer calls; close() comes seldom, as a closed pool has little left to test
ADMIN = mix(resize=6, drain=2, take_idle=2, reset=1, open=1, close=1)


class FakeWaiter:
    """A queued request, as a shell would make it; records its wake-ups in a shared log."""

    __slots__ = ("error", "ident", "log", "slot", "wakes")

    def __init__(self, ident: int, log: list[FakeWaiter]) -> None:
        self.ident = ident
        self.slot: Slot[int] | None = None
        self.error: BaseException | None = None
        self.wakes = 0
        self.log = log

    def wake(self) -> None:
        self.wakes += 1
        assert self.wakes == 1, f"waiter {self.ident} woken twice"
        self.log.append(self)

    def __repr__(self) -> str:
        return f"<FakeWaiter {self.ident}>"


@dataclass
class Attempt:
    """A connection attempt started by take_work(); ``tries`` is the attempt number the shell
    passes to connect_failed (0 for the first try, then 1, 2, ... while it retries: only the
    retrier retries, the others stand down at their first failure)."""

    ident: int
    tries: int = 0


def make_core(
    min_size: int = 0,
    max_size: int = 2,
    *,
    max_waiting: int = 0,
    max_lifetime: float = 3600.0,
    max_idle: float = 600.0,
    reconnect_timeout: float = 300.0,
    seed: int = 0,
) -> PoolCore[int]:
    config = make_config(
        name="core-test",
        mode="session",
        min_size=min_size,
        max_size=max_size,
        timeout=30.0,
        max_waiting=max_waiting,
        max_lifetime=max_lifetime,
        max_idle=max_idle,
        reconnect_timeout=reconnect_timeout,
    )
    return PoolCore(config, random.Random(seed))


class CoreMachine(RuleBasedStateMachine):
    """The shell's side of the contract, with a model of what the core handed out."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.next_id = 0
        self.wake_log: list[FakeWaiter] = []
        #: waiters queued in the core, in enqueue order
        self.queue: list[FakeWaiter] = []
        #: waiters woken (with a connection or an error) that have not collected it yet
        self.woken: list[FakeWaiter] = []
        #: connection -> who holds it: a client (held) or a woken waiter
        self.owner: dict[int, object] = {}
        #: connections held by clients
        self.held: dict[int, Slot[int]] = {}
        #: the connections held by requests that had to wait for them
        self.waited: set[int] = set()
        #: connections the core opened and nobody told to close yet
        self.open_conns: set[int] = set()
        self.attempts: list[Attempt] = []
        self.ceiling = 0
        self.total_opened = 0
        self.total_closed = 0
        self._zero_counters()

    def _zero_counters(self) -> None:
        self.requests = 0
        self.requests_queued = 0
        self.timeouts = 0
        self.rejected = 0
        self.opened = 0
        self.failed = 0
        self.lost_count = 0
        self.returns_bad = 0
        self.closed_count = 0

    def _new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    # -- helpers --------------------------------------------------------------------------------

    def _hand_out(self, slot: Slot[int], who: object, *, expiry: bool = True) -> None:
        """Record that ``slot`` was given to ``who``: it must be free, open and current."""
        core = self.core
        assert slot.conn not in self.owner, f"connection {slot.conn} handed out twice"
        assert slot.out
        assert slot.conn in self.open_conns
        assert core.slots.get(slot.conn) is slot
        assert slot.generation == core.generation, "a drained connection was handed out"
        if expiry:
            assert slot.expires_at > self.now, "an expired connection was handed out"
        self.owner[slot.conn] = who

    def _collect_wakes(self) -> None:
        """Account the waiters the last call woke: oldest first, each once."""
        for waiter in self.wake_log:
            assert self.queue, f"{waiter} woken but nobody was queued"
            assert self.queue[0] is waiter, f"FIFO broken: woke {waiter} before {self.queue[0]}"
            self.queue.pop(0)
            if waiter.slot is not None:
                assert waiter.error is None
                self._hand_out(waiter.slot, waiter)
            else:
                assert isinstance(waiter.error, PoolClosed)
            self.woken.append(waiter)
        self.wake_log.clear()

    def _total(self) -> int:
        core = self.core
        return len(core.idle) + core.in_use + core.connecting

    def _demand(self) -> bool:
        core = self.core
        return bool(core.waiters) or len(core.idle) + core.in_use < core.min_size

    def _give_back(self, slot: Slot[int], reusable: bool) -> None:
        """checkin() as the shell calls it, with what must become of the connection."""
        core = self.core
        conn = slot.conn
        del self.owner[conn]
        self.waited.discard(conn)
        must_close = (
            not reusable
            or core.closed
            or slot.expires_at <= self.now
            or slot.generation != core.generation
        )
        room = core.in_use - 1 + len(core.idle) + core.connecting < core.max_size
        head = self.queue[0] if self.queue else None
        core.checkin(slot, self.now, reusable)
        if not reusable:
            self.returns_bad += 1
        self._collect_wakes()
        assert not slot.out or (head is not None and head.slot is slot)
        if must_close or not room:
            assert conn in core.to_close
            assert core.work
        else:  # a good connection is reused: by the oldest waiter, or kept on top of the stack
            assert conn not in core.to_close
            if head is not None:
                assert head.slot is slot
            else:
                assert core.idle[-1] is slot

    # -- set up ---------------------------------------------------------------------------------

    @initialize(
        min_size=st.integers(0, 3),
        extra=st.integers(0, 3),
        max_waiting=st.integers(0, 3),
        max_lifetime=st.sampled_from([5.0, 60.0, 3600.0]),
        max_idle=st.sampled_from([2.0, 30.0, 600.0]),
        reconnect_timeout=st.sampled_from([0.0, 10.0, 300.0]),
        seed=st.integers(0, 2**32 - 1),
        open_now=st.integers(0, 7).map(bool),  # mostly: open() is tested as an action too
        profile=st.sampled_from(sorted(PROFILES)),
    )
    def setup(
        self,
        min_size: int,
        extra: int,
        max_waiting: int,
        max_lifetime: float,
        max_idle: float,
        reconnect_timeout: float,
        seed: int,
        open_now: bool,
        profile: str,
    ) -> None:
        self.profile, self.clients = PROFILES[profile]
        self.core = make_core(
            min_size,
            max(1, min_size + extra),
            max_waiting=max_waiting,
            max_lifetime=max_lifetime,
            max_idle=max_idle,
            reconnect_timeout=reconnect_timeout,
            seed=seed,
        )
        self.ceiling = self.core.max_size
        if open_now:
            self.core.open()

    # -- the rules ------------------------------------------------------------------------------
    # One rule picks the next action, with weights from a workload profile drawn per example.
    # (Separate rules get switched off at random by hypothesis' swarm testing, and the pool
    # only gets interesting when clients, take_work() and the connection attempts all run.)

    @rule(data=st.data())
    def step(self, data: st.DataObject) -> None:
        actions = [a for a in self.profile if self._applicable(a)]
        action = data.draw(st.sampled_from(actions), label="action")
        getattr(self, f"_do_{action}")(data)

    def _applicable(self, action: str) -> bool:
        if action == "give_back":
            return bool(self.held) or any(w.slot is not None for w in self.woken)
        if action == "lost":
            return bool(self.held)
        if action == "waiter":
            return bool(self.queue or self.woken)
        if action in ("attempt_ok", "attempt_fail"):
            return bool(self.attempts)
        if action == "open":
            return not self.core.opened
        return True

    def _do_request(self, data: st.DataObject) -> None:
        """Clients ask for a connection: checkout(), then enqueue() if none is idle; the shell
        then carries out the work at once (as it does) or later (another task gets there)."""
        for _ in range(data.draw(st.sampled_from(self.clients), label="clients")):
            self._request()
        if data.draw(st.booleans(), label="work now") and self.core.work:
            self._take_work()

    def _do_give_back(self, data: st.DataObject) -> None:
        """A client returns its connection, clean or broken (maybe a woken waiter that returns
        to its caller first)."""
        woken = {w.slot.conn: (w, w.slot) for w in self.woken if w.slot is not None}
        conn = data.draw(st.sampled_from(sorted(self.held) + sorted(woken)), label="conn")
        if conn in woken:
            waiter, slot = woken[conn]
            self.woken.remove(waiter)
            self.owner[conn] = "client"
            self.held[conn] = slot
        self._give_back(self.held.pop(conn), data.draw(st.booleans(), label="reusable"))
        if data.draw(st.booleans(), label="work now") and self.core.work:
            self._take_work()

    def _do_lost(self, data: st.DataObject) -> None:
        """The shell finds a connection it checked out dead: the request tries again (counted
        once), unless it was pool.check() that found it."""
        conn = data.draw(st.sampled_from(sorted(self.held)), label="conn")
        slot = self.held.pop(conn)
        request = self.owner.pop(conn) == "client"
        waited = conn in self.waited
        self.waited.discard(conn)
        self.core.lost(slot)
        self.lost_count += 1
        assert not slot.out
        assert conn in self.core.to_close
        if request:
            self._request(retry=True, queued=waited)

    def _do_waiter(self, data: st.DataObject) -> None:
        """A waiter returns to its caller: woken (with a connection or an error), or it gives
        up (timeout, cancellation), maybe after it was woken: a race the shell settles under
        its lock with abandon()."""
        how = data.draw(st.sampled_from(["collect", "collect", "timeout", "cancel"]), label="how")
        if how == "collect":
            if not self.woken:
                return
            waiter = self.woken.pop(data.draw(st.integers(0, len(self.woken) - 1), label="w"))
            if waiter.slot is not None:
                self.owner[waiter.slot.conn] = "client"
                self.held[waiter.slot.conn] = waiter.slot
                self.waited.add(waiter.slot.conn)
            return
        timed_out = how == "timeout"
        candidates = self.queue + self.woken
        waiter = candidates[data.draw(st.integers(0, len(candidates) - 1), label="w")]
        handed, error = waiter.slot, waiter.error
        slot = self.core.abandon(waiter, timed_out)
        assert waiter not in self.core.waiters
        if handed is not None:
            assert slot is handed
            self.woken.remove(waiter)
            if timed_out:  # the shell gives the client the connection it was handed anyway
                self.owner[handed.conn] = "client"
                self.held[handed.conn] = handed
                self.waited.add(handed.conn)
            else:  # cancelled: the shell gives it back
                self._give_back(handed, True)
            return
        assert slot is None
        if waiter in self.woken:
            self.woken.remove(waiter)
        else:
            self.queue.remove(waiter)
        if timed_out and error is None:
            self.timeouts += 1

    def _do_take_work(self, data: st.DataObject) -> None:
        self._take_work()

    def _do_open(self, data: st.DataObject) -> None:
        self._open()

    def _do_attempt_ok(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, len(self.attempts) - 1), label="attempt")
        seconds = data.draw(st.sampled_from([0.001, 0.05, 2.0]), label="seconds")
        self._attempt_succeeds(self.attempts.pop(index), seconds)

    def _do_attempt_fail(self, data: st.DataObject) -> None:
        """An attempt fails (then maybe retries); once the pool is closed, it may stop instead
        (the retrier sees the pool closing while it sleeps; the others are cancelled)."""
        index = data.draw(st.integers(0, len(self.attempts) - 1), label="attempt")
        if self.core.closed and data.draw(st.booleans(), label="abandoned"):
            attempt = self.attempts.pop(index)
            retrier = self.core.retrier
            self.core.attempt_abandoned(attempt.tries > 0)
            assert self.core.retrier == (retrier and not attempt.tries)
        else:
            self._attempt_fails(index)

    def _do_tick(self, data: st.DataObject) -> None:
        """Time passes; the maintenance worker may run."""
        self.now += data.draw(st.sampled_from(TICKS), label="seconds")
        if data.draw(st.booleans(), label="maintain"):
            self._maintain()

    def _do_admin(self, data: st.DataObject) -> None:
        """The rarer calls: resize(), drain(), check(), pop_stats(), open(), close()."""
        what = data.draw(st.sampled_from(ADMIN), label="admin")
        if what == "resize":
            min_size = data.draw(st.integers(0, 3), label="min_size")
            self._resize(min_size, max(1, min_size + data.draw(st.integers(0, 3), label="+")))
        elif what == "drain":
            self._drain()
        elif what == "take_idle":
            self._take_idle()
        elif what == "reset":
            self.core.reset_counters()
            self._zero_counters()
            # the connections awaiting take_work() were counted as closed before the reset
            self.closed_count = -len(self.core.to_close)
        elif what == "open":
            self._open()
        else:
            self._close()

    # -- the actions ----------------------------------------------------------------------------

    def _open(self) -> None:
        if self.core.closed:
            with pytest.raises(PoolClosed, match="cannot be opened again"):
                self.core.open()
        else:
            self.core.open()
            assert self.core.opened
            assert self.core.work

    def _close(self) -> None:
        core = self.core
        if core.closed:
            return  # the shell's close() returns at once
        idle_before = list(core.idle)
        waiters = core.close()
        assert core.closed
        assert waiters == self.queue
        assert not core.waiters
        assert not core.idle
        assert all(slot.conn in core.to_close for slot in idle_before)
        for waiter in waiters:  # the shell wakes them, out of the core
            assert waiter.slot is None
            assert isinstance(waiter.error, PoolClosed)
            waiter.wake()
        self._collect_wakes()
        assert not self.queue

    def _resize(self, min_size: int, max_size: int) -> None:
        core = self.core
        before = list(core.idle)
        core.resize(min_size, max_size)
        assert (core.min_size, core.max_size) == (min_size, max_size)
        assert core.work
        # idle connections beyond the new max_size close now, the longest idle first
        excess = max(0, len(before) + core.in_use - max_size)
        gone = min(excess, len(before))
        assert core.idle == before[gone:]
        assert all(slot.conn in core.to_close for slot in before[:gone])
        # in use beyond max_size: they close when they come back; nothing grows meanwhile
        self.ceiling = max(max_size, self._total())

    def _drain(self) -> None:
        core = self.core
        generation = core.generation
        before = list(core.idle)
        core.drain()
        assert core.generation == generation + 1
        assert not core.idle
        assert all(slot.conn in core.to_close for slot in before)
        assert core.work

    def _take_idle(self) -> None:
        """pool.check(): every idle connection checked out at once (expired ones too: the
        check gives them back with checkin(), which closes them)."""
        before = list(self.core.idle)
        slots = self.core.take_idle(self.now)
        assert slots == before
        assert not self.core.idle
        for slot in slots:
            self._hand_out(slot, "check", expiry=False)
            self.held[slot.conn] = slot

    def _request(self, retry: bool = False, queued: bool = False) -> None:
        """checkout(), then enqueue() if it found nothing. ``retry``: the same request again,
        after the connection it got was dead; ``queued``: that request had waited already."""
        core = self.core
        if core.closed or not core.opened:
            with pytest.raises(PoolClosed):
                core.checkout(self.now, retry)
            return
        idle_before = list(core.idle)
        had_waiters = bool(core.waiters)
        slot = core.checkout(self.now, retry)
        if not retry:
            self.requests += 1
        if had_waiters:  # nobody overtakes a queued request
            assert slot is None
            assert core.idle == idle_before
        else:
            live = [i for i, s in enumerate(idle_before) if s.expires_at > self.now]
            top = live[-1] if live else -1
            # the expired connections above the first live one are closed, never handed out
            assert all(s.conn in core.to_close for s in idle_before[top + 1 :])
            assert core.idle == idle_before[: max(top, 0)]
            if top >= 0:
                assert slot is idle_before[top]
            else:
                assert slot is None
        if slot is not None:
            assert slot.checked_out_at == self.now
            self._hand_out(slot, "client")
            self.held[slot.conn] = slot
            if queued:
                self.waited.add(slot.conn)
            return
        waiter = FakeWaiter(self._new_id(), self.wake_log)
        full = bool(core.max_waiting) and len(self.queue) >= core.max_waiting
        try:
            core.enqueue(waiter, queued)
        except TooManyRequests as ex:
            assert full
            assert "max_waiting" in str(ex)
            self.rejected += 1
        else:
            assert not full
            assert core.work
            self.queue.append(waiter)
            if not queued:
                self.requests_queued += 1

    def _take_work(self) -> None:
        core = self.core
        was_retrying = core.retrying
        to_close, n = core.take_work()
        assert not core.work
        assert core.to_close == []
        assert n >= 0
        if was_retrying or core.closed or not core.opened:
            assert n == 0, "take_work started attempts while one retries, or on a closed pool"
        assert len(set(to_close)) == len(to_close), "a connection closed twice"
        for conn in to_close:
            assert conn in self.open_conns, f"closing {conn}, not open"
            assert conn not in self.owner, f"closing {conn}, still handed out"
            assert conn not in core.slots
            self.open_conns.remove(conn)
        self.closed_count += len(to_close)
        self.total_closed += len(to_close)
        self.attempts.extend(Attempt(self._new_id()) for _ in range(n))
        if core.opened and not core.closed:
            if core.retrying:  # the retrying attempt goes on
                assert core.connecting >= 1
            else:  # enough attempts for min_size and for the waiters, within max_size and
                # within the cap on attempts in progress at once
                cap = core.num_workers
                assert core.connecting <= cap
                assert self._total() >= min(core.min_size, core.size + cap)
                assert core.connecting >= min(len(core.waiters), core.max_size - core.in_use, cap)
            if core.waiters:  # somebody will serve them: a connection attempt or a return
                assert core.connecting + core.in_use >= 1

    def _attempt_succeeds(self, attempt: Attempt, seconds: float) -> None:
        core = self.core
        conn = self._new_id()
        retrier = core.retrier
        slot = core.new_slot(conn, self.now, seconds, attempt.tries > 0)
        self.opened += 1
        self.total_opened += 1
        self.open_conns.add(conn)
        assert slot.conn == conn
        assert not slot.out
        assert slot.generation == core.generation
        assert self.now + core.max_lifetime * (1 - _core.LIFETIME_JITTER) <= slot.expires_at
        assert slot.expires_at <= self.now + core.max_lifetime
        assert not core.retrying  # the server answers: attempts may start again
        assert core.retrier == (retrier and not attempt.tries)
        assert core.last_error is None
        room = self._total() < core.max_size
        head = self.queue[0] if self.queue else None
        core.place(slot, self.now)
        assert core.work
        self._collect_wakes()
        if core.closed or not room:
            assert conn in core.to_close
        elif head is not None:
            assert head.slot is slot
        else:
            assert core.idle[-1] is slot

    def _attempt_fails(self, index: int) -> None:
        core = self.core
        attempt = self.attempts[index]
        retrier = core.retrier
        previous_delay = core.retry_delay
        delay = core.connect_failed(self.now, "OperationalError: connection refused", attempt.tries)
        self.failed += 1
        assert core.last_error == "OperationalError: connection refused"
        if attempt.tries == 0 and (retrier or core.closed):  # another one retries: stand down
            assert delay is None
            assert core.retrier == retrier
            self.attempts.pop(index)
            # the shell carries out the work after an attempt that stops (whether that starts
            # a new attempt at once: test_attempt_standing_down_is_not_replaced_at_once)
            self._take_work()
            return
        if core.closed or not self._demand():  # nothing to retry for
            assert delay is None
            assert not core.retrier
            assert not core.retrying
            self.attempts.pop(index)
            self._take_work()
            return
        assert delay is not None
        assert core.retrier  # this attempt, now or already
        assert core.retrying  # the last try failed: no new attempts
        # exponential backoff with jitter, capped
        base = (
            _core.RETRY_INITIAL_DELAY
            if attempt.tries == 0
            else min(previous_delay * 2.0, _core.RETRY_MAX_DELAY)
        )
        assert core.retry_delay == base
        low, high = base * (1 - _core.RETRY_JITTER), base * (1 + _core.RETRY_JITTER)
        assert low - 1e-9 <= delay <= high + 1e-9
        attempt.tries += 1
        started = core.retry_started
        gave_up = core.retry_gave_up(self.now)
        assert gave_up == (self.now - started >= core.reconnect_timeout)
        if gave_up:  # once per reconnect_timeout: the clock restarts
            assert core.retry_started == self.now
            assert core.reconnect_timeout == 0 or not core.retry_gave_up(self.now)

    def _maintain(self) -> None:
        core = self.core
        now = self.now
        before = list(core.idle)
        delay = core.maintain(now)
        after = core.idle
        kept = {id(s) for s in after}
        assert after == [s for s in before if id(s) in kept]  # order kept
        for slot in before:
            if id(slot) not in kept:
                assert slot.expires_at <= now or now - slot.last_used >= core.max_idle
                assert slot.conn in core.to_close
        assert all(slot.expires_at > now for slot in after), "maintain kept an expired one"
        trimming = len(after) + core.in_use > core.min_size
        if trimming:  # above min_size nothing stays idle longer than max_idle
            assert all(now - slot.last_used < core.max_idle for slot in after)
        assert 0 < delay <= 60.0
        # a connection placed or returned before the next run must not outlive its lifetime,
        # nor (while the pool may shrink) max_idle, by more than the time until that run
        assert delay <= max(0.01, core.max_lifetime) + 1e-6
        if core.max_size > core.min_size:
            assert delay <= max(0.01, core.max_idle) + 1e-6
        for slot in after:  # the next run is due no later than the next expiry
            assert delay <= max(0.01, slot.expires_at - now) + 1e-6
            if trimming:
                assert delay <= max(0.01, slot.last_used + core.max_idle - now) + 1e-6

    # -- invariants -----------------------------------------------------------------------------

    @invariant()
    def consistent(self) -> None:
        core = self.core
        assert core.connecting == len(self.attempts) >= 0
        assert core.in_use == len(self.owner) >= 0
        assert list(core.waiters) == self.queue
        if core.waiters:
            assert not core.idle, "a request waits while a connection is idle"
        idle = [slot.conn for slot in core.idle]
        assert len(set(idle)) == len(idle), "a connection twice on the idle stack"
        assert not set(idle) & set(self.owner), "a connection idle and handed out"
        assert all(not slot.out and core.slots.get(slot.conn) is slot for slot in core.idle)
        assert all(core.slots[conn].out for conn in self.owner)
        assert set(core.slots) == set(idle) | set(self.owner)
        assert len(set(core.to_close)) == len(core.to_close)
        assert not set(core.to_close) & set(core.slots)
        assert set(core.slots) | set(core.to_close) == self.open_conns
        # never more than max_size; after resize() lowered it, the excess only shrinks
        total = self._total()
        assert total <= self.ceiling, f"{total} connections, allowed {self.ceiling}"
        self.ceiling = max(core.max_size, total)
        # counters
        assert core.requests == self.requests
        assert core.requests_queued == self.requests_queued
        assert core.timeouts == self.timeouts
        assert core.rejected == self.rejected
        assert core.connections_opened == self.opened
        assert core.connections_failed == self.failed
        assert core.connections_lost == self.lost_count
        assert core.returns_bad == self.returns_bad
        assert core.connections_closed == self.closed_count + len(core.to_close)
        # the shell acts only when work is flagged: nothing may be pending without it
        if core.to_close or core._wanted() > 0:
            assert core.work, "work pending but not flagged"
        # one attempt at most retries; retrying (which blocks growth) needs it alive
        retriers = [a for a in self.attempts if a.tries]
        assert len(retriers) <= 1, "two attempts retry at once"
        assert core.retrier == bool(retriers)
        if core.retrying:
            assert core.retrier, "retrying, but no attempt retries"
        if core.closed:
            assert not core.idle
            assert not core.waiters

    def teardown(self) -> None:
        """Shut down as the shell does; then every connection opened has been closed."""
        if not hasattr(self, "core"):
            return
        core = self.core
        if not core.closed:
            for waiter in core.close():
                waiter.wake()
        self._collect_wakes()
        for waiter in self.woken:
            slot = core.abandon(waiter, timed_out=False)
            if slot is not None:
                del self.owner[slot.conn]
                core.checkin(slot, self.now, True)
        self.woken.clear()
        for slot in self.held.values():
            del self.owner[slot.conn]
            core.checkin(slot, self.now, True)
        self.held.clear()
        for attempt in self.attempts:
            assert core.connect_failed(self.now, "closed", attempt.tries) is None
        self.attempts.clear()
        to_close, n = core.take_work()
        assert n == 0
        self.total_closed += len(to_close)
        assert core.in_use == 0
        assert core.connecting == 0
        assert not core.idle
        assert not core.waiters
        assert not core.slots
        assert not core.retrying
        assert not core.retrier
        assert self.total_closed == self.total_opened, "a connection was never closed"


def test_core_state_machine() -> None:
    run_state_machine_as_test(
        CoreMachine,
        settings=settings(
            max_examples=300,
            stateful_step_count=60,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


# -- specific cases ----------------------------------------------------------------------------


def _queue(core: PoolCore[int], n: int, now: float, log: list[FakeWaiter]) -> list[FakeWaiter]:
    waiters = []
    for i in range(n):
        assert core.checkout(now) is None
        waiter = FakeWaiter(i, log)
        core.enqueue(waiter)
        waiters.append(waiter)
    return waiters


def test_checkout_before_open_and_after_close() -> None:
    core = make_core(0, 2)
    with pytest.raises(PoolClosed, match="not open yet"):
        core.checkout(0.0)
    assert core.take_work() == ([], 0)
    core.open()
    core.close()
    with pytest.raises(PoolClosed, match="is closed"):
        core.checkout(0.0)
    with pytest.raises(PoolClosed, match="cannot be opened again"):
        core.open()
    assert core.requests == 0


def test_one_attempt_retries_at_a_time() -> None:
    """While the server flaps, connection attempts must not pile up retrying: one retries,
    the others stand down at their first failure, even after another attempt got through."""
    core = make_core(0, 4)
    core.open()
    log: list[FakeWaiter] = []
    _queue(core, 3, 0.0, log)
    assert core.take_work() == ([], 3)  # attempts A, B and C
    assert core.connect_failed(1.0, "refused", 0) is not None  # A fails: it retries
    assert core.retrying
    core.place(core.new_slot(1, 1.0, 0.01), 1.0)  # B gets through (the server flaps)
    assert not core.retrying  # new attempts may start
    _queue(core, 1, 1.0, log)  # one more client
    assert core.take_work()[1] == 1  # attempt D
    d_retries = core.connect_failed(1.1, "refused", 0) is not None  # D fails
    a_retries = core.connect_failed(1.3, "refused", 1) is not None  # A's second try fails
    assert not (a_retries and d_retries), "two attempts retry at once"


def test_attempt_standing_down_is_not_replaced_at_once() -> None:
    """The server refuses most connections (too many clients, a restart): one attempt retries
    with backoff; an attempt that fails meanwhile stands down, and the shell's take_work() right
    after must not start another one at once, or they follow each other in a busy loop until
    the retrier's next try."""
    core = make_core(3, 3)
    core.open()
    assert core.take_work() == ([], 3)  # attempts A, B and C
    assert core.connect_failed(0.0, "too many clients", 0) is not None  # A: the retrier
    core.place(core.new_slot(1, 0.0, 0.01), 0.0)  # B gets through
    assert core.connect_failed(0.0, "too many clients", 0) is None  # C stands down
    assert core.take_work() == ([], 0), "a new attempt starts at once"
