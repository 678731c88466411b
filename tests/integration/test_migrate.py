"""``ollama-vllm-proxy migrate`` against a fixture Ollama model store (built in tmp_path)
and a fake running Ollama (/api/tags, /api/show on a real socket): the config it writes
loads, maps what the catalog knows, and lists the rest with reasons."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.__main__ import main as cli
from proxy.config import load
from proxy.migrate import main as migrate
from proxy.migrate.sources import parse_parameters

LLAMA_TEMPLATE = "{{ if .System }}<|start_header_id|>system<|end_header_id|>{{ .System }}<|eot_id|>{{ end }}..."


def blob(root: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / f"sha256-{digest}").write_bytes(data)
    return digest


def manifest(root: Path, name: str, layers: dict[str, bytes]) -> None:
    """``name`` as host/namespace/model/tag, layers as media type suffix → content."""
    path = root / "manifests" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = [{"mediaType": f"application/vnd.ollama.image.{kind}", "digest": f"sha256:{blob(root, data)}",
                "size": len(data)} for kind, data in layers.items()]  # fmt: skip
    path.write_text(json.dumps({"schemaVersion": 2, "layers": entries}))


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "ollama" / "models"
    weights, other = b"GGUF llama 3.1 8b", b"GGUF something else"
    library = {"model": weights, "template": LLAMA_TEMPLATE.encode(), "license": b"LLAMA 3.1 COMMUNITY LICENSE",
               "params": json.dumps({"stop": ["<|start_header_id|>", "<|eot_id|>"], "temperature": 0.6}).encode()}  # fmt: skip
    manifest(root, "registry.ollama.ai/library/llama3.1/8b", library)
    manifest(root, "registry.ollama.ai/me/assistant/latest", {**library, "system": b"You are Ada.\n",
             "params": json.dumps({"temperature": 0.2, "num_ctx": 8192, "stop": ["User:"]}).encode()})  # fmt: skip
    manifest(root, "registry.ollama.ai/library/templated/latest", {**library, "template": b"{{ .Prompt }} ANSWER:"})
    manifest(root, "registry.ollama.ai/library/lora/latest", {**library, "adapter": b"GGUF lora"})
    manifest(root, "registry.ollama.ai/library/mymodel/latest", {"model": other})
    manifest(root, "hf.co/bartowski/Qwen2.5-7B-Instruct-GGUF/Q4_K_M", {"model": b"GGUF qwen"})
    return root


def run(source: str, out: Path | None = None) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    code = migrate(source, str(out) if out else None, stderr=stderr, stdout=stdout)
    return code, stdout.getvalue(), stderr.getvalue()


def by_name(path: Path) -> dict[str, Any]:
    return {m.name: m for m in load(str(path)).models}


def test_a_model_store_becomes_a_config_that_loads(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "proxy.yaml"
    code, stdout, stderr = run(str(store), out)
    assert code == 0 and stdout == ""
    models = by_name(out)
    assert set(models) == {"llama3.1:8b", "me/assistant:latest"}
    llama = models["llama3.1:8b"]
    assert llama.launch.model == "meta-llama/Llama-3.1-8B-Instruct"
    assert llama.options == {"temperature": 0.6} and llama.system == ""  # the template's own stop tokens are dropped
    ada = models["me/assistant:latest"]  # built FROM llama3.1:8b: the same weights blob
    assert ada.launch.model == "meta-llama/Llama-3.1-8B-Instruct" and ada.system == "You are Ada."
    assert ada.options == {"temperature": 0.2, "num_ctx": 8192, "stop": ["User:"]}
    text = out.read_text()
    assert "#   templated:latest: TEMPLATE override" in text
    assert "#   lora:latest: ADAPTER (LoRA) layers are not converted" in text
    assert "#   mymodel:latest: custom GGUF weights with no known Hugging Face source" in text
    assert "#   hf.co/bartowski/Qwen2.5-7B-Instruct-GGUF:Q4_K_M: a GGUF file from Hugging Face" in text
    assert "listen:" not in text and load(str(out)).library.catalog == ()
    table = stderr.splitlines()
    assert table[0].split() == ["OLLAMA", "MODEL", "HUGGING", "FACE", "REPOSITORY", "RESULT"]
    assert any(r.startswith("me/assistant:latest") and "migrated (via llama3.1:8b)" in r for r in table)
    assert any(r.startswith("mymodel:latest") and "not migrated" in r for r in table)
    assert "sudo systemctl stop ollama" in stderr and f"serve --config {out} --listen 127.0.0.1:11434" in stderr
    assert "ollama pull llama3.1:8b" in stderr


def test_a_missing_store_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["migrate", "--from", str(tmp_path / "nowhere")]) == 1
    assert "no Ollama model store here" in capsys.readouterr().err


@pytest.fixture
async def ollama_server() -> AsyncIterator[str]:
    weights = "a" * 64
    shows = {
        "llama3.1:8b": {"modelfile": f"FROM /root/.ollama/models/blobs/sha256-{weights}\nTEMPLATE ...",
                        "template": LLAMA_TEMPLATE, "parameters": 'stop                           "<|eot_id|>"\n'
                        "temperature                    0.6"},
        "qwen3:latest": {"modelfile": "FROM /x/blobs/sha256-" + "b" * 64, "template": "{{ .Prompt }}", "parameters": ""},
        "ada:latest": {"modelfile": f'FROM /root/.ollama/models/blobs/sha256-{weights}\nSYSTEM """You are Ada."""',
                       "template": LLAMA_TEMPLATE, "system": "You are Ada.",
                       "parameters": 'stop "User:"\nstop "Ada:"\ntop_k 20'},
        "lora:latest": {"modelfile": f"FROM /b/sha256-{weights}\nADAPTER /b/sha256-{'c' * 64}", "template": LLAMA_TEMPLATE},
    }  # fmt: skip

    async def tags(_: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": n, "model": n} for n in shows]})

    async def show(request: web.Request) -> web.Response:
        return web.json_response(shows[(await request.json())["model"]])

    app = web.Application()
    app.router.add_get("/api/tags", tags)
    app.router.add_post("/api/show", show)
    server = TestServer(app)
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


async def test_a_running_ollama_becomes_a_config_on_its_address(ollama_server: str, tmp_path: Path) -> None:
    code, stdout, stderr = await asyncio.to_thread(run, ollama_server)  # urllib blocks; the server runs on this loop
    assert code == 0
    out = tmp_path / "printed.yaml"
    out.write_text(stdout)
    config = load(str(out))
    assert config.listen == ollama_server.removeprefix("http://")
    models = {m.name: m for m in config.models}
    assert set(models) == {"llama3.1:8b", "qwen3:latest", "ada:latest"}
    assert models["qwen3:latest"].launch is not None and models["qwen3:latest"].launch.model == "Qwen/Qwen3-8B"
    assert models["llama3.1:8b"].options == {"temperature": 0.6}
    assert models["ada:latest"].system == "You are Ada." and models["ada:latest"].options == {
        "stop": ["User:", "Ada:"],
        "top_k": 20,
    }
    assert "#   lora:latest: ADAPTER" in stdout
    assert f"--listen {config.listen}" in stderr and "save the config printed above" in stderr


async def test_an_unreachable_ollama_is_a_clear_error() -> None:
    code, _, stderr = await asyncio.to_thread(run, "http://127.0.0.1:9")
    assert code == 1 and "cannot reach Ollama" in stderr


def _corrupt_manifest(root: Path) -> None:
    (root / "manifests" / "registry.ollama.ai" / "library" / "bad").mkdir(parents=True)
    (root / "manifests" / "registry.ollama.ai" / "library" / "bad" / "latest").write_text("{not json")


def _missing_blob(root: Path) -> None:
    manifest(root, "registry.ollama.ai/library/gone/latest", {"system": b"hi"})
    for path in (root / "blobs").iterdir():
        path.unlink()


def _params_not_json(root: Path) -> None:
    manifest(root, "registry.ollama.ai/library/odd/latest", {"params": b"temperature 1"})


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        pytest.param(_corrupt_manifest, "not a manifest", id="corrupt manifest"),
        pytest.param(_missing_blob, "cannot read", id="missing blob"),
        pytest.param(_params_not_json, "its params layer is not JSON", id="params not JSON"),
    ],
)
def test_a_damaged_store_is_a_clear_error_not_a_traceback(tmp_path: Path, damage: Any, message: str) -> None:
    root = tmp_path / "models"
    (root / "manifests").mkdir(parents=True)
    damage(root)
    code, stdout, stderr = run(str(root))
    assert code == 1 and stdout == "" and message in stderr and "Traceback" not in stderr


@pytest.fixture
async def broken_ollama() -> AsyncIterator[str]:
    async def tags(_: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": "x:latest"}, {"name": "y:latest"}]})

    async def show(request: web.Request) -> web.Response:
        if (await request.json())["model"] == "x:latest":
            return web.Response(text="<html>oops</html>")
        return web.json_response({"error": "boom"}, status=500)

    app = web.Application()
    app.router.add_get("/api/tags", tags)
    app.router.add_post("/api/show", show)
    server = TestServer(app)
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


async def test_a_misbehaving_ollama_is_a_clear_error(broken_ollama: str) -> None:
    code, _, stderr = await asyncio.to_thread(run, broken_ollama)
    assert code == 1 and "/api/show: the answer is not JSON" in stderr


def test_show_parameters_parse_like_ollama_prints_them() -> None:
    text = 'num_ctx                        8192\nstop                           "<|im_end|>"\nstop "a b"\nmirostat_tau 5.5\nseed\n\nweird value here'
    assert parse_parameters(text) == {"num_ctx": 8192, "stop": ["<|im_end|>", "a b"], "mirostat_tau": 5.5, "weird": "value here"}
