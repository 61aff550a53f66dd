"""Pooling policies: when a client is bound to a server connection and when it lets it go.

A policy is pure decisions, no I/O, written as a table in the manner of h11's ``_state.py``:
``(client state, event) -> action``. The pooled connection (the client side) reports every event
to its policy and carries out the action; the pool core and its I/O shells do the rest.

======================  ==============  ===============  ================
event                   session         transaction      statement
======================  ==============  ===============  ================
connect                 bind            -                -
statement               bind            bind             bind
begin (a transaction)   -               bind             refuse
idle after statement    -               release          release
session state change    reset           pin (or refuse)  pin (or refuse)
close                   release         release          release
======================  ==============  ===============  ================

"-" is ``Action.NONE``; a pinned client is never released before it closes.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Literal

__all__ = [
    "Action",
    "ClientState",
    "Event",
    "Policy",
    "SessionPolicy",
    "StatementPolicy",
    "TransactionPolicy",
    "policy_for_mode",
]


class ClientState(Enum):
    """Where a client (a pooled connection) stands with respect to the server."""

    #: open, holding no server connection
    IDLE = "idle"
    #: holding a server connection, no transaction open
    BOUND = "bound"
    #: holding a server connection inside a transaction
    IN_TRANSACTION = "in transaction"
    #: holding a server connection until it closes (it changed session state)
    PINNED = "pinned"


class Event(Enum):
    """What a client is doing, as reported to its policy."""

    #: the client was just created by ``pool.connect()``
    CONNECT = "connect"
    #: a statement is about to run
    STATEMENT = "statement"
    #: a multi-statement transaction is about to open (``transaction()``, autocommit off,
    #: an explicit BEGIN)
    BEGIN = "begin"
    #: a statement, commit or rollback ended and the server reports no open transaction
    IDLE_AFTER = "idle after statement"
    #: a statement is about to leave session state on the server connection (SET, LISTEN, ...)
    SESSION_STATE = "session state change"
    #: the client is closing
    CLOSE = "close"


class Action(Enum):
    """What the client does about an event."""

    #: nothing: go on
    NONE = "none"
    #: take a server connection now, if not holding one
    BIND = "bind"
    #: give the server connection back to the pool now
    RELEASE = "release"
    #: keep the server connection until the client closes
    PIN = "pin"
    #: go on, and reset the server connection's session when it is released
    RESET = "reset"
    #: raise PolicyViolation before anything reaches the server
    REFUSE = "refuse"


#: the actions each event may take (``Policy.validate()``): a session change must be pinned,
#: reset or refused, never ignored (it would reach the next client)
ALLOWED: Mapping[Event, frozenset[Action]] = {
    Event.CONNECT: frozenset({Action.NONE, Action.BIND}),
    Event.STATEMENT: frozenset({Action.NONE, Action.BIND, Action.REFUSE}),
    Event.BEGIN: frozenset({Action.NONE, Action.BIND, Action.REFUSE}),
    Event.IDLE_AFTER: frozenset({Action.NONE, Action.RELEASE}),
    Event.SESSION_STATE: frozenset({Action.PIN, Action.RESET, Action.REFUSE}),
    Event.CLOSE: frozenset({Action.NONE, Action.RELEASE, Action.RESET}),
}

#: ``None`` in a table key's state stands for any state
TableKey = tuple[ClientState | None, Event]
SessionStateChoice = Literal["pin", "error"]


class Policy:
    """The interface every pooling mode implements; subclass it to write your own.

    A policy is a table of ``(ClientState | None, Event) -> Action`` (``None``: any state)
    plus a few attributes. ``decide()`` looks an event up, the exact state first, then any
    state, and answers ``Action.NONE`` when the table is silent; override it to decide on more
    than the table says (the ``detail`` argument names the statement or session change).

    ``name``
        the mode's name, shown in stats, reprs and error messages.
    ``autocommit``
        the autocommit setting of new clients (None: the connection's own default).
    ``way_out``
        what to tell a user whose operation the policy refuses.
    ``replays_settings``
        a client that borrows server connections keeps a plain ``SET name = value`` (``RESET
        name``, ``set_config(name, value, false)``) run in autocommit instead of reporting a
        session change: the pool sets it on each server connection the client borrows, where
        it differs (transaction and statement modes: True).
    """

    name: str = "custom"
    table: Mapping[TableKey, Action] = {}
    autocommit: bool | None = None
    way_out: str = "use mode='session'"
    replays_settings: bool = False

    def validate(self) -> None:
        """Check the table and ``decide()``: every (state, event) must answer an action that
        event can take (``ALLOWED``); raise ValueError naming the state, the event and the
        action otherwise. Pools call it when they are built."""
        for key, action in self.table.items():
            if (
                not isinstance(key, tuple)
                or len(key) != 2
                or not (key[0] is None or isinstance(key[0], ClientState))
                or not isinstance(key[1], Event)
            ):
                raise ValueError(
                    f"policy {self.name!r}: table key {key!r} is not (ClientState or None, Event)"
                )
            if not isinstance(action, Action):
                raise ValueError(
                    f"policy {self.name!r}: table[{key!r}] is {action!r}, not an Action"
                )
        for state in ClientState:
            for event in Event:
                action = self.decide(state, event, "")
                allowed = ALLOWED[event]
                if action not in allowed:
                    raise ValueError(
                        f"policy {self.name!r}: ({state.name}, {event.name}) -> "
                        f"{getattr(action, 'name', action)} is not an action for "
                        f"{event.name}; it takes one of " + ", ".join(a.name for a in allowed)
                    )

    def decide(self, state: ClientState, event: Event, detail: str = "") -> Action:
        """The action for ``event`` happening to a client in ``state``."""
        action = self.table.get((state, event))
        if action is None:
            action = self.table.get((None, event), Action.NONE)
        return action

    def refusal(self, event: Event, detail: str) -> str:
        """The PolicyViolation message for a refused event: the mode, what, the way out."""
        what = detail or event.value
        return f"{self.name} pooling mode does not allow {what}: {self.way_out}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SessionPolicy(Policy):
    """Session pooling: a client keeps one server connection from connect to close.

    Session state a client leaves (SET, LISTEN, temporary tables...) is reset when its
    server connection goes back to the pool, so the next client never sees it.
    """

    name = "session"
    table = {
        (ClientState.IDLE, Event.CONNECT): Action.BIND,
        (None, Event.STATEMENT): Action.BIND,
        (None, Event.SESSION_STATE): Action.RESET,
        (None, Event.CLOSE): Action.RELEASE,
    }


class TransactionPolicy(Policy):
    """Transaction pooling: a client holds a server connection only while a transaction is
    open (or for one statement in autocommit), and gives it back at commit or rollback.

    ``on_session_state`` says what happens when a client changes session state: ``"pin"`` (the
    default: it keeps its server connection until it closes, and the connection is reset
    then) or ``"error"`` (``PolicyViolation`` before the statement runs).
    """

    name = "transaction"
    way_out = (
        "keep it inside a transaction (SET LOCAL, ON COMMIT DROP, pg_advisory_xact_lock), "
        "or use mode='session' for this client"
    )

    def __init__(self, on_session_state: SessionStateChoice = "pin") -> None:
        if on_session_state not in ("pin", "error"):
            raise ValueError(f"on_session_state must be 'pin' or 'error', got {on_session_state!r}")
        self.on_session_state = on_session_state
        #: plain settings are kept by the client and replayed, unless errors are wanted
        self.replays_settings = on_session_state == "pin"
        self.table = {
            **self.base_table(),
            (None, Event.SESSION_STATE): (
                Action.PIN if on_session_state == "pin" else Action.REFUSE
            ),
        }

    @staticmethod
    def base_table() -> dict[TableKey, Action]:
        return {
            (None, Event.STATEMENT): Action.BIND,
            (None, Event.BEGIN): Action.BIND,
            (ClientState.BOUND, Event.IDLE_AFTER): Action.RELEASE,
            (None, Event.CLOSE): Action.RELEASE,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(on_session_state={self.on_session_state!r})"


class StatementPolicy(TransactionPolicy):
    """Statement pooling: a server connection per statement; clients are autocommit and a
    multi-statement transaction is refused before anything reaches the server."""

    name = "statement"
    autocommit = True
    way_out = (
        "run each statement on its own, or use mode='transaction' for multi-statement transactions"
    )
    #: the way out of a refused session state change (there is no transaction to keep it in)
    session_state_way_out = (
        "use on_session_state='pin' (the client keeps its server connection), set it up in "
        "the pool's configure callback, or use mode='session' for this client"
    )

    def __init__(self, on_session_state: SessionStateChoice = "pin") -> None:
        super().__init__(on_session_state)
        self.table = {**self.table, (None, Event.BEGIN): Action.REFUSE}

    def refusal(self, event: Event, detail: str) -> str:
        if event is Event.SESSION_STATE:
            what = detail or event.value
            return f"{self.name} pooling mode does not allow {what}: {self.session_state_way_out}"
        return super().refusal(event, detail)


_MODES: dict[str, type[Policy]] = {
    "session": SessionPolicy,
    "transaction": TransactionPolicy,
    "statement": StatementPolicy,
}


def policy_for_mode(mode: str | Policy) -> Policy:
    """The policy for ``mode=``: a mode name or a Policy instance (validated)."""
    if isinstance(mode, Policy):
        mode.validate()
        return mode
    if isinstance(mode, type) and issubclass(mode, Policy):
        policy = mode()
        policy.validate()
        return policy
    if isinstance(mode, str) and mode in _MODES:
        return _MODES[mode]()
    choices = ", ".join(repr(m) for m in _MODES)
    raise ValueError(f"mode must be one of {choices} or a Policy instance, got {mode!r}")
