"""Orders: the verbs. Keyword-only arguments; `flush()`, never `commit()` (the request commits)."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC
from datetime import datetime

import orjson
import structlog
from sqlalchemy import select
from sqlalchemy import tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from {{ cookiecutter.package_name }}.orders import jobs as order_jobs
from {{ cookiecutter.package_name }}.orders.inventory import Inventory
from {{ cookiecutter.package_name }}.orders.models import Order
from {{ cookiecutter.package_name }}.orders.schemas import OrderCreate
from {{ cookiecutter.package_name }}.orders.schemas import OrderRead
from {{ cookiecutter.package_name }}.platform import audit
from {{ cookiecutter.package_name }}.platform import jobs
from {{ cookiecutter.package_name }}.platform.errors import BadRequest
from {{ cookiecutter.package_name }}.platform.errors import NotFound

log = structlog.get_logger(__name__)


async def create(
    *, session: AsyncSession, inventory: Inventory, data: OrderCreate, idempotency_key: str, notify: bool
) -> Order:
    # Before the first statement: no connection is held while the upstream is called.
    await inventory.reserve(sku=data.sku, quantity=data.quantity, idempotency_key=idempotency_key)
    order = Order(sku=data.sku, quantity=data.quantity)
    session.add(order)
    await session.flush()
    # In the same transaction as the order: both commit, or neither.
    audit.record(
        session, action="order.created", resource_type="order", resource_id=str(order.id), outcome="success"
    )
    if notify:
        # Also in the same transaction: the notification is sent if and only if the order exists.
        order_snapshot = OrderRead.model_validate(order).model_dump(mode="json")
        jobs.enqueue(session, order_jobs.NOTIFY, {"order": order_snapshot})
    log.info("order_created", order_id=str(order.id), sku=order.sku, quantity=order.quantity)
    return order


async def get(*, session: AsyncSession, order_id: uuid.UUID) -> Order:
    order = await session.get(Order, order_id)
    if order is None:
        raise NotFound(f"Order {order_id} does not exist.")
    return order


async def list_page(
    *, session: AsyncSession, limit: int, cursor: str | None
) -> tuple[list[Order], str | None]:
    """Newest first, by keyset (created_at, id): stable under concurrent inserts, and as fast on
    page 1000 as on page 1, unlike OFFSET."""
    query = select(Order).order_by(Order.created_at.desc(), Order.id.desc()).limit(limit + 1)
    if cursor is not None:
        created_at, order_id = _decode_cursor(cursor)
        query = query.where(tuple_(Order.created_at, Order.id) < tuple_(created_at, order_id))
    orders = list((await session.scalars(query)).all())
    if len(orders) <= limit:
        return orders, None
    last = orders[limit - 1]
    return orders[:limit], _encode_cursor(last.created_at, last.id)


def _encode_cursor(created_at: datetime, order_id: uuid.UUID) -> str:
    raw = orjson.dumps([created_at.isoformat(), str(order_id)])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at_text, order_id = orjson.loads(raw)
        created_at = datetime.fromisoformat(created_at_text)
        if created_at.tzinfo is None:
            raise ValueError("a cursor's time has a timezone")
        # In UTC, as the database compares it; a forged time near the calendar's ends overflows here.
        return created_at.astimezone(UTC), uuid.UUID(order_id)
    except (binascii.Error, ValueError, TypeError, OverflowError, orjson.JSONDecodeError):
        raise BadRequest("The cursor is not one this API returned.", slug="invalid-cursor") from None
