"""The baseline: bare FastAPI and bare SQLAlchemy, no production standards at all.

The same routes and the same queries as the service's, so the ratios measure what the standards
cost: no middleware, no logging, no tracing, no metrics, no idempotency.
"""

import os
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, ClassVar

from fastapi import Depends, FastAPI
from pydantic import BaseModel
from sqlalchemy import DateTime, Text, func
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    __mapper_args__: ClassVar[dict[str, bool]] = {"eager_defaults": True}

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    sku: Mapped[str] = mapped_column(Text)
    quantity: Mapped[int]
    status: Mapped[str] = mapped_column(Text, server_default="created")
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.clock_timestamp()
    )


class OrderIn(BaseModel):
    sku: str
    quantity: int


class OrderOut(BaseModel):
    id: uuid.UUID
    sku: str
    quantity: int
    status: str
    created_at: datetime


def create_app() -> FastAPI:
    url = os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+asyncpg://", 1)
    engine = create_async_engine(url, pool_size=10, max_overflow=5)
    sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def session() -> AsyncIterator[AsyncSession]:
        async with sessions() as s, s.begin():
            yield s

    app = FastAPI()
    Session = Annotated[AsyncSession, Depends(session)]

    @app.get("/ping")
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/v1/orders/{order_id}")
    async def get_order(order_id: uuid.UUID, s: Session) -> OrderOut:
        order = await s.get(Order, order_id)
        assert order is not None
        return OrderOut.model_validate(order, from_attributes=True)

    @app.post("/v1/orders", status_code=201)
    async def create_order(data: OrderIn, s: Session) -> OrderOut:
        order = Order(sku=data.sku, quantity=data.quantity)
        s.add(order)
        await s.flush()
        return OrderOut.model_validate(order, from_attributes=True)

    # First in the route table, as in the service's benchmark app (see apps/service.py).
    first = next(route for route in app.router.routes if getattr(route, "path", None) == "/ping")
    app.router.routes.remove(first)
    app.router.routes.insert(0, first)
    return app
