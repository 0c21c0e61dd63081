#!/usr/bin/env bash
# Set up (if needed), lint (ruff) and run the whole test suite, CPU only and offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_HOME="$PWD/.prefect/tests"
mkdir -p "$PREFECT_HOME"
.venv/bin/ruff check .  # lint first: pyproject.toml [tool.ruff]
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
