from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, status

from {{ cookiecutter.package_name }}.db.session import SessionDep
from {{ cookiecutter.package_name }}.orders import service
from {{ cookiecutter.package_name }}.orders.schemas import OrderCreate, OrderPage, OrderRead
from {{ cookiecutter.package_name }}.platform.errors import PROBLEM_RESPONSES

MAX_PAGE_SIZE = 100

router = APIRouter(prefix="/v1/orders", tags=["orders"])


def _problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {code: PROBLEM_RESPONSES[code] for code in statuses}


@router.post("", status_code=status.HTTP_201_CREATED, responses=_problems(400, 422))
async def create_order(data: OrderCreate, session: SessionDep, response: Response) -> OrderRead:
    order = await service.create(session=session, data=data)
    response.headers["Location"] = f"{router.prefix}/{order.id}"
    return OrderRead.model_validate(order)


@router.get("/{order_id}", responses=_problems(404, 422))
async def get_order(order_id: uuid.UUID, session: SessionDep) -> OrderRead:
    return OrderRead.model_validate(await service.get(session=session, order_id=order_id))


@router.get("", responses=_problems(400, 422))
async def list_orders(
    session: SessionDep,
    limit: Annotated[
        int, Query(ge=1, description=f"Page size; values above {MAX_PAGE_SIZE} are capped.")
    ] = 20,
    cursor: Annotated[
        str | None, Query(max_length=512, description="`next_cursor` of the previous page.")
    ] = None,
) -> OrderPage:
    orders, next_cursor = await service.list_page(
        session=session, limit=min(limit, MAX_PAGE_SIZE), cursor=cursor
    )
    return OrderPage(items=[OrderRead.model_validate(order) for order in orders], next_cursor=next_cursor)
