"""`python -m tests.job_worker`: the service's own `worker` command (its signals, drain, health and
exit code), with job kinds of the test's own besides the platform's and the domains', so that the
platform's job guarantees are tested in every bake, with or without a domain."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from typing import Any


async def sleep(_context: Any, payload: Mapping[str, Any]) -> None:
    """`test.sleep`: runs `payload["s"]` seconds, a job a SIGTERM finds running."""
    await asyncio.sleep(float(payload["s"]))


if __name__ == "__main__":
    from {{ cookiecutter.package_name }}.__main__ import main

    sys.exit(main(["worker"], job_handlers={"test.sleep": sleep}))
