"""The Prometheus collector, its output parsed back with prometheus_client's own parser."""

from __future__ import annotations

import pytest

prometheus_client = pytest.importorskip("prometheus_client")

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from pgpoolkit import Pool, PoolManager  # noqa: E402
from pgpoolkit.integrations.prometheus import PoolCollector  # noqa: E402


def test_pools_and_managers_as_metrics(dsn: str) -> None:
    with Pool(dsn, min_size=1, name="single") as pool, PoolManager(dsn, budget=7) as manager:
        pool.wait()
        managed = manager.create_pool("managed", size=3, mode="transaction")
        with pool.connection() as conn:
            conn.execute("SELECT 1")
        with managed.connection() as conn:
            conn.execute("SELECT 1")
        registry = CollectorRegistry()
        registry.register(PoolCollector(pool, manager))
        text = generate_latest(registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["pgpoolkit_servers_idle"].type == "gauge"
    assert families["pgpoolkit_requests"].type == "counter"
    assert families["pgpoolkit_wait_seconds"].type == "counter"
    samples = {(s.name, s.labels.get("pool")): s for f in families.values() for s in f.samples}
    assert samples[("pgpoolkit_requests_total", "single")].value >= 1
    assert samples[("pgpoolkit_requests_total", "managed")].labels["mode"] == "transaction"
    assert samples[("pgpoolkit_max_size", "managed")].value == 3
    assert samples[("pgpoolkit_budget_connections", None)].value == 7
    assert samples[("pgpoolkit_budget_allocated_connections", None)].value == 3
    assert "password" not in text
