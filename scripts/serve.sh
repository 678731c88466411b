#!/usr/bin/env bash
# Install (first run only) and run the proxy: scripts/serve.sh --backend http://127.0.0.1:8000
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/bootstrap.sh"
exec "$venv/bin/ollama-vllm-proxy" serve "$@"
