"""`make openapi`: the OpenAPI document every bake commits, `{{cookiecutter.project_slug}}/openapi.json`.

Generated, never written by hand: this bakes the service with and without the example domain,
asks each bake for its document (its own `scripts/openapi.py`), and writes one template that
renders the right one, with the service's name and description as the template variables they are.
Each bake's `make lint` checks that the document it ships is the one its code serves.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from cookiecutter.main import cookiecutter

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_DOCUMENT = ROOT / "{{cookiecutter.project_slug}}" / "openapi.json"
NAME, DESCRIPTION = "Orders Service", "A production-grade Python service baked from paved."


def document(example_domain: bool, scratch: Path) -> str:
    baked = Path(
        cookiecutter(
            str(ROOT),
            no_input=True,
            output_dir=str(scratch / str(example_domain)),
            extra_context={"include_example_domain": example_domain},
        )
    )
    uv = os.environ.get("UV", "uv").split()
    subprocess.run([*uv, "sync", "--locked", "--quiet"], cwd=baked, check=True)
    subprocess.run([baked / ".venv/bin/python", "scripts/openapi.py", "write"], cwd=baked, check=True)
    text = (baked / "openapi.json").read_text()
    for value, variable in (
        (NAME, "{{ cookiecutter.project_name }}"),
        (DESCRIPTION, "{{ cookiecutter.description }}"),
    ):
        if value not in text:
            raise SystemExit(f"openapi: {value!r} is not in the generated document")
        text = text.replace(value, variable)
    return text


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="paved-openapi-") as scratch:
        with_example, without = (document(flag, Path(scratch)) for flag in (True, False))
    TEMPLATE_DOCUMENT.write_text(
        "{% if cookiecutter.include_example_domain %}" + with_example + "{% else %}" + without + "{% endif %}"
    )
    print(f"openapi: wrote {TEMPLATE_DOCUMENT.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
