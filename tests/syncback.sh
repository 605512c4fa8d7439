#!/usr/bin/env bash
# dev helper: after `ruff check --fix` / `ruff format` in the default bake at /tmp/bake1, copy the
# fixed Python files back into the template with the default answers turned back into variables.
set -e
bake=/tmp/bake1/orders-service
tmpl='/work/main/{{cookiecutter.project_slug}}'
cd "$bake"
find src tests migrations -name '*.py' | while read -r f; do
  t="$tmpl/$(echo "$f" | sed 's#src/orders_service#src/{{cookiecutter.package_name}}#')"
  [ -f "$t" ] || { echo "skip $f"; continue; }
  sed -e 's/orders_service/{{ cookiecutter.package_name }}/g' \
      -e 's/orders-service/{{ cookiecutter.project_slug }}/g' \
      -e 's/Orders Service/{{ cookiecutter.project_name }}/g' \
      -e 's/A production-grade Python service baked from paved\./{{ cookiecutter.description }}/g' \
      -e 's/p99 300 ms/p99 {{ cookiecutter.slo_latency_p99_ms }} ms/g' "$f" > "$t.new"
  if cmp -s "$t" "$t.new"; then rm "$t.new"; else mv "$t.new" "$t"; echo "synced $f"; fi
done
