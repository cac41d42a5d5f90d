#!/usr/bin/env bash
# All checks in one command: lint, format, types, tests (unit + integration against a real broker).
# The tests start the local Kafka broker themselves unless KAFKA_BOOTSTRAP_SERVERS is set.
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES=(contracts feature_store models serving streaming trainer ops)
echo "== ruff check";         ruff check "${PACKAGES[@]}" tests
echo "== ruff format --check"; ruff format --check "${PACKAGES[@]}" tests
echo "== mypy";               mypy "${PACKAGES[@]}"
echo "== pytest";             python -m pytest "$@"
