"""The inventory service, as the orders domain sees it: how many of a SKU can be sold.

`GET {INVENTORY_URL}/stock/{sku}` answers `{"sku": ..., "available": int}`; the call goes through
`platform.resilience.Upstream` (deadline, retries, circuit breaker). With `INVENTORY_URL` unset the
check is skipped, which the start-up log says once.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import Depends
from fastapi import Request
from pydantic import BaseModel
from pydantic import ValidationError

from {{ cookiecutter.package_name }}.platform.errors import Conflict
from {{ cookiecutter.package_name }}.platform.resilience import Upstream
from {{ cookiecutter.package_name }}.platform.resilience import UpstreamUnavailable


class Stock(BaseModel):
    sku: str
    available: int


class Inventory:
    def __init__(self, upstream: Upstream | None) -> None:
        self.upstream = upstream

    async def ensure_available(self, *, sku: str, quantity: int) -> None:
        """Raise `Conflict` (409 `insufficient-stock`) unless `quantity` of `sku` can be sold."""
        if self.upstream is None:
            return
        response = await self.upstream.request("GET", f"/stock/{quote(sku, safe='')}")
        if response.status_code == 404:
            available = 0
        elif response.status_code == 200:
            try:
                available = Stock.model_validate_json(response.content).available
            except ValidationError:
                raise UpstreamUnavailable("inventory answered with an unexpected body.") from None
        else:
            raise UpstreamUnavailable(f"inventory answered {response.status_code}.")
        if available < quantity:
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
