"""Serve a pool's and a pool manager's figures at http://localhost:9100/metrics for Prometheus.

pip install "pgpoolkit[prometheus]"
PGPOOLKIT_DSN="host=127.0.0.1 dbname=postgres" python examples/prometheus_metrics.py 30 9100

Arguments: how many seconds to serve (default 30) and the port (default 9100; 0: any free one).
"""

from __future__ import annotations

import os
import socket
import sys
import time
import urllib.request

from prometheus_client import REGISTRY, start_http_server

import pgpoolkit
from pgpoolkit.integrations.prometheus import PoolCollector

#: the server: a libpq connection string (PGHOST, PGUSER... fill in what it leaves out)
DSN = os.environ.get("PGPOOLKIT_DSN", "dbname=postgres")


def main(dsn: str, seconds: float, port: int) -> None:
    with pgpoolkit.PoolManager(dsn, budget=10) as manager:
        web = manager.create_pool("web", size=5)
        REGISTRY.register(PoolCollector(manager))
        if port == 0:  # any free port
            with socket.socket() as probe:
                probe.bind(("localhost", 0))
                port = probe.getsockname()[1]
        start_http_server(port, addr="localhost")  # a daemon thread: ends with the program
        url = f"http://localhost:{port}/metrics"
        print("serving", url, "for", seconds, "s")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:  # some work to see in the figures
            with web.connection() as conn:
                conn.execute("SELECT pg_sleep(0.01)")
        with urllib.request.urlopen(url) as response:  # what Prometheus would read
            for line in response.read().decode().splitlines():
                if line.startswith("pgpoolkit_statements_total"):
                    print(line)


if __name__ == "__main__":
    main(
        DSN,
        float(sys.argv[1]) if len(sys.argv) > 1 else 30.0,
        int(sys.argv[2]) if len(sys.argv) > 2 else 9100,
    )
