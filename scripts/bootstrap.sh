#!/usr/bin/env bash
# Creates ./.venv (Python >= 3.11) with the proxy installed, unless it is already there.
# Sourced by scripts/serve.sh and scripts/test.sh; EXTRAS selects optional dependencies.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${PROXY_VENV:-$repo/.venv}"
python="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "ollama-vllm-proxy needs Python 3.11 or newer ($python is $("$python" -V 2>&1))" >&2
  exit 1
fi
extras="${EXTRAS:-}"
stamp="$venv/.installed${extras:+-$extras}"
# proxy/_fast.c is compiled by the install: a changed source needs it again.
if [ ! -f "$stamp" ] || [ "$repo/pyproject.toml" -nt "$stamp" ] || [ "$repo/proxy/_fast.c" -nt "$stamp" ]; then
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$repo${extras:+[$extras]}"
  touch "$stamp"
fi
