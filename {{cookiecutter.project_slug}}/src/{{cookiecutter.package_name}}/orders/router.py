from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated
from typing import Any

import structlog
from fastapi import APIRouter
from fastapi import FastAPI
from fastapi import Query
from fastapi import Request
from fastapi import Response
from fastapi import status

from {{ cookiecutter.package_name }}.db.session import SessionDep
from {{ cookiecutter.package_name }}.orders import service
from {{ cookiecutter.package_name }}.orders.inventory import Inventory
from {{ cookiecutter.package_name }}.orders.inventory import InventoryDep
from {{ cookiecutter.package_name }}.orders.schemas import OrderCreate
from {{ cookiecutter.package_name }}.orders.schemas import OrderPage
from {{ cookiecutter.package_name }}.orders.schemas import OrderRead
from {{ cookiecutter.package_name }}.platform.auth import require
from {{ cookiecutter.package_name }}.platform.cache import Cache
from {{ cookiecutter.package_name }}.platform.errors import PROBLEM_RESPONSES
from {{ cookiecutter.package_name }}.platform.idempotency import ClaimDep
from {{ cookiecutter.package_name }}.platform.idempotency import IdempotentRoute
from {{ cookiecutter.package_name }}.settings import Settings

MAX_PAGE_SIZE = 100

log = structlog.get_logger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Runs inside the app's lifespan: the shared HTTP client and upstreams exist by now."""
    settings: Settings = app.state.settings
    if settings.inventory_url is None:
        log.info("inventory_check_skipped", reason="INVENTORY_URL is not set")
        app.state.inventory = Inventory(None)
    else:
        url = str(settings.inventory_url)
        stock = None
        if settings.stock_cache_ttl_s > 0:
            stock = Cache[int](
                "stock",
                ttl_s=settings.stock_cache_ttl_s,
                stale_s=settings.stock_cache_stale_s,
                metrics=app.state.metrics,
            )
        app.state.inventory = Inventory(
            app.state.upstreams.get("inventory", url),
            # Reads have their own breaker: failing stock reads must not open the reservations'.
            reads=app.state.upstreams.get("inventory-stock", url),
            stock=stock,
        )
    if settings.notify_url is None:
        log.info("order_notify_skipped", reason="NOTIFY_URL is not set")
    yield


# IdempotentRoute: every unsafe route here requires an Idempotency-Key and replays its answers.
router = APIRouter(prefix="/v1/orders", tags=["orders"], lifespan=lifespan, route_class=IdempotentRoute)


def _problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {code: PROBLEM_RESPONSES[code] for code in statuses}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=_problems(400, 409, 422, 503, 504),
    dependencies=[require("orders:write")],
)
async def create_order(
    data: OrderCreate,
    session: SessionDep,
    inventory: InventoryDep,
    claim: ClaimDep,
    response: Response,
    request: Request,
) -> OrderRead:
    """Create an order once the inventory service has reserved its stock (409 `insufficient-stock`
    otherwise, replayed to a retry like a success; 503 or 504 when it cannot be asked). Requires an
    `Idempotency-Key`: a retry with the same key never creates a second order nor reserves twice."""
    order = await service.create(
        session=session,
        inventory=inventory,
        data=data,
        idempotency_key=claim.derive("inventory-reservation"),
        notify=request.app.state.settings.notify_url is not None,
    )
    response.headers["Location"] = f"{router.prefix}/{order.id}"
    return OrderRead.model_validate(order)


@router.get("/{order_id}", responses=_problems(404, 422, 503), dependencies=[require("orders:read")])
async def get_order(order_id: uuid.UUID, session: SessionDep) -> OrderRead:
    return OrderRead.model_validate(await service.get(session=session, order_id=order_id))


@router.get("", responses=_problems(400, 422, 503), dependencies=[require("orders:read")])
async def list_orders(
    session: SessionDep,
    limit: Annotated[
        int, Query(ge=1, description=f"Page size; values above {MAX_PAGE_SIZE} are capped.")
    ] = 20,
    cursor: Annotated[
        str | None,
        Query(
            max_length=512,
            pattern=r"^[A-Za-z0-9_-]+$",  # base64url, as `next_cursor` is made
            description="`next_cursor` of the previous page, as it was given; any other value is a 400.",
        ),
    ] = None,
) -> OrderPage:
    orders, next_cursor = await service.list_page(
        session=session, limit=min(limit, MAX_PAGE_SIZE), cursor=cursor
    )
    return OrderPage(items=[OrderRead.model_validate(order) for order in orders], next_cursor=next_cursor)
