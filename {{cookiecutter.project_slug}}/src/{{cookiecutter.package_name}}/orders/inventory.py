"""The inventory service, as the orders domain sees it: stock is reserved for each order.

`POST {INVENTORY_URL}/reservations` with `{"sku": ..., "quantity": int}` answers 201 (reserved),
409 `{"available": int}` (not enough) or 404 (no such SKU). A reservation is an outside effect:
the call carries an `Idempotency-Key` derived from the order request's own
(`ClaimDep.derive`), so a retry of the order, or a retry of the call (`platform.resilience`
retries unsafe calls only with a key), reserves once. With `INVENTORY_URL` unset nothing is
reserved, which the start-up log says once.

Before reserving, a pre-check reads `GET {INVENTORY_URL}/stock/{sku}` (`{"available": int}`; 404:
none) through a read-through cache (`platform.cache`, `STOCK_CACHE_TTL_S`, 0 turns the pre-check
off): an order for more than the cached stock is refused 409 at once, without a reservation call.
The reservation still decides: the pre-check only refuses early. The read has its own upstream
(`inventory-stock`: its own breaker), so failing reads do not open the reservations' circuit; while
they fail, the last answer is used for up to `STOCK_CACHE_STALE_S` past its TTL, then the error
answers 503 as without a cache.

Invalidation. An entry is wrong once stock moves: reservations (ours and other services'),
restocks. A 409 from our reservation corrects it at once (`put` of the `available` it reports);
everything else is bounded by the TTL alone, so a cached count may be STOCK_CACHE_TTL_S old. Too
high (stock was taken), the reservation refuses: no harm, one call more. Too low (a restock), an
order that would fit is refused 409 early for up to the TTL (and STOCK_CACHE_STALE_S more while
the reads fail): keep both short. Our own successful
reservations deliberately do not forget the entry: a hot SKU would then be read on every order.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import Depends
from fastapi import Request
from pydantic import BaseModel
from pydantic import ValidationError

from {{ cookiecutter.package_name }}.platform.cache import Cache
from {{ cookiecutter.package_name }}.platform.errors import Conflict
from {{ cookiecutter.package_name }}.platform.resilience import Upstream
from {{ cookiecutter.package_name }}.platform.resilience import UpstreamUnavailable


class Shortage(BaseModel):
    available: int


class Stock(BaseModel):
    available: int


class Inventory:
    def __init__(
        self, upstream: Upstream | None, *, reads: Upstream | None = None, stock: Cache[int] | None = None
    ) -> None:
        self.upstream = upstream
        self.reads = reads
        self.stock = stock

    async def available(self, sku: str) -> int:
        """The stock of `sku`, as the inventory service last said (cached; see the docstring)."""
        reads, stock = self.reads, self.stock
        assert reads is not None
        assert stock is not None

        async def read() -> int:
            response = await reads.request("GET", f"/stock/{quote(sku, safe='')}")
            if response.status_code == 404:
                return 0
            if response.status_code != 200:
                raise UpstreamUnavailable(f"inventory answered {response.status_code}.")
            try:
                return Stock.model_validate_json(response.content).available
            except ValidationError:
                raise UpstreamUnavailable("inventory answered with an unexpected body.") from None

        return await stock.get(sku, read)

    async def reserve(self, *, sku: str, quantity: int, idempotency_key: str) -> None:
        """Reserve `quantity` of `sku`, or raise `Conflict` (409 `insufficient-stock`)."""
        if self.upstream is None:
            return
        if self.stock is not None:
            available = await self.available(sku)
            if available < quantity:
                raise _shortage(sku, available=available, requested=quantity)
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
        if self.stock is not None:
            self.stock.put(sku, available)  # the freshest count there is
        raise _shortage(sku, available=available, requested=quantity)


def _shortage(sku: str, *, available: int, requested: int) -> Conflict:
    return Conflict(
        f"Only {available} of {sku} available; {requested} requested.",
        slug="insufficient-stock",
        available=available,
        requested=requested,
    )


async def _inventory(request: Request) -> Inventory:
    # `async`: FastAPI runs a plain `def` dependency in a worker thread, a hand-off per request.
    inventory: Inventory = request.app.state.inventory
    return inventory


InventoryDep = Annotated[Inventory, Depends(_inventory)]
