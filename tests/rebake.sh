#!/usr/bin/env bash
# dev helper: re-render the default bake into /tmp/bake1 keeping its .venv and .data
set -e
cd /tmp/bake1 && rm -rf orders-service/src orders-service/tests orders-service/migrations
/work/main/.venv/bin/cookiecutter --no-input --overwrite-if-exists /work/main "$@" >/dev/null 2>&1
