"""Django on the ``pgpoolkit.django`` backend: a minimal project (tests/django_project/) run
against the real server, migrated, driven through Django's WSGI handler (so that connections
are closed at the end of each request, as in production), in session and transaction modes.

Django's settings are process-wide: one configuration holds every mode, as database aliases
(``default``: session, ``transaction``, ``statement``, ``prepared``: transaction mode with
server-side binding), each with its own pool.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import psycopg
import pytest
from psycopg import sql

django = pytest.importorskip("django", minversion="5.1")

from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.core.handlers.wsgi import WSGIHandler  # noqa: E402
from django.db import IntegrityError, OperationalError, connections, transaction  # noqa: E402

from conftest import run_in_threads, server_connections, start_threads  # noqa: E402
from django_project import settings as project  # noqa: E402
from pgpoolkit import PolicyViolation, Pool, PooledConnection  # noqa: E402
from pgpoolkit.policies import ClientState  # noqa: E402

Admin = psycopg.Connection[tuple[Any, ...]]

ALIASES = [pytest.param("default", id="session"), pytest.param("transaction", id="transaction")]
ISOLATION = {"default": "read committed", "transaction": "repeatable read"}


@pytest.fixture(scope="module")
def django_project(dsn: str) -> Iterator[WSGIHandler]:
    """The project configured for the test server, its databases created (owned by the role
    the aliases assume, time zone Etc/UTC) and migrated; its WSGI application."""
    from django.conf import settings
    from django.core.management import call_command

    with psycopg.connect(dsn, autocommit=True) as admin:
        if not admin.execute(
            "SELECT 1 FROM pg_roles WHERE rolname = %s", (project.OWNER,)
        ).rowcount:
            admin.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(project.OWNER)))
        for name in project.DATABASE_NAMES.values():
            db = sql.Identifier(name)
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(db))
            admin.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(db, sql.Identifier(project.OWNER))
            )
            admin.execute(sql.SQL("ALTER DATABASE {} SET timezone TO 'Etc/UTC'").format(db))
    if not settings.configured:
        settings.configure(**project.settings(dsn))
    django.setup()
    for alias in project.DATABASE_NAMES:
        call_command("migrate", database=alias, verbosity=0)
    connections.close_all()
    try:
        yield WSGIHandler()
    finally:
        connections.close_all()
        for alias in connections:
            connections[alias].close_pool()
        with psycopg.connect(dsn, autocommit=True) as admin:
            for alias in connections:
                wait_for_backends(admin, project.application_name(alias), 0)
            for name in project.DATABASE_NAMES.values():
                admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(autouse=True)
def no_leaks(django_project: WSGIHandler) -> Iterator[None]:
    """After each test, once this thread's Django connections are closed, every pool has all
    its server connections back and no client open."""
    yield
    connections.close_all()
    for alias in connections:
        pool = pool_of(alias, make=False)
        if pool is not None:
            stats = pool.stats()
            assert (stats.clients_open, stats.servers_active) == (0, 0), (alias, stats)


@pytest.fixture
def admin(dsn: str) -> Iterator[Admin]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


def pool_of(alias: str, make: bool = True) -> Pool | None:
    wrapper: Any = connections[alias]
    if not make:
        return wrapper._connection_pools.get(alias)  # type: ignore[no-any-return]
    return wrapper.pool  # type: ignore[no-any-return]


def wait_for_backends(admin: Admin, app: str, n: int, timeout: float = 10.0) -> None:
    """Wait until the server has ``n`` backends for ``app`` (a closed connection's backend
    takes a moment to go)."""
    deadline = time.monotonic() + timeout
    while server_connections(admin, app) != n:
        if time.monotonic() > deadline:
            pytest.fail(f"expected {n} backends for {app}, got {server_connections(admin, app)}")
        time.sleep(0.01)


def request(app: WSGIHandler, path: str) -> Any:
    """One request through Django's WSGI handler, as a WSGI server makes it: the response is
    closed at the end, which sends ``request_finished`` (Django closes its connections)."""
    environ: dict[str, Any] = {"PATH_INFO": path, "HTTP_HOST": "localhost"}
    setup_testing_defaults(environ)
    status: list[str] = []

    def start_response(line: str, headers: Any, exc_info: Any = None) -> Any:
        status.append(line)

    response = app(environ, start_response)
    try:
        body = b"".join(response)
    finally:
        response.close()
    assert status == ["200 OK"], body
    return json.loads(body)


def resets(alias: str) -> Callable[[], int]:
    """A counter of the session resets (DISCARD ALL) of the alias's pool from now: the pool's
    configure callback runs once per new server connection, and again after each reset."""
    pool = pool_of(alias)
    assert pool is not None
    configured = project.CONFIGURED[pool.name]
    opened = pool.stats().connections_opened_total
    return lambda: (
        project.CONFIGURED[pool.name]
        - configured
        - (pool.stats().connections_opened_total - opened)
    )


def server_clock(admin: Admin) -> Any:
    row = admin.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    return row[0]


def last_statements(admin: Admin, alias: str, since: Any) -> list[str]:
    """The last statement of each server connection of the alias that ran one ``since``."""
    rows = admin.execute(
        "SELECT query FROM pg_stat_activity WHERE application_name = %s AND state_change >= %s",
        (project.application_name(alias), since),
    ).fetchall()
    return [row[0] for row in rows]


def model() -> Any:
    """The project's model (importable once Django is set up)."""
    from django_project.items.models import Item

    return Item


# -- the backend ----------------------------------------------------------------------------------


@pytest.mark.parametrize("alias", ALIASES)
def test_migrate_ran_as_the_assumed_role(alias: str) -> None:
    from django.db.migrations.recorder import MigrationRecorder

    applied = MigrationRecorder(connections[alias]).applied_migrations()
    assert {("items", "0001_initial"), ("items", "0002_constraint_and_note")} <= set(applied)
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'items_item'")
        assert cursor.fetchone() == (project.OWNER,)
    with pytest.raises(IntegrityError, match="items_quantity_not_negative"):
        model().objects.using(alias).create(name="negative", quantity=-1)


@pytest.mark.parametrize("alias", ALIASES)
def test_sqlmigrate_composes_literals(alias: str) -> None:
    """sqlmigrate writes the SQL with its literals merged in, running none of it (in
    transaction mode: holding no server connection)."""
    from django.core.management import call_command

    out = io.StringIO()
    call_command("sqlmigrate", "items", "0002", database=alias, stdout=out)
    text = out.getvalue()
    assert "CHECK" in text and '"quantity" >= 0' in text
    assert "DEFAULT 'it''s new'" in text


@pytest.mark.parametrize("alias", ["default", "prepared"])
def test_debug_cursor_logs_the_queries(alias: str) -> None:
    """The queries Django logs (DEBUG, assertNumQueries) show their parameters: with
    server-side binding Django composes them itself, after the statement ran (in transaction
    mode, when the connection already gave its server connection back)."""
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connections[alias]) as queries:
        model().objects.using(alias).filter(name="it's").exists()
    assert len(queries.captured_queries) == 1
    assert "'it''s'" in queries.captured_queries[0]["sql"]


@pytest.mark.parametrize("alias", ALIASES)
def test_connections_come_from_the_pool_in_its_mode(alias: str) -> None:
    wrapper = connections[alias]
    pool = pool_of(alias)
    assert pool is not None and pool.policy.name == project.MODES[alias]
    model().objects.using(alias).exists()
    conn = wrapper.connection
    assert isinstance(conn, PooledConnection) and isinstance(conn, psycopg.Connection)
    assert conn.pool is pool
    # between statements, a transaction-mode client holds no server connection
    expected = ClientState.IDLE if alias == "transaction" else ClientState.BOUND
    assert conn.state is expected
    assert pool.stats().servers_active == (0 if alias == "transaction" else 1)
    wrapper.close()
    assert conn.closed and wrapper.connection is None
    assert pool.stats().clients_open == 0


@pytest.mark.parametrize("alias", ALIASES)
def test_orm_crud(alias: str) -> None:
    items = model().objects.using(alias)
    tag = uuid.uuid4().hex[:8]
    a = items.create(name=f"{tag}-a", quantity=1)
    items.create(name=f"{tag}-b", quantity=2)
    assert items.get(pk=a.pk).name == f"{tag}-a"
    a.quantity = 10
    a.save()
    assert items.filter(name__startswith=tag).update(quantity=5) == 2
    assert sorted(items.filter(name__startswith=tag).values_list("name", "quantity")) == [
        (f"{tag}-a", 5),
        (f"{tag}-b", 5),
    ]
    assert items.get(pk=a.pk).created.tzinfo is not None  # USE_TZ: aware datetimes
    assert items.filter(name__startswith=tag).delete()[0] == 2
    assert not items.filter(name__startswith=tag).exists()


@pytest.mark.parametrize("alias", ALIASES)
def test_atomic_commits_and_rolls_back(alias: str) -> None:
    items = model().objects.using(alias)
    pool = pool_of(alias)
    assert pool is not None
    tag = uuid.uuid4().hex[:8]
    with transaction.atomic(using=alias):
        items.create(name=f"{tag}-kept")
        # the transaction holds one server connection, in either mode
        assert pool.stats().servers_active == 1
        with connections[alias].cursor() as cursor:
            cursor.execute("SHOW transaction_isolation")
            assert cursor.fetchone() == (ISOLATION[alias],)
    assert pool.stats().servers_active == (0 if alias == "transaction" else 1)

    with pytest.raises(ZeroDivisionError), transaction.atomic(using=alias):
        items.create(name=f"{tag}-lost")
        1 / 0  # noqa: B018

    with transaction.atomic(using=alias):
        items.create(name=f"{tag}-outer")
        try:
            with transaction.atomic(using=alias):  # a savepoint
                items.create(name=f"{tag}-inner")
                raise KeyError("rolled back to the savepoint")
        except KeyError:
            pass
    names = set(items.filter(name__startswith=tag).values_list("name", flat=True))
    assert names == {f"{tag}-kept", f"{tag}-outer"}


@pytest.mark.parametrize("alias", ALIASES)
def test_requests_from_threads(django_project: WSGIHandler, admin: Admin, alias: str) -> None:
    """8 threads making 10 requests each over a pool of at most 2 server connections: every
    request's connection goes back to the pool when the request ends."""
    pool = pool_of(alias)
    assert pool is not None
    tag = uuid.uuid4().hex[:8]
    ids: list[int] = []

    def work(n: int) -> None:
        for _ in range(10):
            ids.append(request(django_project, f"/{alias}/add/{tag}-{n}/")["id"])
            assert connections[alias].connection is None  # closed at the request's end

    run_in_threads(work, 8)
    stats = pool.stats()
    assert (stats.clients_open, stats.servers_active) == (0, 0)
    assert server_connections(admin, project.application_name(alias)) <= 2
    assert len(set(ids)) == 80
    assert model().objects.using(alias).filter(name__startswith=tag).count() == 80


def test_transaction_mode_serves_more_open_connections_than_servers() -> None:
    """6 threads hold their Django connection open at once over 2 server connections (session
    mode would make the third wait until the pool's timeout)."""
    alias = "transaction"
    pool = pool_of(alias)
    assert pool is not None
    tag = uuid.uuid4().hex[:8]
    all_open = threading.Barrier(7)

    def work(n: int) -> None:
        try:
            model().objects.using(alias).exists()  # this thread's connection is open
            all_open.wait(30)
            all_open.wait(30)  # the main thread looked
            with transaction.atomic(using=alias):
                model().objects.using(alias).create(name=f"{tag}-{n}")
        finally:
            connections.close_all()

    join = start_threads(6, work)
    try:
        all_open.wait(30)
        stats = pool.stats()
        assert stats.clients_open == 6  # (max_size=2)
    finally:
        all_open.wait(30)
        join()
    assert model().objects.using(alias).filter(name__startswith=tag).count() == 6


# -- what Django sets on each connection: once per server connection ---------------------------


@pytest.mark.parametrize("alias", ALIASES)
def test_time_zone_role_and_isolation_are_set_without_a_reset(
    django_project: WSGIHandler, admin: Admin, dsn: str, alias: str
) -> None:
    """The database's time zone is Etc/UTC, Django's is UTC: Django's own backend would run
    SET TIME ZONE (and SET ROLE) on each connection, and a pool would reset the session when
    the request ends. Here the server connections start with them: no request resets."""
    name = project.DATABASE_NAMES[alias]
    with psycopg.connect(dsn, dbname=name) as direct:  # the precondition
        assert direct.info.parameter_status("TimeZone") == "Etc/UTC"
    count = resets(alias)
    start = server_clock(admin)
    answers: list[Any] = []

    def work(n: int) -> None:
        for _ in range(5):
            answers.append(request(django_project, f"/{alias}/session/"))

    run_in_threads(work, 4)
    assert len(answers) == 20
    expected = {
        "time_zone": "UTC",
        "reported_time_zone": "UTC",
        "user": project.OWNER,
        "isolation": ISOLATION[alias],
    }
    assert all(answer == expected for answer in answers), answers
    assert count() == 0
    statements = last_statements(admin, alias, start)
    assert statements  # the server connections the requests used
    for statement in statements:
        assert statement != "DISCARD ALL" and not statement.upper().startswith("SET")


@pytest.mark.parametrize("alias", ALIASES)
def test_a_request_that_changes_the_session_is_reset(
    django_project: WSGIHandler, admin: Admin, alias: str
) -> None:
    """The counter above can see a reset: a temporary table left by a request is one."""
    count = resets(alias)
    start = server_clock(admin)
    request(django_project, f"/{alias}/temp/")
    assert count() == 1
    assert last_statements(admin, alias, start) == ["DISCARD ALL"]
    # the next request finds the time zone and the role the server connection started with
    answer = request(django_project, f"/{alias}/session/")
    assert (answer["time_zone"], answer["user"]) == ("UTC", project.OWNER)
    assert count() == 1


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_settings_through_configure_without_startup_parameters(mode: str) -> None:
    """``"startup_parameters": False`` (for a proxy that refuses them): the pool's configure
    callback sets the time zone and the role on each new server connection, and again after a
    reset, never on a request."""
    configured: list[object] = []
    wrapper = wrapper_with(
        OPTIONS={
            "pool": {
                "mode": mode,
                "min_size": 1,
                "max_size": 1,
                "startup_parameters": False,
                "configure": configured.append,  # runs after the backend's
            }
        }
    )

    def session() -> Any:
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT current_setting('TimeZone'), current_user")
            answer = cursor.fetchone()
        wrapper.close()
        return answer

    try:
        pool = wrapper.pool
        assert "TimeZone" not in pool.kwargs.get("options", "")
        for _ in range(5):
            assert session() == ("UTC", project.OWNER)
        assert len(configured) == pool.stats().connections_opened_total  # no reset
        with wrapper.cursor() as cursor:
            cursor.execute("CREATE TEMP TABLE scratch (x int)")
        wrapper.close()  # a reset: DISCARD ALL, then configure again
        assert len(configured) == pool.stats().connections_opened_total + 1
        assert session() == ("UTC", project.OWNER)
    finally:
        wrapper.close()
        wrapper.close_pool()


# -- cursors, prepared statements, statement mode ----------------------------------------------


@pytest.mark.parametrize("alias", ALIASES)
@pytest.mark.parametrize("atomic", [False, True], ids=["autocommit", "atomic"])
def test_iterator_uses_a_server_side_cursor(alias: str, atomic: bool) -> None:
    """QuerySet.iterator() reads through a named cursor, made by the pooled connection: it runs
    on the server connection the client holds, in either mode. Outside a transaction Django
    declares it WITH HOLD, which outlives the transaction: session state, so the server
    connection is reset before another client gets it (and, in transaction mode, the client
    is pinned until Django closes the cursor, at the end of the iteration); inside
    ``atomic()`` it costs nothing."""
    items = model().objects.using(alias)
    tag = uuid.uuid4().hex[:8]
    item = model()
    items.bulk_create([item(name=f"{tag}-{i:02}") for i in range(25)])
    query = items.filter(name__startswith=tag).order_by("name").values_list("name", flat=True)
    count = resets(alias)
    if atomic:
        with transaction.atomic(using=alias):
            names = list(query.iterator(chunk_size=7))
    else:
        names = list(query.iterator(chunk_size=7))
    assert names == [f"{tag}-{i:02}" for i in range(25)]
    if alias == "default":  # session mode: bound until closed
        assert connections[alias].connection.state is ClientState.BOUND
    else:  # (not atomic: unpinned when Django closed the cursor)
        assert connections[alias].connection.state is ClientState.IDLE
    connections[alias].close()
    assert count() == (0 if atomic else 1)
    items.filter(name__startswith=tag).delete()


def test_prepared_statements_in_transaction_mode() -> None:
    """Django turns psycopg's prepared statements off for external poolers; they are safe here
    (alias ``prepared``: transaction mode, server-side binding, prepare_threshold=2): each
    client uses the prepared statements of the server connection it borrows."""
    alias = "prepared"
    tag = uuid.uuid4().hex[:8]

    def work(n: int) -> None:
        try:
            items = model().objects.using(alias)
            for i in range(10):
                items.create(name=f"{tag}-{n}-{i}")
                assert items.filter(name=f"{tag}-{n}-{i}").count() == 1
        finally:
            connections.close_all()

    run_in_threads(work, 4)
    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_prepared_statements")
        row = cursor.fetchone()
        assert row is not None and row[0] > 0
    model().objects.using(alias).filter(name__startswith=tag).delete()


def test_statement_mode_refuses_a_transaction() -> None:
    alias = "statement"
    items = model().objects.using(alias)
    tag = uuid.uuid4().hex[:8]
    items.create(name=f"{tag}-1")
    assert items.filter(name=f"{tag}-1").count() == 1
    with pytest.raises(OperationalError) as info, transaction.atomic(using=alias):
        items.create(name=f"{tag}-2")
    assert isinstance(info.value.__cause__, PolicyViolation)
    assert "statement" in str(info.value)
    assert not items.filter(name=f"{tag}-2").exists()
    # (delete() opens a transaction: through the transaction-mode alias, same database)
    model().objects.using("transaction").filter(name__startswith=tag).delete()


def test_close_pool_closes_the_server_connections(admin: Admin) -> None:
    alias = "statement"
    model().objects.using(alias).exists()
    pool = pool_of(alias)
    assert pool is not None
    connections[alias].close()
    app = project.application_name(alias)
    assert server_connections(admin, app) >= 1
    connections[alias].close_pool()
    assert pool.closed
    wait_for_backends(admin, app, 0)
    # the next connection makes a new pool
    model().objects.using(alias).exists()
    assert pool_of(alias) is not pool


# -- configuration errors -------------------------------------------------------------------------


def wrapper_with(**changes: Any) -> Any:
    from pgpoolkit.django.base import DatabaseWrapper

    settings_dict = dict(connections["default"].settings_dict)
    options = dict(settings_dict["OPTIONS"])
    options.update(changes.pop("OPTIONS", {}))
    settings_dict.update(changes, OPTIONS=options)
    return DatabaseWrapper(settings_dict, alias=f"bad-{uuid.uuid4().hex[:6]}")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param({"OPTIONS": {"pool": {"max_sise": 3}}}, "max_sise", id="unknown key"),
        pytest.param({"OPTIONS": {"pool": {"mode": "sessions"}}}, "mode", id="bad mode"),
        pytest.param(
            {"OPTIONS": {"pool": {"kwargs": {}}}}, "'kwargs' is not accepted", id="kwargs"
        ),
        pytest.param({"OPTIONS": {"pool": 10}}, "must be a dict", id="not a dict"),
        pytest.param(
            {"OPTIONS": {"pool": {"startup_parameters": "no"}}},
            "startup_parameters",
            id="startup_parameters",
        ),
        pytest.param({"CONN_MAX_AGE": 60}, "CONN_MAX_AGE", id="CONN_MAX_AGE"),
    ],
)
def test_bad_pool_settings_are_improperly_configured(changes: Any, message: str) -> None:
    wrapper = wrapper_with(**changes)
    with pytest.raises(ImproperlyConfigured, match=message):
        wrapper.pool  # noqa: B018


def test_pool_false_is_djangos_plain_backend() -> None:
    wrapper = wrapper_with(OPTIONS={"pool": False})
    assert wrapper.pool is None
    with wrapper.cursor() as cursor:
        cursor.execute("SELECT current_setting('TimeZone'), current_user")
        assert cursor.fetchone() == ("UTC", project.OWNER)  # Django's own SETs
    assert not isinstance(wrapper.connection, PooledConnection)
    wrapper.close()


def test_a_pool_follows_its_alias_to_another_database() -> None:
    """Django's test runner points an alias at the test database by changing its NAME: the
    next connection comes from a new pool, on that database, and the old pool is closed."""
    alias = "statement"
    wrapper = connections[alias]

    def database() -> Any:
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT current_database()")
            return cursor.fetchone()[0]

    assert database() == project.DATABASE_NAMES["transaction"]
    wrapper.close()
    old = pool_of(alias)
    name = wrapper.settings_dict["NAME"]
    wrapper.settings_dict["NAME"] = project.DATABASE_NAMES["default"]
    try:
        assert database() == project.DATABASE_NAMES["default"]
        assert old is not None and old.closed
    finally:
        wrapper.close()
        wrapper.settings_dict["NAME"] = name
    assert database() == name


# -- Django's test runner -------------------------------------------------------------------------


def test_djangos_test_runner(dsn: str, admin: Admin) -> None:
    """``manage.py test`` on the backend (tests/django_project/items/tests.py, in a process of
    its own: Django's settings are process-wide): the runner makes a test database per alias,
    migrates it through the alias's pool, runs TestCase (each test in a transaction rolled back)
    and TransactionTestCase tests, and drops the test databases at the end, which fails if a
    server connection is still on them."""
    tests_dir = Path(__file__).parent
    env = {
        **os.environ,
        "PGPOOLKIT_DJANGO_DSN": dsn,
        "PYTHONPATH": os.pathsep.join([str(tests_dir.parent / "src"), str(tests_dir)]),
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    done = subprocess.run(
        [sys.executable, "-m", "django", "test", "django_project.items", "-v", "2"],
        cwd=tests_dir,
        env={**env, "DJANGO_SETTINGS_MODULE": "django_project.runner_settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Ran 4 tests" in done.stderr and "OK" in done.stderr
    left = admin.execute(
        "SELECT datname FROM pg_database WHERE datname LIKE %s", ("test_pgpk_dj_runner%",)
    ).fetchall()
    assert left == []
