"""The project's settings. The databases depend on the test server, so ``settings()`` makes
the whole set for ``django.conf.settings.configure()`` from its DSN.

Four database aliases share two databases on the test server:

- ``default``: session mode, its own database;
- ``transaction``: transaction mode, REPEATABLE READ transactions, its own database;
- ``statement``: statement mode, on the ``transaction`` alias's database;
- ``prepared``: transaction mode with server-side binding and psycopg's prepared statements
  (``prepare_threshold``), on the ``transaction`` alias's database.

Every alias assumes the role that owns its database (``OPTIONS["assume_role"]``), and each
database's time zone is ``Etc/UTC`` while Django wants ``UTC``: the names differ, so Django's
own backend would ``SET TIME ZONE`` on every connection it opens.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from psycopg import IsolationLevel
from psycopg.conninfo import conninfo_to_dict

#: the role every alias assumes, owner of the databases
OWNER = "pgpk_dj_owner"
#: alias -> database name
DATABASE_NAMES = {"default": "pgpk_dj_session", "transaction": "pgpk_dj_transaction"}
#: pool name -> calls of the pool's configure callback: once per new server connection, and
#: again after each DISCARD ALL (what a reset costs is counted here)
CONFIGURED: Counter[str] = Counter()

MODES = {
    "default": "session",
    "transaction": "transaction",
    "statement": "statement",
    "prepared": "transaction",
}


def application_name(alias: str) -> str:
    """The application_name of an alias's server connections (to find them on the server)."""
    return f"pgpk-dj-{alias}"


def count_configure(pool_name: str) -> Any:
    def configure(conn: Any) -> None:
        CONFIGURED[pool_name] += 1

    return configure


def database(alias: str, dsn: str, **options: Any) -> dict[str, Any]:
    params = conninfo_to_dict(dsn)
    name = DATABASE_NAMES.get(alias, DATABASE_NAMES["transaction"])
    pool_name = f"django-{alias}"
    return {
        "ENGINE": "pgpoolkit.django",
        "NAME": name,
        "USER": params.get("user", ""),
        "PASSWORD": params.get("password", ""),
        "HOST": params.get("host", ""),
        "PORT": params.get("port", ""),
        "OPTIONS": {
            "application_name": application_name(alias),
            "assume_role": OWNER,
            "pool": {
                "mode": MODES[alias],
                "min_size": 1,
                "max_size": 2,
                "timeout": 10,
                "name": pool_name,
                "configure": count_configure(pool_name),
            },
            **options,
        },
    }


def settings(dsn: str) -> dict[str, Any]:
    """Everything ``settings.configure()`` takes, for the server at ``dsn``."""
    return {
        "SECRET_KEY": "pgpoolkit tests",
        "DEBUG": False,
        "DEBUG_PROPAGATE_EXCEPTIONS": True,  # a view's error fails the test with its traceback
        "ALLOWED_HOSTS": ["localhost"],
        "INSTALLED_APPS": ["django_project.items"],
        "ROOT_URLCONF": "django_project.urls",
        "MIDDLEWARE": [],
        "USE_TZ": True,
        "TIME_ZONE": "UTC",
        "DEFAULT_AUTO_FIELD": "django.db.models.BigAutoField",
        "DATABASES": {
            "default": database("default", dsn),
            "transaction": database(
                "transaction", dsn, isolation_level=IsolationLevel.REPEATABLE_READ
            ),
            "statement": database("statement", dsn),
            "prepared": database("prepared", dsn, server_side_binding=True, prepare_threshold=2),
        },
    }
