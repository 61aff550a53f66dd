"""Pooling policies: when a client is bound to a server connection and when it lets it go.

A policy is pure decisions, no I/O. The pooled connection (client side) asks it at every event;
the pool core and its I/O shells carry the decisions out.

``SessionPolicy`` is PgBouncer's session pooling: a client keeps one server connection from the
moment it connects until it closes. Transaction and statement pooling build on the same interface.
"""

from __future__ import annotations

__all__ = ["Policy", "SessionPolicy", "policy_for_mode"]


class Policy:
    """The interface every pooling mode implements.

    Subclass it to write a custom mode. The attributes are read by the pooled connection:

    ``name``
        the mode's name, shown in stats, reprs and error messages.
    ``bind_on_connect``
        True: ``pool.connect()`` takes a server connection at once (and its timeout applies
        there); False: the client is bound lazily, at its first statement.
    ``release_when_idle``
        True: the client gives its server connection back whenever the server reports no open
        transaction after a statement, commit or rollback; False: only at ``close()``.
    """

    name: str = "custom"
    bind_on_connect: bool = True
    release_when_idle: bool = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SessionPolicy(Policy):
    """Session pooling: one server connection per client, from connect to close."""

    name = "session"
    bind_on_connect = True
    release_when_idle = False


_MODES: dict[str, type[Policy]] = {"session": SessionPolicy}
_PLANNED = ("transaction", "statement")


def policy_for_mode(mode: str | Policy) -> Policy:
    """The policy for ``mode=``: a mode name or a Policy instance."""
    if isinstance(mode, Policy):
        return mode
    if isinstance(mode, type) and issubclass(mode, Policy):
        return mode()
    if isinstance(mode, str):
        try:
            return _MODES[mode]()
        except KeyError:
            pass
        if mode in _PLANNED:
            raise ValueError(
                f"mode={mode!r} is not available in this version of pgpoolkit: "
                "use mode='session'"
            ) from None
    choices = ", ".join(repr(m) for m in _MODES)
    raise ValueError(f"mode must be one of {choices} or a Policy instance, got {mode!r}")
