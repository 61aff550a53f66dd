"""Validation of a pool's configuration, once, at construction.

Every error is a ValueError (or TypeError for a wrong type) that names the parameter, the value it
got and what it accepts. The conninfo is never echoed: it may hold a password.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, get_origin

from .policies import Policy, policy_for_mode

_pool_numbers = itertools.count(1)


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """The validated sizing and timing parameters shared by Pool and AsyncPool."""

    name: str
    policy: Policy
    min_size: int
    max_size: int
    timeout: float
    max_waiting: int
    max_lifetime: float
    max_idle: float
    reconnect_timeout: float


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def _check_seconds(name: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__} {value!r}")
    seconds = float(value)
    if math.isnan(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a number of seconds {bound}, got {value!r}")
    return seconds


def check_timeout(value: object, name: str = "timeout") -> float:
    """Validate a per-call timeout (seconds > 0)."""
    return _check_seconds(name, value)


def make_config(
    *,
    name: str | None,
    mode: str | Policy,
    min_size: int,
    max_size: int | None,
    timeout: float,
    max_waiting: int,
    max_lifetime: float,
    max_idle: float,
    reconnect_timeout: float,
) -> PoolConfig:
    """Validate the constructor's arguments; raise ValueError/TypeError naming the culprit."""
    min_size = _check_int("min_size", min_size, 0)
    if max_size is None:
        if min_size == 0:
            raise ValueError(
                "max_size must be given when min_size is 0 (max_size defaults to min_size)"
            )
        max_size = min_size
    max_size = _check_int("max_size", max_size, 1)
    if max_size < min_size:
        raise ValueError(
            f"max_size must be >= min_size, got min_size={min_size}, max_size={max_size}"
        )
    if name is None:
        name = f"pool-{next(_pool_numbers)}"
    elif not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    return PoolConfig(
        name=name,
        policy=policy_for_mode(mode),
        min_size=min_size,
        max_size=max_size,
        timeout=_check_seconds("timeout", timeout),
        max_waiting=_check_int("max_waiting", max_waiting, 0),
        max_lifetime=_check_seconds("max_lifetime", max_lifetime),
        max_idle=_check_seconds("max_idle", max_idle),
        reconnect_timeout=_check_seconds("reconnect_timeout", reconnect_timeout, allow_zero=True),
    )


def check_conninfo(conninfo: object) -> None:
    """conninfo is a string or a callable returning one (for rotating credentials)."""
    if not (isinstance(conninfo, str) or callable(conninfo)):
        raise TypeError(
            "conninfo must be a connection string or a callable returning one, "
            f"got {type(conninfo).__name__}"
        )


def check_kwargs(kwargs: object) -> None:
    """kwargs is a mapping or a callable returning one."""
    if not (kwargs is None or isinstance(kwargs, Mapping) or callable(kwargs)):
        raise TypeError(
            "kwargs must be a dict of connection parameters or a callable returning one, "
            f"got {type(kwargs).__name__}"
        )


def check_connection_class(value: object, base: type) -> None:
    """connection_class is psycopg's connection class of the shell (sync or async), or a
    subclass of it: anything else could never connect (and an async class in the threaded pool,
    or the reverse, would fail at every attempt). A generic alias such as
    ``Connection[DictRow]`` stands for its class."""
    value = get_origin(value) or value
    if not (isinstance(value, type) and issubclass(value, base)):
        shown = value.__qualname__ if isinstance(value, type) else type(value).__name__
        raise TypeError(
            f"connection_class must be {base.__module__}.{base.__qualname__} or a subclass "
            f"of it, got {shown}"
        )


def check_callback(name: str, value: object) -> None:
    """configure/check/reset/reconnect_failed are callables or None."""
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be a callable or None, got {type(value).__name__}")


def resolve(value: str | Callable[[], str]) -> str:
    """The conninfo to use now: call it when it is a callable."""
    return value() if callable(value) else value


def resolve_kwargs(
    value: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None,
) -> dict[str, Any]:
    """The connection keyword arguments to use now: call them when they are a callable."""
    if value is None:
        return {}
    return dict(value() if callable(value) else value)


# a password in a URI (scheme://user:PASSWORD@host) or a key=value conninfo (password=...)
_URI_PASSWORD = re.compile(r"(?P<pre>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s\"']*:)\S*@")
_KV_PASSWORD = re.compile(r"(?P<pre>\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s\"&]+)", re.I)


def redact(text: str) -> str:
    """``text`` with any password it quotes replaced by ``***``: libpq echoes a malformed
    conninfo whole in some of its error messages."""
    text = _URI_PASSWORD.sub(r"\g<pre>***@", text)
    return _KV_PASSWORD.sub(r"\g<pre>***", text)
