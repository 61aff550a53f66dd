"""Which statements change session state: what outlives a transaction on a server connection.

PgBouncer's documentation lists what breaks in transaction pooling: SET/RESET, LISTEN, WITH HOLD
cursors, SQL PREPARE/DEALLOCATE, temporary tables that outlive the transaction, LOAD, session
advisory locks. ``session_changes(text)`` finds them in a query's text before it runs, so that a
policy can pin the client to its server connection, refuse the statement, or mark the connection
for a reset on release. The scan skips comments, string literals and quoted identifiers, looks
at every statement of a multi-statement string, and its answers are cached per query text.

What cannot be seen from the text (a function that runs SET or creates a temporary table inside
its body, a DO block, a trigger) is covered by the release reset: see docs/pooling-modes.md.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Any

import psycopg
import psycopg.sql

__all__ = [
    "NOT_RESETTABLE",
    "SessionChange",
    "StatementInfo",
    "inspect_statement",
    "session_changes",
]


class SessionChange(str, Enum):
    """A kind of session state a statement leaves behind."""

    SETTING = "SET/RESET of a session parameter"
    ROLE = "SET ROLE / SET SESSION AUTHORIZATION"
    LISTEN = "LISTEN"
    PREPARE = "SQL PREPARE/DEALLOCATE"
    HOLD_CURSOR = "a WITH HOLD cursor"
    TEMP_TABLE = "a temporary table"
    LOAD = "LOAD"
    ADVISORY_LOCK = "a session advisory lock"


#: what DISCARD ALL cannot undo: a library LOADed stays loaded (its hooks and settings too)
#: for the backend's life, so a server connection that ran LOAD is closed, never reused
NOT_RESETTABLE = frozenset({SessionChange.LOAD})

# Comments and literals are blanked before scanning, so that a keyword in a string ('SET x') or a
# comment is not taken for a statement; a quoted identifier becomes its plain word, so that
# "set_config"(...) is seen. The lexer follows PostgreSQL's (nested block comments, E'' strings
# only where E starts a token, $tag$ quotes), as a scan that reads text differently from the
# server is one that can be fooled.
_LEXEME = re.compile(
    r"""--|/\*|(?<![\w$])[eE]'|'|[uU]&"|"|(?<![\w$])\$(?:[A-Za-z_\x80-\U0010ffff][\w\x80-\U0010ffff]*)?\$"""
)
_E_STRING_END = re.compile(r"(?:[^'\\]|\\.|'')*'", re.DOTALL)
_STRING_END = re.compile(r"(?:[^']|'')*'")
_IDENT_END = re.compile(r'(?:[^"]|"")*"')
_COMMENT_MARK = re.compile(r"/\*|\*/")
_PLAIN_WORD = re.compile(r"[A-Za-z_][\w$]*")


def _blank(text: str) -> tuple[str, bool]:
    """The text with comments and literals as spaces and quoted identifiers as words, and
    whether something in it was beyond reading (a U&"..." identifier, an unterminated quote),
    in which case the caller assumes the worst."""
    out: list[str] = []
    pos = 0
    unsure = False
    while True:
        found = _LEXEME.search(text, pos)
        if found is None:
            out.append(text[pos:])
            return "".join(out), unsure
        out.append(text[pos : found.start()])
        mark = found[0]
        start = found.end()
        end: int
        if mark == "--":
            newline = text.find("\n", start)
            end = len(text) if newline < 0 else newline
        elif mark == "/*":
            depth = 1
            end = len(text)
            for nested in _COMMENT_MARK.finditer(text, start):
                depth += 1 if nested[0] == "/*" else -1
                if depth == 0:
                    end = nested.end()
                    break
            else:
                unsure = True
        elif mark == '"' or mark[0] in "uU":
            closing = _IDENT_END.match(text, start)
            end = closing.end() if closing else len(text)
            word = text[start : end - 1].replace('""', '"')
            if mark == '"' and closing and _PLAIN_WORD.fullmatch(word):
                out.append(" " + word + " ")
                pos = end
                continue
            unsure = unsure or closing is None or mark != '"'
        elif mark[0] == "$":
            closing_at = text.find(mark, start)
            end = len(text) if closing_at < 0 else closing_at + len(mark)
            unsure = unsure or closing_at < 0
        else:  # a string: E'...' with backslash escapes, or '...'
            closing = (_E_STRING_END if len(mark) == 2 else _STRING_END).match(text, start)
            end = closing.end() if closing else len(text)
            unsure = unsure or closing is None
        out.append(" ")
        pos = end


_SET = re.compile(
    r"^\s*SET\s+(?!LOCAL\b|TRANSACTION\b|CONSTRAINTS?\b)(?:SESSION\s+)?(?P<what>\w+)",
    re.IGNORECASE,
)
_STARTS = [
    (re.compile(r"^\s*LISTEN\b", re.IGNORECASE), SessionChange.LISTEN),
    (re.compile(r"^\s*PREPARE\s+(?!TRANSACTION\b)", re.IGNORECASE), SessionChange.PREPARE),
    (re.compile(r"^\s*DEALLOCATE\b", re.IGNORECASE), SessionChange.PREPARE),
    (
        re.compile(r"^\s*DECLARE\b.*\bWITH\s+HOLD\b", re.IGNORECASE | re.DOTALL),
        SessionChange.HOLD_CURSOR,
    ),
    (re.compile(r"^\s*LOAD\b", re.IGNORECASE), SessionChange.LOAD),
]
_TEMP = re.compile(
    r"^\s*(?:CREATE\s+(?:(?:GLOBAL|LOCAL)\s+)?TEMP(?:ORARY)?\s+(?:UNLOGGED\s+)?"
    r"(?:TABLE|VIEW|SEQUENCE)\b"
    r"|CREATE\s+(?:OR\s+REPLACE\s+)?(?:(?:GLOBAL|LOCAL)\s+)?TEMP(?:ORARY)?\s+VIEW\b"
    r"|SELECT\b.*\bINTO\s+(?:(?:GLOBAL|LOCAL)\s+)?TEMP(?:ORARY)?\b)",
    re.IGNORECASE | re.DOTALL,
)
_ON_COMMIT_DROP = re.compile(r"\bON\s+COMMIT\s+DROP\b", re.IGNORECASE)
_ADVISORY = re.compile(r"\bpg_(?:try_)?advisory_lock(?:_shared)?\s*\(", re.IGNORECASE)
_SET_CONFIG = re.compile(r"\bset_config\s*\(", re.IGNORECASE)
_IS_LOCAL_TRUE = re.compile(r",\s*(?:true|'t'|'true'|'on'|1)\s*$", re.IGNORECASE)

_DO = re.compile(r"^\s*DO\b", re.IGNORECASE)
#: a DO block's body is code the scan does not parse: one holding any of these words (or an
#: escape that could spell them) is assumed to change a role and a setting (the worst it can)
_RISKY_IN_DO = re.compile(
    r"\b(?:SET|RESET|set_config|EXECUTE|LISTEN|PREPARE|DEALLOCATE|DISCARD|TEMP|TEMPORARY|LOAD"
    r"|ROLE|AUTHORIZATION|HOLD|\w*advisory\w*)\b|\\|(?<![\w$])[eE]'|[uU]&",
    re.IGNORECASE,
)
_BEGIN = re.compile(r"^\s*(?:BEGIN|START\s+TRANSACTION)\b", re.IGNORECASE)

#: statements that may undo a kind of session state: the pool checks on the server (or, for
#: SETTING and ROLE, trusts the text) and a client pinned for nothing else is pinned no more
_UNDOES = [
    (re.compile(r"^\s*UNLISTEN\b", re.IGNORECASE), SessionChange.LISTEN),
    (re.compile(r"^\s*DISCARD\s+TEMP(?:ORARY)?\b", re.IGNORECASE), SessionChange.TEMP_TABLE),
    (re.compile(r"^\s*DROP\s+(?:TABLE|VIEW|SEQUENCE)\b", re.IGNORECASE), SessionChange.TEMP_TABLE),
    (re.compile(r"^\s*DEALLOCATE\b", re.IGNORECASE), SessionChange.PREPARE),
    (re.compile(r"^\s*CLOSE\b", re.IGNORECASE), SessionChange.HOLD_CURSOR),
    (
        re.compile(r"\bpg_advisory_unlock(?:_all|_shared)?\s*\(", re.IGNORECASE),
        SessionChange.ADVISORY_LOCK,
    ),
    (re.compile(r"^\s*RESET\s+ALL\b", re.IGNORECASE), SessionChange.SETTING),
    (re.compile(r"^\s*(?:RESET\s+ROLE|SET\s+ROLE\s+NONE)\s*$", re.IGNORECASE), SessionChange.ROLE),
    (
        re.compile(
            r"^\s*(?:RESET\s+SESSION\s+AUTHORIZATION|SET\s+SESSION\s+AUTHORIZATION"
            r"\s+DEFAULT)\s*$",
            re.IGNORECASE,
        ),
        SessionChange.ROLE,
    ),
]
#: what a plain SET changes
SETTING_ONLY = frozenset({SessionChange.SETTING})
#: the kinds whose undoing the text alone proves (RESET ALL, RESET ROLE, DISCARD ALL...); the
#: others (LISTEN, temporary tables, advisory locks, SQL PREPARE, WITH HOLD cursors) are
#: checked on the server (SESSION_STATE_QUERY), as an UNLISTEN of one channel leaves others
UNDONE_BY_TEXT = frozenset({SessionChange.SETTING, SessionChange.ROLE})
#: what a change the server reported (and no statement showed) may have been
UNSEEN = frozenset({SessionChange.SETTING, SessionChange.ROLE})
#: which kinds of session state a server connection holds now, one column each
SESSION_STATE_QUERY = (
    "SELECT EXISTS (SELECT FROM pg_listening_channels()),"
    " EXISTS (SELECT FROM pg_class WHERE relnamespace = pg_my_temp_schema()),"
    " EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
    "  AND NOT (objsubid = 2 AND classid::bigint = %(namespace)s)),"  # not a pool slot
    " EXISTS (SELECT FROM pg_prepared_statements WHERE from_sql),"
    " EXISTS (SELECT FROM pg_cursors WHERE is_holdable)"
)
SESSION_STATE_COLUMNS = (
    SessionChange.LISTEN,
    SessionChange.TEMP_TABLE,
    SessionChange.ADVISORY_LOCK,
    SessionChange.PREPARE,
    SessionChange.HOLD_CURSOR,
)
_RESET = re.compile(r"^\s*RESET\s+(?P<role>ROLE\b|SESSION\s+AUTHORIZATION\b)?", re.IGNORECASE)
_DISCARD_ALL = re.compile(r"^\s*DISCARD\s+ALL\b", re.IGNORECASE)


class StatementInfo:
    """What a query's text says about its effect on the server connection."""

    __slots__ = ("begins", "changes", "detail", "undoes")

    def __init__(
        self,
        changes: frozenset[SessionChange],
        begins: bool,
        undoes: frozenset[SessionChange] = frozenset(),
    ) -> None:
        #: the kinds of session state it leaves behind
        self.changes = changes
        #: it opens a transaction block (BEGIN / START TRANSACTION)
        self.begins = begins
        #: the kinds it may undo (UNLISTEN, DISCARD TEMP, RESET ALL...), as its last word on them
        self.undoes = undoes
        #: a description for messages: "SET ROLE / SET SESSION AUTHORIZATION, LISTEN"
        self.detail = ", ".join(sorted(kind.value for kind in changes))


_cache: dict[str, StatementInfo] = {}
_CACHE_SIZE = 4096
PLAIN = StatementInfo(frozenset(), False)
#: what a server-side cursor declared WITH HOLD adds to its statement
HELD = StatementInfo(frozenset({SessionChange.HOLD_CURSOR}), False)


def inspect_statement(text: str) -> StatementInfo:
    """What the query would do to its server connection (cached per query text)."""
    found = _cache.get(text)
    if found is None:
        found = _scan(text)
        if len(_cache) >= _CACHE_SIZE:
            _cache.clear()
        _cache[text] = found
    return found


def session_changes(text: str) -> frozenset[SessionChange]:
    """The kinds of session state the query would leave on its server connection."""
    return inspect_statement(text).changes


def _scan(text: str) -> StatementInfo:
    clean, unsure = _blank(text)
    # what the scan cannot read is taken for the worst a text can hide: a role or a setting
    kinds: set[SessionChange] = set(UNSEEN) if unsure else set()
    undone: set[SessionChange] = set()
    begins = does = False
    for statement in clean.split(";"):
        if not statement.strip():
            continue
        if _BEGIN.match(statement):
            begins = True
        if _DO.match(statement):
            does = True
        here = _changes(statement)
        kinds |= here
        undone -= here  # a later change outweighs an earlier undo
        if _DISCARD_ALL.match(statement):
            undone |= set(SessionChange) - NOT_RESETTABLE
        for pattern, kind in _UNDOES:
            found = pattern.search if kind is SessionChange.ADVISORY_LOCK else pattern.match
            if found(statement):
                undone.add(kind)
    if does and _RISKY_IN_DO.search(text):
        kinds |= UNSEEN
    if not kinds and not begins and not undone:
        return PLAIN
    return StatementInfo(frozenset(kinds), begins, frozenset(undone))


def _changes(statement: str) -> set[SessionChange]:
    """The kinds of session state one statement (comments and literals blanked) leaves."""
    kinds: set[SessionChange] = set()
    match = _SET.match(statement)
    if match:
        what = match["what"].upper()
        kinds.add(
            SessionChange.ROLE if what in ("ROLE", "AUTHORIZATION") else SessionChange.SETTING
        )
    for pattern, kind in _STARTS:
        if pattern.match(statement):
            kinds.add(kind)
    reset = _RESET.match(statement)
    if reset:
        kinds.add(SessionChange.ROLE if reset["role"] else SessionChange.SETTING)
    if _TEMP.match(statement) and not _ON_COMMIT_DROP.search(statement):
        kinds.add(SessionChange.TEMP_TABLE)
    if _ADVISORY.search(statement):
        kinds.add(SessionChange.ADVISORY_LOCK)
    for call in _SET_CONFIG.finditer(statement):
        if not _IS_LOCAL_TRUE.search(_call_args(statement, call.end())):
            kinds.add(SessionChange.SETTING)
    return kinds


def _call_args(text: str, start: int) -> str:
    """The arguments of the call whose "(" ends at ``start``, up to its matching ")", nested
    calls included (``set_config('x', lower(y), false)``)."""
    depth = 1
    for i in range(start, len(text)):
        char = text[i]
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return text[start:]


def inspect_query(query: Any) -> StatementInfo:
    """What a query (str, bytes, psycopg.sql object) would do to its server connection."""
    if type(query) is str:  # the common case, without a second call
        found = _cache.get(query)
        return found if found is not None else inspect_statement(query)
    if isinstance(query, str):
        return inspect_statement(query)
    if isinstance(query, bytes):
        return inspect_statement(query.decode("utf-8", "replace"))
    if isinstance(query, psycopg.sql.Composable):
        # SQL("SET ROLE {}").format(Identifier(name)): the keywords are in the SQL parts
        return inspect_statement(_sql_text(query))
    return PLAIN  # a t-string Template (Python 3.14): see docs/pooling-modes.md


def _sql_text(query: psycopg.sql.Composable) -> str:
    """The text of a psycopg.sql object with its SQL parts as they are, identifiers as quoted
    names (``Identifier("set_config")`` calls set_config) and every other part (literal,
    placeholder) as a stand-in word: enough to scan, no adaptation."""
    if isinstance(query, psycopg.sql.SQL):
        return query.as_string(None)
    if isinstance(query, psycopg.sql.Composed):
        return "".join(_sql_text(part) for part in query)
    if isinstance(query, psycopg.sql.Identifier):
        return query.as_string(None)
    return " _ "


def merge_info(info: StatementInfo, extra: StatementInfo) -> StatementInfo:
    """What two inspections say together."""
    return StatementInfo(
        info.changes | extra.changes, info.begins or extra.begins, info.undoes | extra.undoes
    )


# -- settings a transaction-mode client keeps, instead of pinning -----------------------------

_PLAIN_SET = re.compile(
    r"""^\s*SET\s+(?:SESSION\s+)?
        (?:(?P<tz>TIME\s+ZONE)|(?P<name>[A-Za-z_][\w.]*))
        \s*(?:=|\s+TO\s+|\s+(?=[^=\s]))\s*   # "=", "TO", or TIME ZONE's plain space
        (?P<value>.+?)\s*;?\s*$""",
    re.IGNORECASE | re.VERBOSE | re.DOTALL,
)
_PLAIN_RESET = re.compile(r"^\s*RESET\s+(?P<name>[A-Za-z_][\w.]*)\s*;?\s*$", re.IGNORECASE)
_PLAIN_SET_CONFIG = re.compile(
    r"""^\s*SELECT\s+(?:pg_catalog\.)?set_config\s*\(\s*
        '(?P<name>[A-Za-z_][\w.]*)'\s*,\s*
        (?:(?P<literal>'(?:[^']|'')*')|(?P<param>%s|%\(\w+\)s))
        \s*,\s*false\s*\)\s*;?\s*$""",
    re.IGNORECASE | re.VERBOSE,
)
#: what is not a plain setting: the role and authorization (security), and SET's other forms
_NOT_SETTINGS = frozenset(
    {
        "role",
        "session",
        "authorization",
        "session_authorization",
        "transaction",
        "local",
        "constraints",
    }
)
#: the values SET TIME ZONE takes that ``SET timezone = ...`` takes too
_TIME_ZONE_VALUE = re.compile(r"^(?:'(?:[^']|'')*'|[+-]?\d+(?:\.\d+)?)$")


def plain_setting(query: Any, params: Any = None) -> tuple[str, str | None] | None:
    """``(name, value)`` if the query is one plain session setting that a transaction-mode
    client can keep and replay on the server connections it borrows: ``SET name = value``
    (``TO``, ``SET TIME ZONE``), ``RESET name`` or ``SELECT set_config('name', value, false)``
    with a literal value or one parameter. ``value`` is SQL text (None: the default)."""
    if isinstance(query, bytes):
        query = query.decode("utf-8", "replace")
    if not isinstance(query, str) or "--" in query or "/*" in query:
        return None
    match = _PLAIN_SET.match(query)
    if match:
        name = "timezone" if match["tz"] else match["name"].lower()
        value = match["value"]
        if name in _NOT_SETTINGS or ";" in _blank(value)[0]:
            return None
        if value.upper() == "DEFAULT" or (match["tz"] and value.upper() == "LOCAL"):
            return (name, None)
        if match["tz"] and not _TIME_ZONE_VALUE.match(value):
            return None  # INTERVAL '...' HOUR TO MINUTE: SET TIME ZONE's own syntax
        return (name, value)
    match = _PLAIN_RESET.match(query)
    if match:
        name = match["name"].lower()
        return None if name in _NOT_SETTINGS or name == "all" else (name, None)
    match = _PLAIN_SET_CONFIG.match(query)
    if match:
        name = match["name"].lower()
        if name in _NOT_SETTINGS or name == "session_authorization":
            return None
        if match["literal"]:
            return (name, match["literal"])
        value = _only_param(match["param"], params)
        return None if value is None else (name, _quote(value))
    return None


def _only_param(placeholder: str, params: Any) -> str | None:
    if placeholder == "%s":
        if isinstance(params, (list, tuple)) and len(params) == 1:
            value = params[0]
        else:
            return None
    elif isinstance(params, dict) and len(params) == 1:
        value = next(iter(params.values()))
    else:
        return None
    return value if isinstance(value, str) else None


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
