"""Serve a pool's and a pool manager's figures at http://localhost:9100/metrics for Prometheus.

pip install "pgpoolkit[prometheus]"
python examples/prometheus_metrics.py "host=127.0.0.1 dbname=postgres user=postgres" 30
"""

from __future__ import annotations

import sys
import time

from prometheus_client import REGISTRY, start_http_server

import pgpoolkit
from pgpoolkit.integrations.prometheus import PoolCollector


def main(dsn: str, seconds: float) -> None:
    with pgpoolkit.PoolManager(dsn, budget=10) as manager:
        web = manager.create_pool("web", size=5)
        REGISTRY.register(PoolCollector(manager))
        start_http_server(9100)
        print("serving http://localhost:9100/metrics for", seconds, "s")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:  # some work to see in the figures
            with web.connection() as conn:
                conn.execute("SELECT pg_sleep(0.01)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "", float(sys.argv[2]) if len(sys.argv) > 2 else 30)
