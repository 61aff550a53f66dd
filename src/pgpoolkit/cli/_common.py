"""What the ``pgpoolkit`` commands share: exit codes, one-line errors, DSNs shown without their
password, argument types."""

from __future__ import annotations

import argparse

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

DSN_ENV = "PGPOOLKIT_DSN"
PROG = "pgpoolkit"

#: exit statuses
EXIT_OK = 0
EXIT_VERDICT_FAILED = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

_MAX_MESSAGE = 400  # characters of an error message shown on the one-line error


class CommandError(Exception):
    """An error the command reports on one line (exit status 2), without a traceback."""


# -- DSN handling: never show a password -------------------------------------------------------


def mask_dsn(dsn: str) -> str:
    """The DSN for display: a password, if any, is replaced with ``***``."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "<unparsable DSN>"
    if "password" in params:
        params["password"] = "***"
    return make_conninfo("", **params) or "(libpq defaults)"


def _dsn_password(dsn: str) -> str | None:
    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.Error:
        return None
    return str(password) if password else None


def _one_line(text: str, secret: str | None = None) -> str:
    """``text`` on one line, shortened, with ``secret`` (a password) blotted out."""
    if secret:
        text = text.replace(secret, "***")
    text = " ".join(text.split())
    if len(text) > _MAX_MESSAGE:
        text = text[: _MAX_MESSAGE - 3] + "..."
    return text


# -- measurements --------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value
