"""A Prometheus collector for pgpoolkit's pools and pool managers (``pgpoolkit[prometheus]``).

::

    from prometheus_client import REGISTRY, start_http_server
    from pgpoolkit.integrations.prometheus import PoolCollector

    REGISTRY.register(PoolCollector(pool, manager))
    start_http_server(9100)

Every figure of ``pool.stats()`` (docs/stats.md) becomes a metric named
``pgpoolkit_<figure>``, labelled with the pool's name and mode: the gauges as gauges
(``pgpoolkit_servers_active``), the ``*_total`` counters as counters, times in seconds as
Prometheus' conventions ask (``pgpoolkit_wait_seconds_total``). A manager adds its pools and
its budget (``pgpoolkit_budget_connections``, ``pgpoolkit_budget_allocated_connections``).
The figures are read when Prometheus scrapes: nothing runs in between.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import fields
from typing import Any

try:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as ex:  # pragma: no cover - the extra is not installed
    raise ImportError(
        "the Prometheus collector needs prometheus_client: pip install 'pgpoolkit[prometheus]'"
    ) from ex

from ..stats import PoolStats

__all__ = ["PoolCollector"]

_LABELS = ("pool", "mode")
#: PoolStats fields that are not figures
_NOT_FIGURES = ("name", "mode")
_DOCS = {
    "min_size": "Connections the pool keeps open",
    "max_size": "Connections the pool never exceeds",
    "clients_open": "Pooled connections open",
    "clients_idle": "Pooled connections holding no server connection",
    "clients_active": "Pooled connections holding a server connection",
    "clients_waiting": "Requests waiting for a server connection",
    "clients_pinned": "Pooled connections pinned to their server connection",
    "servers_active": "Server connections in use",
    "servers_idle": "Server connections idle",
    "servers_connecting": "Server connections being opened",
}


class PoolCollector(Collector):
    """Collects the stats of pools (``Pool``, ``AsyncPool``) and of pool managers' pools."""

    def __init__(self, *sources: Any) -> None:
        self._sources = sources

    def _pools(self) -> Iterator[tuple[PoolStats, Any]]:
        for source in self._sources:
            if hasattr(source, "list_pools"):  # a manager
                for info in source.list_pools():
                    yield source.get_pool(info.name).stats(), source
            else:
                yield source.stats(), None

    def collect(self) -> Iterable[Metric]:
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        for stats, _ in self._pools():
            labels = [stats.name, stats.mode]
            for field in fields(stats):
                if field.name in _NOT_FIGURES:
                    continue
                value = getattr(stats, field.name)
                name, value = _metric(field.name, value)
                family = families.get(name)
                if family is None:
                    doc = _DOCS.get(field.name, field.name.replace("_", " ").capitalize())
                    kind = (
                        CounterMetricFamily
                        if field.name.endswith("_total")
                        else (GaugeMetricFamily)
                    )
                    family = families[name] = kind(name, doc, labels=_LABELS)
                family.add_metric(labels, value)
        yield from families.values()
        for source in self._sources:
            if hasattr(source, "budget"):
                try:
                    budget = source.budget()
                except Exception:  # a manager not open yet
                    continue
                yield GaugeMetricFamily(
                    "pgpoolkit_budget_connections",
                    "Server connections a pool manager's pools may hold together",
                    value=budget.total,
                )
                yield GaugeMetricFamily(
                    "pgpoolkit_budget_allocated_connections",
                    "The sum of a pool manager's pool sizes",
                    value=budget.allocated,
                )


def _metric(field: str, value: int) -> tuple[str, float]:
    """The metric's name and value: milliseconds become seconds, as Prometheus asks; a
    counter's name is given without its ``_total``, which prometheus_client adds."""
    name = field[: -len("_total")] if field.endswith("_total") else field
    if name.endswith("_ms"):
        return f"pgpoolkit_{name[:-3]}_seconds", value / 1000.0
    return f"pgpoolkit_{name}", float(value)
