"""SQLAlchemy 2 on pgpoolkit the way SQLAlchemy documents a custom pool: ``creator=`` /
``async_creator=`` with ``NullPool``, no dialect flags, an ORM unit of work in session and
transaction mode."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import pytest

sqlalchemy = pytest.importorskip("sqlalchemy")

from sqlalchemy import String, create_engine, select  # noqa: E402
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column  # noqa: E402
from sqlalchemy.pool import NullPool  # noqa: E402

from pgpoolkit import AsyncPool, Pool  # noqa: E402


def make_model(table: str) -> Any:
    class Base(DeclarativeBase):
        pass

    class Item(Base):
        __tablename__ = table
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(50))

    return Base, Item


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_orm_unit_of_work_threads(dsn: str, mode: str) -> None:
    Base, Item = make_model(f"sa_{uuid.uuid4().hex[:8]}")
    with Pool(dsn, mode=mode, min_size=1, max_size=3, timeout=10.0) as pool:
        engine = create_engine("postgresql+psycopg://", creator=pool.connect, poolclass=NullPool)
        Base.metadata.create_all(engine)
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                for i in range(10):
                    with Session(engine) as session, session.begin():
                        session.add(Item(name=f"t{n}-{i}"))
            except BaseException as ex:
                errors.append(ex)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors[:2]
        with Session(engine) as session:
            assert len(session.scalars(select(Item)).all()) == 80
        Base.metadata.drop_all(engine)
        engine.dispose()
        stats = pool.stats()
        assert stats.servers_active == 0 and stats.clients_open == 0


@pytest.mark.parametrize("mode", ["session", "transaction"])
async def test_orm_unit_of_work_asyncio(dsn: str, mode: str) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession

    Base, Item = make_model(f"sa_{uuid.uuid4().hex[:8]}")
    async with AsyncPool(dsn, mode=mode, min_size=1, max_size=3, timeout=10.0) as pool:
        engine = create_async_engine(
            "postgresql+psycopg://", async_creator=pool.connect, poolclass=NullPool
        )
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)

        async def work(n: int) -> None:
            for i in range(5):
                async with AsyncSession(engine) as session, session.begin():
                    session.add(Item(name=f"a{n}-{i}"))

        await asyncio.gather(*(work(n) for n in range(10)))
        async with AsyncSession(engine) as session:
            assert len((await session.scalars(select(Item))).all()) == 50
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
        await engine.dispose()
        assert pool.stats().servers_active == 0
