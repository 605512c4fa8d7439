"""The baked service, as production runs it, plus two routes the comparison needs.

Every request gets a server span (recorded and exported to a real OTLP/HTTP receiver when the run
sets `OTEL_EXPORTER_OTLP_ENDPOINT`, as a deployment with a collector does; ids only otherwise, the
bake's default), one JSON access line (to stdout) and its metrics. `/ping` is the trivial route; `POST /v1/orders-plain` is the
example's POST without the Idempotency-Key machinery, for the idempotency ratio.
"""

from uuid import uuid4

from fastapi import FastAPI, Request, Response
from orders_service.db.session import SessionDep
from orders_service.main import create_app as create_service
from orders_service.orders import service
from orders_service.orders.inventory import InventoryDep
from orders_service.orders.schemas import OrderCreate, OrderRead
from orders_service.platform import ratelimit
from orders_service.platform.auth import require


async def ping() -> dict[str, bool]:
    return {"ok": True}


async def create_plain(
    data: OrderCreate, session: SessionDep, inventory: InventoryDep, request: Request, response: Response
) -> OrderRead:
    # No key of its own: each call reserves afresh (no inventory is configured in the bench). The
    # rest as the idempotent route does it: the audit record, and the notify job when configured.
    order = await service.create(
        session=session,
        inventory=inventory,
        data=data,
        idempotency_key=uuid4().hex,
        notify=request.app.state.settings.notify_url is not None,
    )
    response.headers["Location"] = f"/v1/orders/{order.id}"
    return OrderRead.model_validate(order)


def create_app() -> FastAPI:
    app = create_service()
    # The example's POST route's dependencies (its scope, the rate limit): only idempotency differs.
    checks = [require("orders:write"), ratelimit.Limited]
    app.add_api_route(
        "/v1/orders-plain", create_plain, methods=["POST"], status_code=201, dependencies=checks
    )
    # Added to the app itself, and first in its route table, as in the bare app: the trivial
    # route measures the middleware stack, not the routing to it (the service has more routes).
    app.add_api_route("/ping", ping, methods=["GET"])
    app.router.routes.insert(0, app.router.routes.pop())
    return app
