"""Work on many rows in short transactions of their own: the purges of expired records.

One DELETE over every expired row holds its locks and bloats WAL for as long as it runs; a batch per
transaction keeps each one short, so requests and other replicas never wait long behind it.
"""

from __future__ import annotations

from collections.abc import Awaitable
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.ext.asyncio import AsyncEngine


async def in_batches(
    engine: AsyncEngine, step: Callable[[AsyncConnection], Awaitable[int]], *, batch: int
) -> int:
    """Run `step` (which handles at most `batch` rows and says how many) in a transaction of its
    own, again and again until a run handles fewer than `batch`. Returns the rows handled in all."""
    total = 0
    while True:
        async with engine.begin() as connection:
            count = await step(connection)
        total += count
        if count < batch:
            return total
