# paved: the template's front door. `make demo` bakes and runs the default service; `make test`
# bakes every supported combination and runs what it produces.
export UV_PYTHON_DOWNLOADS := never
# uv from PATH, else the module pip installed (a fresh machine gets it from the `tools` target).
UV ?= $(shell command -v uv 2>/dev/null || echo python3 -m uv)
export UV
BUILD := build
DEMO := $(BUILD)/orders-service

.DEFAULT_GOAL := help
.PHONY: help tools demo bake test lint lock openapi bench soak conformance clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

tools:  ## make sure uv is installed (pip installs it when it is not)
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	@$(UV) --version

.venv/.installed: pyproject.toml | tools
	$(UV) sync --quiet
	@touch $@

bake: .venv/.installed  ## bake the default service into build/ (git-ignored)
	.venv/bin/cookiecutter --no-input --overwrite-if-exists --output-dir $(BUILD) $(CURDIR)

demo: bake  ## bake the default service and run it on embedded PostgreSQL
	@echo "Serving on http://127.0.0.1:$${PORT:-8000}: /docs, /health, /ready, /v1/orders; metrics on http://127.0.0.1:$${METRICS_PORT:-9090}/metrics. Ctrl-C stops it."
	$(MAKE) -C $(DEMO) run

test: .venv/.installed  ## bake every combination; lint and test each bake; run the default one
	@mkdir -p $(BUILD)  # pytest's --basetemp (pyproject.toml) lives in it
	.venv/bin/pytest -n 2 --dist worksteal $(PYTEST_ARGS)

lint: .venv/.installed  ## lint the template's own code (hooks, tests, bench)
	.venv/bin/ruff check hooks tests bench tools
	.venv/bin/ruff format --check hooks tests bench tools

lock: .venv/.installed  ## re-resolve the baked service's uv.lock (UPGRADE=1: the newest versions its ranges allow)
	.venv/bin/python tools/lock.py $(if $(UPGRADE),--upgrade)

openapi: .venv/.installed  ## regenerate the OpenAPI document every bake commits (after an API change)
	.venv/bin/python tools/openapi.py

bench: .venv/.installed  ## what the standards cost vs bare FastAPI (installs wrk if it can)
	.venv/bin/python bench/run.py $(BENCH_ARGS)

soak: .venv/.installed  ## RSS under minutes of load, and what exemplars and the lag probe cost (SOAK_ARGS)
	.venv/bin/python bench/soak.py $(SOAK_ARGS)

# Standard library only, so no venv: any python3 >= 3.11 runs it, against any service.
conformance:  ## score a running service against the standards: URL=http://host:port [ARGS=--json]
	@test -n "$(URL)" || { echo "make conformance: URL is missing; usage: make conformance URL=http://host:port [ARGS='--json --header \"Authorization: Bearer ...\"']" >&2; exit 2; }
	python3 tools/conformance.py $(URL) $(ARGS)

clean:  ## remove bakes and the venv
	rm -rf $(BUILD) .venv .pytest_cache
