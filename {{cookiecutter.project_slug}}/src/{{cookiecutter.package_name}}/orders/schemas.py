from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated
from typing import Literal

from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import Field
from pydantic import StringConstraints

Sku = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]


class OrderCreate(BaseModel):
    # strict: "3" is not a quantity; forbid: a misspelt field is an error, not silently dropped.
    model_config = ConfigDict(strict=True, extra="forbid")

    sku: Sku
    quantity: Annotated[int, Field(ge=1, le=10_000)]


class OrderRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    sku: str
    quantity: int
    status: Literal["created"]
    created_at: datetime


class OrderPage(BaseModel):
    items: list[OrderRead]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")
