"""SQLAlchemy 2 (ORM, sync and asyncio) on pgpoolkit pools in transaction mode.

PGPOOLKIT_DSN="host=127.0.0.1 dbname=postgres user=postgres" python examples/sqlalchemy_app.py
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import JSON, String, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import pgpoolkit
from pgpoolkit.sqlalchemy import create_async_engine, create_engine


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = f"example_orders_{uuid.uuid4().hex[:8]}"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer: Mapped[str] = mapped_column(String(50))
    details: Mapped[dict[str, Any]] = mapped_column(JSON)


def compact_json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)


def sync_part(dsn: str) -> None:
    # 20 threads over 5 server connections; SQLAlchemy keeps none of its own (NullPool)
    with pgpoolkit.Pool(dsn, mode="transaction", min_size=1, max_size=5) as pool:
        engine = create_engine(pool, json_serializer=compact_json)
        Base.metadata.create_all(engine)

        def place(n: int) -> None:
            with Session(engine) as session, session.begin():  # one server connection, borrowed
                session.add(Order(customer=f"c{n % 4}", details={"items": n}))

        with ThreadPoolExecutor(20) as executor:
            list(executor.map(place, range(100)))

        with Session(engine) as session:
            rows = session.execute(
                select(Order.customer, func.count())
                .group_by(Order.customer)
                .order_by(Order.customer)
            ).all()
            print("orders per customer:", [tuple(row) for row in rows])
        stats = pool.stats()
        print(
            f"sync: {stats.transactions_total} transactions over at most "
            f"{stats.max_size} server connections; {stats.servers_active} in use now"
        )
        engine.dispose()


async def async_part(dsn: str) -> None:
    # 50 tasks over 5 server connections
    async with pgpoolkit.AsyncPool(dsn, mode="transaction", min_size=1, max_size=5) as pool:
        engine = create_async_engine(pool)

        async def total_for(customer: str) -> int:
            async with AsyncSession(engine) as session:
                result = await session.scalars(select(Order).where(Order.customer == customer))
                return sum(order.details["items"] for order in result)

        try:
            totals = await asyncio.gather(*(total_for(f"c{n % 4}") for n in range(50)))
            print("async: items of c0..c3:", sorted(set(totals)))
        finally:
            async with engine.begin() as conn:
                await conn.run_sync(Base.metadata.drop_all)
            await engine.dispose()
        print("async: clients still open:", pool.stats().clients_open)


def main() -> None:
    dsn = os.environ.get("PGPOOLKIT_DSN", "")
    sync_part(dsn)
    asyncio.run(async_part(dsn))


if __name__ == "__main__":
    main()
