"""The project's Django tests, run by Django's test runner (tests/test_django.py starts it):
what a user's own test suite does on the pgpoolkit backend, in session mode (``default``) and
transaction mode (``transaction``)."""

from __future__ import annotations

import threading

from django.db import connections, transaction
from django.test import TestCase, TransactionTestCase

from pgpoolkit import PooledConnection

from .models import Item

ALIASES = ("default", "transaction")


class PooledTestCase(TestCase):
    """Each test runs in a transaction that is rolled back at its end."""

    databases = {"default", "transaction"}

    def test_the_test_databases_through_the_pools(self) -> None:
        for alias in ALIASES:
            with connections[alias].cursor() as cursor:
                cursor.execute("SELECT current_database()")
                (name,) = cursor.fetchone()
            self.assertTrue(name.startswith("test_"), name)
            self.assertIsInstance(connections[alias].connection, PooledConnection)
            pool = connections[alias].pool
            self.assertEqual(pool.policy.name, "session" if alias == "default" else "transaction")

    def test_crud_and_num_queries(self) -> None:
        for alias in ALIASES:
            items = Item.objects.using(alias)
            item = items.create(name="a", quantity=2)
            with self.assertNumQueries(1, using=alias):
                self.assertEqual(items.get(pk=item.pk).quantity, 2)
            items.filter(pk=item.pk).update(quantity=3)
            self.assertEqual(items.get(pk=item.pk).quantity, 3)

    def test_savepoint_rollback(self) -> None:
        for alias in ALIASES:
            items = Item.objects.using(alias)
            try:
                with transaction.atomic(using=alias):
                    items.create(name="lost")
                    raise ValueError
            except ValueError:
                pass
            self.assertFalse(items.filter(name="lost").exists())


class PooledTransactionTestCase(TransactionTestCase):
    """Tests that commit (the runner empties the tables after each), from several threads."""

    databases = {"default", "transaction"}

    def test_threads_commit(self) -> None:
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                for alias in ALIASES:
                    with transaction.atomic(using=alias):
                        Item.objects.using(alias).create(name=f"t{n}")
            except BaseException as ex:
                errors.append(ex)
            finally:
                connections.close_all()

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertEqual(errors, [])
        for alias in ALIASES:
            self.assertEqual(Item.objects.using(alias).count(), 4)
            stats = connections[alias].pool.stats()
            self.assertEqual(stats.servers_active, 1 if alias == "default" else 0)
