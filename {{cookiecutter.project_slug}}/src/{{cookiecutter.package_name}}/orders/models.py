from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger
from sqlalchemy import CheckConstraint
from sqlalchemy import DateTime
from sqlalchemy import Index
from sqlalchemy import Text
from sqlalchemy import func
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from {{ cookiecutter.package_name }}.db.base import Base


class Order(Base):
    __tablename__ = "orders"
    __table_args__ = (
        CheckConstraint("quantity >= 1", name="quantity_positive"),
        CheckConstraint("char_length(sku) BETWEEN 1 AND 64", name="sku_length"),
        # Serves the keyset pagination of GET /v1/orders (newest first).
        Index("ix_orders_created_at_id", "created_at", "id"),
        Index("ix_orders_status_updated_at", "status", "updated_at"),
    )
    # RETURNING fills created_at on insert, without a second round trip.
    __mapper_args__ = {"eager_defaults": True}

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    # text with a CHECK, not varchar(n): changing a varchar's length rewrites or locks the table,
    # changing a check constraint does not (NOT VALID, then VALIDATE).
    sku: Mapped[str] = mapped_column(Text)
    quantity: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(Text, server_default="created")
    # clock_timestamp(), not now(): now() is the transaction's start, which would order rows by when
    # their transaction began rather than when they were written.
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.clock_timestamp()
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.clock_timestamp()
    )
