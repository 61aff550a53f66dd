"""The project's views: each request uses the database alias in its URL, and Django closes its
connections when the request ends (``close_old_connections`` on ``request_finished``)."""

from __future__ import annotations

from django.db import connections, transaction
from django.http import HttpRequest, JsonResponse

from .items.models import Item


def add(request: HttpRequest, alias: str, name: str) -> JsonResponse:
    """An item added in a transaction; how many of that name there are."""
    with transaction.atomic(using=alias):
        item = Item.objects.using(alias).create(name=name, quantity=1)
        count = Item.objects.using(alias).filter(name=name).count()
    return JsonResponse({"id": item.pk, "count": count})


def session(request: HttpRequest, alias: str) -> JsonResponse:
    """What the server says about the session: time zone, role, isolation level."""
    connection = connections[alias]
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('TimeZone'), current_user")
        time_zone, user = cursor.fetchone()
    with transaction.atomic(using=alias), connection.cursor() as cursor:
        cursor.execute("SHOW transaction_isolation")
        (isolation,) = cursor.fetchone()
    return JsonResponse(
        {
            "time_zone": time_zone,
            "reported_time_zone": connection.connection.info.parameter_status("TimeZone"),
            "user": user,
            "isolation": isolation,
        }
    )


def temp_table(request: HttpRequest, alias: str) -> JsonResponse:
    """Leaves session state on the server connection (a temporary table): the pool resets it
    when the request gives it back."""
    with connections[alias].cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE scratch (x int)")
    return JsonResponse({})
