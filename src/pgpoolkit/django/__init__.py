"""A Django database backend on a pgpoolkit pool: ``ENGINE: "pgpoolkit.django"``.

Django's own PostgreSQL backend, with its connections taken from a :class:`pgpoolkit.Pool`
(session, transaction or statement pooling) instead of psycopg_pool::

    DATABASES = {
        "default": {
            "ENGINE": "pgpoolkit.django",
            "NAME": "app",
            "OPTIONS": {"pool": {"mode": "transaction", "min_size": 2, "max_size": 10}},
        }
    }

``OPTIONS["pool"]`` takes the keys Django's ``OPTIONS["pool"]`` takes (psycopg_pool's:
``min_size``, ``max_size``, ``timeout``, ``max_idle``, ...) and pgpoolkit's (``mode``,
``max_clients``, ``idle_in_transaction_timeout``, ...). The backend lives in
:mod:`pgpoolkit.django.base` (Django imports ``<ENGINE>.base``); this package imports nothing
from Django itself. See docs/integrations/django.md.
"""
