"""A pooled connection's rules (``_client.ClientRules``) as a hypothesis state machine, with no
database: random statements, blocks, releases, undos and closes under each built-in policy,
checking after every step what must always hold."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pgpoolkit import (
    Action,
    ClientState,
    Event,
    PolicyViolation,
    SessionPolicy,
    StatementPolicy,
    TransactionPolicy,
)
from pgpoolkit._client import ClientRules, SessionDetail
from pgpoolkit._session_state import PLAIN, SessionChange, inspect_statement
from pgpoolkit.policies import Policy

TEXTS = [
    "SELECT 1",
    "INSERT INTO t VALUES (1)",
    "BEGIN",
    "SET work_mem = '8MB'",
    "SET ROLE alice",
    "LISTEN ch",
    "UNLISTEN *",
    "CREATE TEMP TABLE tt (x int)",
    "DROP TABLE tt",
    "SELECT pg_advisory_lock(1)",
    "SELECT pg_advisory_unlock_all()",
    "PREPARE p AS SELECT 1",
    "DEALLOCATE p",
    "RESET ALL",
    "RESET ROLE",
    "DISCARD ALL",
    "LOAD 'auto_explain'",
    "SELECT set_config('x.y', 'z', false)",
]

POLICIES = {
    "session": SessionPolicy,
    "transaction": TransactionPolicy,
    "transaction-error": lambda: TransactionPolicy(on_session_state="error"),
    "statement": StatementPolicy,
    "statement-error": lambda: StatementPolicy(on_session_state="error"),
}


class ClientRulesMachine(RuleBasedStateMachine):
    """The shell's side, simulated: whether the client is bound and whether the server
    reports a transaction open."""

    rules_: ClientRules
    policy: Policy

    @initialize(name=st.sampled_from(sorted(POLICIES)))
    def start(self, name: str) -> None:
        self.name = name
        self.policy = POLICIES[name]()
        self.policy.validate()
        self.rules_ = ClientRules(self.policy)
        self.bound = False
        self.in_transaction = False

    def snapshot(self) -> tuple[object, ...]:
        r = self.rules_
        return (frozenset(r.pins), frozenset(r.undo_pending), r.dirty, r.discard, r.holds)

    def after_statement(self, still_open: bool) -> None:
        self.in_transaction = still_open or self.rules_.holds > 0
        if self.rules_.releases(not self.in_transaction):
            assert not self.rules_.pins and not self.rules_.holds and not self.rules_.users
            assert self.policy.decide(ClientState.BOUND, Event.IDLE_AFTER) is Action.RELEASE
            self.rules_.hand_back()
            self.bound = False

    @rule(text=st.sampled_from(TEXTS), still_open=st.booleans())
    def statement(self, text: str, still_open: bool) -> None:
        info = inspect_statement(text)
        before = self.snapshot()
        try:
            self.rules_.before(info, Event.STATEMENT, "", self.bound, self.in_transaction)
        except PolicyViolation as ex:
            assert self.snapshot() == before, "a refusal must change nothing"
            assert self.policy.name in str(ex)
            return
        self.bound = True
        self.after_statement(still_open or info.begins)

    @rule()
    def begin_block(self) -> None:
        before = self.snapshot()
        try:
            self.rules_.before(PLAIN, Event.BEGIN, "transaction()", self.bound, self.in_transaction)
        except PolicyViolation:
            assert self.snapshot() == before
            assert self.name.startswith("statement"), "only statement mode refuses a block"
            return
        self.bound = True
        self.rules_.holds += 1
        self.in_transaction = True

    @precondition(lambda self: self.rules_.holds > 0)
    @rule()
    def end_block(self) -> None:
        self.rules_.holds -= 1
        self.after_statement(False)

    @precondition(lambda self: self.bound and not self.in_transaction)
    @rule()
    def unseen_change(self) -> None:
        pinned_now, refused = self.rules_.unseen_change(False)
        assert self.rules_.dirty, "a change the server reported is always reset"
        if self.name.endswith("error"):
            assert refused is not None and not pinned_now
        self.after_statement(False)

    @precondition(lambda self: bool(self.rules_.undo_pending))
    @rule(left=st.sets(st.sampled_from(list(SessionChange))))
    def server_says_what_is_left(self, left: set[SessionChange]) -> None:
        pins_before = set(self.rules_.pins)
        checked = self.rules_.undo_to_check()
        assert checked <= pins_before
        self.rules_.still_there(checked, left)
        assert self.rules_.pins <= pins_before, "an undo never adds a pin"
        if SessionChange.LOAD in pins_before:
            assert SessionChange.LOAD in self.rules_.pins, "nothing unloads a library"

    @rule()
    def close(self) -> None:
        dirty = self.rules_.dirty
        self.rules_.on_close(self.bound, self.in_transaction)
        back = self.rules_.hand_back()
        assert back.reset == (
            dirty
            or self.rules_.policy.decide(
                self.rules_.state(self.bound, self.in_transaction), Event.CLOSE
            )
            is Action.RESET
        )
        assert not self.rules_.pins and not self.rules_.dirty
        self.rules_.holds = 0
        self.bound = self.in_transaction = False

    @invariant()
    def pins_are_reset_and_mode_bound(self) -> None:
        r = self.rules_
        if r.pins:
            assert r.dirty, "a pinned client's session is reset when it goes back"
        if SessionChange.LOAD in r.pins:
            assert r.discard
        if self.name == "session" or self.name.endswith("error"):
            assert not r.pins, f"{self.name} never pins"
        if r.holds:
            assert self.bound
        if self.name.startswith("statement"):
            assert not r.holds, "statement mode holds no transaction block"


TestClientRules = ClientRulesMachine.TestCase
TestClientRules.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)


def test_session_detail_is_a_string_with_the_changes() -> None:
    seen: list[object] = []

    class Watching(TransactionPolicy):
        name = "watching"

        def decide(self, state: ClientState, event: Event, detail: str = "") -> Action:
            seen.append(detail)
            return super().decide(state, event, detail)

    rules = ClientRules(Watching())
    rules.before(inspect_statement("LISTEN x; SET ROLE y"), Event.STATEMENT, "", True, False)
    details = [d for d in seen if isinstance(d, SessionDetail)]
    assert details and details[0].changes == {SessionChange.LISTEN, SessionChange.ROLE}
    assert "LISTEN" in details[0]  # still the display text old policies compare


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_close_asks_the_policy(name: str) -> None:
    class ResetAlways(type(POLICIES[name]())):  # type: ignore[misc]
        def decide(self, state: ClientState, event: Event, detail: str = "") -> Action:
            if event is Event.CLOSE:
                return Action.RESET
            return super().decide(state, event, detail)

    rules = ClientRules(ResetAlways())
    rules.on_close(True, False)
    assert rules.hand_back().reset  # a clean client's session reset all the same
