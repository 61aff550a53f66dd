"""The rules of one pooled connection, with no I/O: what its policy decides, event by event.

``_core.py`` holds the pool's rules; this module holds a client's. A pooled connection
(``aio/connection.py``, ``aio/transaction_mode.py``) reports each event here and carries out the
answer; every decision goes through the policy's ``(state, event) -> action`` table
(``policies.py``): ``CONNECT`` (bind now, or at the first statement), ``STATEMENT`` and
``BEGIN`` (bind, or refuse), ``SESSION_STATE`` (pin, reset on release, or refuse),
``IDLE_AFTER`` (release, or keep) and ``CLOSE`` (release, or reset the session whatever it did).
It runs without a database under hypothesis (``tests/test_client_rules.py``).
"""

from __future__ import annotations

from typing import NamedTuple

from ._session_state import NOT_RESETTABLE, UNDONE_BY_TEXT, UNSEEN, SessionChange, StatementInfo
from .errors import PolicyViolation
from .policies import Action, ClientState, Event, Policy

__all__ = ["Answers", "ClientRules", "HandBack", "SessionDetail", "binds_for_the_session"]


#: no kinds of session state (the sets are frozen: a client that changes nothing allocates none)
_NONE: frozenset[SessionChange] = frozenset()


class SessionDetail(str):
    """What ``Policy.decide()`` gets as ``detail`` for a session change: the display text
    ("LISTEN, a temporary table"), and ``changes``, the kinds of session state as a set."""

    changes: frozenset[SessionChange]

    def __new__(cls, text: str, changes: frozenset[SessionChange]) -> SessionDetail:
        self = super().__new__(cls, text)
        self.changes = changes
        return self


class HandBack(NamedTuple):
    """What the pool must know of a server connection a client gives back."""

    #: the session was changed: reset it (DISCARD ALL) before it is reused
    reset: bool
    #: it was changed beyond what a reset undoes (LOAD): close it
    discard: bool
    #: the client was pinned to it (the pool counts pinned clients)
    unpinned: bool


#: what a client that changed nothing hands back
_CLEAN = HandBack(False, False, False)


def binds_for_the_session(policy: Policy) -> bool:
    """The policy binds a client at connect and never releases it before close (session
    pooling): its clients borrow a server connection once, not per transaction."""
    return (
        policy.decide(ClientState.IDLE, Event.CONNECT) is Action.BIND
        and policy.decide(ClientState.BOUND, Event.IDLE_AFTER) is not Action.RELEASE
    )


class Answers(NamedTuple):
    """The policy's answers to the events of every statement, asked once per pool (a policy's
    answer depends on the state and the event; only session changes carry a detail that
    matters): what keeps the hot path to attribute reads."""

    #: a client holding no server connection may run a statement (it binds for it)
    statement_allowed_when_idle: bool
    #: a client whose transaction ended gives its server connection back
    releases_when_idle: bool
    #: the policy may answer RESET to a close (then every close asks it)
    close_may_reset: bool

    @classmethod
    def of(cls, policy: Policy) -> Answers:
        return cls(
            policy.decide(ClientState.IDLE, Event.STATEMENT) is not Action.REFUSE,
            policy.decide(ClientState.BOUND, Event.IDLE_AFTER) is Action.RELEASE,
            any(policy.decide(state, Event.CLOSE) is Action.RESET for state in ClientState),
        )


class ClientRules:
    """A client's state as its policy sees it, and the policy's answers.

    The shell tells it whether the client holds a server connection (``bound``) and whether a
    transaction is open there (``in_transaction``): that is the server's to say, not a rule.
    """

    __slots__ = (
        "answers",
        "dirty",
        "discard",
        "holds",
        "keeps_locks",
        "pins",
        "policy",
        "undo_pending",
        "users",
    )

    def __init__(
        self, policy: Policy, answers: Answers | None = None, keeps_locks: bool = False
    ) -> None:
        self.policy = policy
        self.answers = answers or Answers.of(policy)
        #: the server connections hold advisory locks of their own (a budget shared across
        #: processes): a client's advisory unlock may release one, so its session is reset
        #: (and the lock taken again) when the server connection goes back
        self.keeps_locks = keeps_locks
        #: the kinds of session state that keep the client on its server connection
        self.pins: frozenset[SessionChange] = _NONE
        #: the kinds that statements since the last look may have undone
        self.undo_pending: frozenset[SessionChange] = _NONE
        #: reset the session (DISCARD ALL) when the server connection goes back
        self.dirty = False
        #: close the server connection when it goes back
        self.discard = False
        #: blocks (transaction, pipeline, COPY, stream) that keep the server connection
        self.holds = 0
        #: statements under way (threads or tasks sharing the client)
        self.users = 0

    @property
    def pinned(self) -> bool:
        return bool(self.pins)

    def state(self, bound: bool, in_transaction: bool) -> ClientState:
        if not bound:
            return ClientState.IDLE
        if self.pins:
            return ClientState.PINNED
        return ClientState.IN_TRANSACTION if in_transaction else ClientState.BOUND

    def _refuse_if(self, action: Action, event: Event, detail: str) -> None:
        if action is Action.REFUSE:
            raise PolicyViolation(self.policy.refusal(event, detail))

    def before(
        self,
        info: StatementInfo,
        event: Event,
        detail: str,
        bound: bool,
        in_transaction: bool,
        kept_setting: bool = False,
    ) -> str | None:
        """A statement (``event`` STATEMENT) or a transaction (BEGIN) is about to start, which
        ``info`` says more of. Raise PolicyViolation if the policy refuses any of it (nothing
        changed then). Return the detail to log if it pins the client now (None otherwise).
        ``kept_setting``: a plain setting the client keeps itself (not a session change)."""
        if event is Event.STATEMENT and not info.begins and not info.changes and not info.undoes:
            if not bound and not self.answers.statement_allowed_when_idle:
                raise PolicyViolation(self.policy.refusal(Event.STATEMENT, detail))
            return None  # a plain statement: the common case, no call into the policy
        state = self.state(bound, in_transaction)
        if event is not Event.STATEMENT:
            self._refuse_if(self.policy.decide(state, event, detail), event, detail)
        if not bound:
            self._refuse_if(
                self.policy.decide(state, Event.STATEMENT, detail), Event.STATEMENT, detail
            )
        if info.begins:
            begin = "an explicit BEGIN"
            self._refuse_if(self.policy.decide(state, Event.BEGIN, begin), Event.BEGIN, begin)
        pinned_now = None
        if info.changes and not kept_setting:
            session = SessionDetail(info.detail, info.changes)
            action = self.policy.decide(state, Event.SESSION_STATE, session)
            self._refuse_if(action, Event.SESSION_STATE, info.detail)
            self.dirty = True
            if action is Action.PIN:
                if not self.pins:
                    pinned_now = info.detail
                self.pins |= info.changes
            if info.changes & NOT_RESETTABLE:
                self.discard = True
        if info.undoes and self.pins:
            self.undo_pending |= info.undoes
        if self.keeps_locks and SessionChange.ADVISORY_LOCK in info.undoes:
            self.dirty = True
        return pinned_now

    def releases(self, idle: bool) -> bool:
        """After a statement, commit or rollback, or a block's end, with nobody else using
        the client: the policy's IDLE_AFTER, if the server reports no transaction open and
        nothing holds the server connection."""
        return (
            idle
            and not self.users
            and not self.holds
            and not self.pins
            and self.answers.releases_when_idle
        )

    def unseen_change(self, in_transaction: bool) -> tuple[bool, str | None]:
        """The server reported a session parameter changing that no statement showed: it is
        reset whatever the policy says (too late to refuse). Return (pinned now, the refusal
        to log, if the policy would have refused it)."""
        detail = "a session parameter changed, as the server reported"
        session = SessionDetail(detail, UNSEEN)
        action = self.policy.decide(self.state(True, in_transaction), Event.SESSION_STATE, session)
        self.dirty = True
        if action is Action.PIN:
            newly = not self.pins
            self.pins |= UNSEEN  # what changed is unknown: a RESET or DISCARD ALL tells
            return newly, None
        if action is Action.REFUSE:
            return False, self.policy.refusal(Event.SESSION_STATE, detail)
        return False, None

    def undo_to_check(self) -> frozenset[SessionChange]:
        """Statements that may undo what pins the client ran: the kinds the text proves undone
        (settings, roles) go now; return those to ask the server about."""
        pending, self.undo_pending = self.undo_pending, _NONE
        self.pins -= pending & UNDONE_BY_TEXT
        return self.pins & pending

    def still_there(self, checked: frozenset[SessionChange], left: set[SessionChange]) -> None:
        """The server said which of the ``checked`` kinds are ``left``: forget the others
        (LOAD, which nothing undoes, is never checked: it stays)."""
        self.pins -= checked - left

    def on_close(self, bound: bool, in_transaction: bool) -> None:
        """The client closes: a policy answering RESET resets the session whatever the client
        did (a multi-tenant application that trusts nothing a client leaves). Only asked
        when ``answers.close_may_reset``."""
        action = self.policy.decide(self.state(bound, in_transaction), Event.CLOSE)
        if action is Action.RESET:
            self.dirty = True

    def hand_back(self) -> HandBack:
        """The server connection goes back: what the pool must do, and a clean slate."""
        if not (self.dirty or self.discard or self.pins):  # the common case: no allocation
            self.undo_pending = _NONE
            return _CLEAN
        back = HandBack(self.dirty, self.discard, bool(self.pins))
        self.dirty = self.discard = False
        self.pins = self.undo_pending = _NONE
        return back
