"""The inventory service, as the orders domain sees it: stock is reserved for each order.

`POST {INVENTORY_URL}/reservations` with `{"sku": ..., "quantity": int}` answers 201 (reserved),
409 `{"available": int}` (not enough) or 404 (no such SKU). A reservation is an outside effect:
the call carries an `Idempotency-Key` derived from the order request's own
(`ClaimDep.derive`), so a retry of the order, or a retry of the call (`platform.resilience`
retries unsafe calls only with a key), reserves once. With `INVENTORY_URL` unset nothing is
reserved, which the start-up log says once.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from fastapi import Request
from pydantic import BaseModel
from pydantic import ValidationError

from {{ cookiecutter.package_name }}.platform.errors import Conflict
from {{ cookiecutter.package_name }}.platform.resilience import Upstream
from {{ cookiecutter.package_name }}.platform.resilience import UpstreamUnavailable


class Shortage(BaseModel):
    available: int


class Inventory:
    def __init__(self, upstream: Upstream | None) -> None:
        self.upstream = upstream

    async def reserve(self, *, sku: str, quantity: int, idempotency_key: str) -> None:
        """Reserve `quantity` of `sku`, or raise `Conflict` (409 `insufficient-stock`)."""
        if self.upstream is None:
            return
        response = await self.upstream.request(
            "POST",
            "/reservations",
            json={"sku": sku, "quantity": quantity},
            headers={"Idempotency-Key": idempotency_key},
        )
        if response.status_code in (200, 201):
            return
        if response.status_code == 404:
            available = 0
        elif response.status_code == 409:
            try:
                available = Shortage.model_validate_json(response.content).available
            except ValidationError:
                raise UpstreamUnavailable("inventory answered with an unexpected body.") from None
        else:
            raise UpstreamUnavailable(f"inventory answered {response.status_code}.")
        raise Conflict(
            f"Only {available} of {sku} available; {quantity} requested.",
            slug="insufficient-stock",
            available=available,
            requested=quantity,
        )


def _inventory(request: Request) -> Inventory:
    inventory: Inventory = request.app.state.inventory
    return inventory


InventoryDep = Annotated[Inventory, Depends(_inventory)]
