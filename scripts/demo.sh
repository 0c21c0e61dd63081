#!/usr/bin/env bash
# Set up (if needed) and run the embedded demo: offline, a few minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_HOME="${PREFECT_HOME:-$PWD/.prefect/home}"
exec .venv/bin/bergson demo "$@"
