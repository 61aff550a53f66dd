"""The asyncio side of pgpoolkit (the source the threaded side is generated from)."""

from .connection import AsyncPooledConnection
from .pool import AsyncPool

__all__ = ["AsyncPool", "AsyncPooledConnection"]
