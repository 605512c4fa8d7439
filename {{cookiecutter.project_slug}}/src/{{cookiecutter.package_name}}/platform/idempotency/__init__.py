"""`Idempotency-Key` on unsafe requests: a retried POST takes effect once, and gets the first answer.

Standard: Reliability / Idempotency (IETF httpapi draft "The Idempotency-Key HTTP Header Field",
Stripe's documented behaviour). Tuned by `IDEMPOTENCY_LEASE_S` (default 12 s, longer than
`REQUEST_TIMEOUT_S`), `IDEMPOTENCY_RETENTION_S` (24 h) and `IDEMPOTENCY_PURGE_INTERVAL_S`.

One declaration, `APIRouter(route_class=IdempotentRoute)`, makes every unsafe route of the router
(POST, PUT, PATCH, DELETE) require the header; a route that cannot be stored and replayed (one that
streams, or mixes safe and unsafe methods) stops start-up with a message naming it. Per request:

1. The key is read (a bare token or an RFC 8941 quoted string; 1-255 safe characters; missing or
   malformed: 400) and scoped by principal, method and route template.
2. Before anything of the handler runs, the key is claimed in PostgreSQL with one statement in
   autocommit (`store.Store.claim`): a new key, an expired record, or a claim whose lease ran out
   becomes this request's. Otherwise the record answers: held by another request, 409
   `idempotency-key-in-use` with `Retry-After` (the handler does not start); answered, its answer
   replayed byte for byte (`Idempotent-Replayed: true`); either with another request's fingerprint
   (method, path, query, canonical JSON body), 422 `idempotency-key-reused`. The claim lives in the
   database, so it holds across processes and replicas, and it holds no connection: a handler that
   waits on an upstream keeps no pooled connection for its key.
3. The answer the handler returns (below 500) is stored in the request's own transaction, beside
   its effect: both commit or neither (`SessionDep` commits before the response is sent).
4. Which answers are replayed: every answer the handler produced below 500, domain refusals such
   as 409 `insufficient-stock` included (their writes roll back; the refusal is stored on its
   own). Not stored: 400/422 for a request refused before the handler ran, the 409 for a key in
   flight, and every 5xx, returned or raised (a returned 5xx rolls its writes back like a raised
   one). A request that ends without a stored answer (an error, a 5xx, a cancellation) releases
   its claim at once, so the client's retry runs straight away.
5. A process that dies mid-request leaves a claim that `IDEMPOTENCY_LEASE_S` expires; the next
   request with the key then runs the handler again. What the dead one did in this database rolled
   back with its transaction, but a call it made to another service may have happened: outside
   effects are at least once. So a handler passes a key derived from its own
   (`claim.derive("purpose")`, through `ClaimDep`) to each unsafe upstream call, and the upstream
   de-duplicates the second call; the example's stock reservation does.

Records expire after the retention; `purge_expired` deletes them in small batches (a periodic job
of the worker, and `python -m <package> purge-idempotency-keys`).
"""

from {{ cookiecutter.package_name }}.platform.idempotency.key import KEY_HEADER
from {{ cookiecutter.package_name }}.platform.idempotency.purge import purge_expired
from {{ cookiecutter.package_name }}.platform.idempotency.route import REPLAYED_HEADER
from {{ cookiecutter.package_name }}.platform.idempotency.route import Claim
from {{ cookiecutter.package_name }}.platform.idempotency.route import ClaimDep
from {{ cookiecutter.package_name }}.platform.idempotency.route import IdempotentRoute
from {{ cookiecutter.package_name }}.platform.idempotency.route import current_principal
from {{ cookiecutter.package_name }}.platform.idempotency.route import install
from {{ cookiecutter.package_name }}.platform.idempotency.store import IdempotencyRecord
from {{ cookiecutter.package_name }}.platform.idempotency.store import Store

__all__ = [
    "KEY_HEADER",
    "REPLAYED_HEADER",
    "Claim",
    "ClaimDep",
    "IdempotencyRecord",
    "IdempotentRoute",
    "Store",
    "current_principal",
    "install",
    "purge_expired",
]
