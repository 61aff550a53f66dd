"""The scan that finds statements leaving session state behind (no database needed)."""

from __future__ import annotations

import pytest

from pgpoolkit._session_state import SessionChange as K
from pgpoolkit._session_state import inspect_statement, session_changes


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("SET search_path TO app", {K.SETTING}),
        ("  set  work_mem = '64MB'", {K.SETTING}),
        ("SET SESSION statement_timeout = 0", {K.SETTING}),
        ("SET TIME ZONE 'UTC'", {K.SETTING}),
        ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", {K.SETTING}),
        ("RESET ALL", {K.SETTING}),
        ("SET ROLE app_reader", {K.ROLE}),
        ("SET SESSION AUTHORIZATION app", {K.ROLE}),
        ("LISTEN jobs", {K.LISTEN}),
        ("PREPARE q(int) AS SELECT $1", {K.PREPARE}),
        ("DEALLOCATE q", {K.PREPARE}),
        ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", {K.HOLD_CURSOR}),
        ("CREATE TEMP TABLE t (x int)", {K.TEMP_TABLE}),
        ("create local temporary table t (x int)", {K.TEMP_TABLE}),
        ("CREATE TEMPORARY VIEW v AS SELECT 1", {K.TEMP_TABLE}),
        ("SELECT 1 INTO TEMP t", {K.TEMP_TABLE}),
        ("LOAD 'auto_explain'", {K.LOAD}),
        ("SELECT pg_advisory_lock(42)", {K.ADVISORY_LOCK}),
        ("SELECT pg_try_advisory_lock_shared(1, 2)", {K.ADVISORY_LOCK}),
        ("SELECT set_config('search_path', 'x', false)", {K.SETTING}),
        ("SELECT 1; SET ROLE x; LISTEN y", {K.ROLE, K.LISTEN}),
        # what PostgreSQL reads and a simpler scan would not (issue 12)
        ("""SELECT "set_config"('role', 'x', false)""", {K.SETTING}),
        ("""SELECT pg_catalog."set_config"('role', 'x', false)""", {K.SETTING}),
        ("SELECT 1 /* /* */ ' */ ; SET ROLE x; SELECT ' '", {K.ROLE}),
        ("SELECT CASE WHEN true THEN 'a' ELSE'\\' END; SET ROLE x; SELECT ' '", {K.ROLE}),
        ("SELECT 1 AS a$$; SET ROLE x", {K.ROLE}),
        # what it cannot read: assumed to be the worst (a role and a setting)
        ("DO $$ BEGIN PERFORM set_config('role', 'x', false); END $$", {K.SETTING, K.ROLE}),
        ("DO $$ BEGIN EXECUTE 'SEL' || 'ECT 1'; END $$", {K.SETTING, K.ROLE}),
        ("DO E'BEGIN \\x53ET ROLE x; END'", {K.SETTING, K.ROLE}),
        ("SELECT U&\"\\0073et_config\"('role', 'x', false)", {K.SETTING, K.ROLE}),
        ("SELECT 'unterminated; SET ROLE x", {K.SETTING, K.ROLE}),
        ("SELECT 1 /* unterminated", {K.SETTING, K.ROLE}),
        # not session state
        ("SELECT 1", set()),
        ("SET LOCAL work_mem = '1MB'", set()),
        ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", set()),
        ("SET CONSTRAINTS ALL DEFERRED", set()),
        ("PREPARE TRANSACTION 'x'", set()),
        ("DECLARE c CURSOR FOR SELECT 1", set()),
        ("CREATE TEMP TABLE t (x int) ON COMMIT DROP", set()),
        ("SELECT pg_advisory_xact_lock(42)", set()),
        ("SELECT set_config('search_path', 'x', true)", set()),
        ("SELECT 'SET ROLE admin'", set()),
        ("SELECT 1 -- SET ROLE admin", set()),
        ("/* LISTEN x; */ SELECT 1", set()),
        ("DO $$ BEGIN RAISE NOTICE 'hi'; END $$", set()),
        ("/* /* LISTEN x; */ SET ROLE y; */ SELECT 1", set()),
        ('SELECT "order"."set" FROM "order"', set()),
        ("SELECT a$b$ FROM t WHERE x = $1", set()),
        ('SELECT "set" FROM t', set()),
        ("SELECT $$SET ROLE x$$", set()),
        ("SELECT E'it\\'s; SET ROLE x'", set()),
        ("UPDATE settings SET value = 1", set()),
        ("INSERT INTO t SELECT * FROM s", set()),
    ],
)
def test_session_changes(query: str, expected: set[K]) -> None:
    assert session_changes(query) == expected


def test_answers_are_cached() -> None:
    first = inspect_statement("SET application_name = 'cache-test'")
    assert inspect_statement("SET application_name = 'cache-test'") is first


@pytest.mark.parametrize(
    ("query", "begins"),
    [
        ("BEGIN", True),
        ("  begin isolation level serializable", True),
        ("START TRANSACTION READ ONLY", True),
        ("SELECT 1; BEGIN; SELECT 2", True),
        ("SELECT 'BEGIN'", False),
        ("COMMIT", False),
        ("SELECT 1", False),
    ],
)
def test_begin_is_seen(query: str, begins: bool) -> None:
    assert inspect_statement(query).begins is begins
