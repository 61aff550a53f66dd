"""Settings for running the project's own Django tests (``items/tests.py``) with Django's test
runner, as ``manage.py test`` does: ``python -m django test --settings
django_project.runner_settings``, the server's DSN in ``PGPOOLKIT_DJANGO_DSN``. The runner
creates a test database per alias (through a connection outside the pools), migrates it through
the alias's pool, and drops it at the end (which fails if a connection is left on it)."""

from __future__ import annotations

import os

from psycopg.conninfo import conninfo_to_dict

_params = conninfo_to_dict(os.environ["PGPOOLKIT_DJANGO_DSN"])


def _database(name: str, mode: str) -> dict[str, object]:
    return {
        "ENGINE": "pgpoolkit.django",
        "NAME": name,
        "USER": _params.get("user", ""),
        "PASSWORD": _params.get("password", ""),
        "HOST": _params.get("host", ""),
        "PORT": _params.get("port", ""),
        "OPTIONS": {"pool": {"mode": mode, "min_size": 0, "max_size": 2, "timeout": 10}},
    }


SECRET_KEY = "pgpoolkit tests"
INSTALLED_APPS = ["django_project.items"]
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DATABASES = {
    "default": _database("pgpk_dj_runner", "session"),
    "transaction": _database("pgpk_dj_runner_tx", "transaction"),
}
