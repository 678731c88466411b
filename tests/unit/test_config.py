"""Configuration: the shipped example loads; each bad configuration fails with one line
naming the key and the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.config import Config, ConfigError, from_mapping, load

REPO = Path(__file__).resolve().parents[2]


def test_shipped_config_loads() -> None:
    config = load(str(REPO / "config.yaml"))
    assert config.listen == "127.0.0.1:11434"
    assert config.backends[0].url == "http://127.0.0.1:8000" and config.backends[0].name == "gpu0"
    assert config.models[0].name == "llama3.1:8b" and config.models[0].served == "meta-llama/Llama-3.1-8B-Instruct"
    assert config.models[0].options == {"temperature": 0.7}
    (managed,) = config.managed
    assert managed.name == "qwen3:8b" and managed.launch is not None and managed.launch.model == "Qwen/Qwen3-8B"
    assert managed.launch.gpu_share == 0.5 and managed.launch.args == ("--max-model-len", "16384")
    assert (config.max_loaded, config.max_queue, config.queue_timeout, config.load_timeout) == (0, 512, 60, 600)
    assert config.timeouts.idle == 120.0  # documented there, with first_byte
    assert config.backends[0].tools.drop_unsupported is False and config.models[0].tools.drop_unsupported is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param({"lisen": "x"}, "lisen: unknown key", id="unknown top-level key"),
        pytest.param({"backends": [{"urll": "http://x"}]}, "backends[0].urll: unknown key", id="unknown nested key"),
        pytest.param({"backends": [{"url": "ftp://x"}]}, "backends[0].url: 'ftp://x' is not an http(s) URL", id="bad URL"),
        pytest.param(
            {"backends": [{"url": "http://x:99999"}]}, "backends[0].url: 'http://x:99999' has an invalid port", id="bad port"
        ),  # fmt: skip
        pytest.param({"refresh_interval": "soon"}, "refresh_interval: expected a positive number", id="bad type"),
        pytest.param({"timeouts": {"connect": -1}}, "timeouts.connect: expected a positive number", id="negative timeout"),
        pytest.param({"timeouts": {"idle": 0}}, "timeouts.idle: expected a positive number", id="zero idle timeout"),
        pytest.param({"listen": "host:port"}, "listen: invalid port", id="bad listen"),
        pytest.param({"ollama_version": "latest"}, "ollama_version: 'latest' is not a numeric dotted version", id="bad version"),
        pytest.param({"log_level": "loud"}, "log_level: 'loud' is not one of", id="bad log level"),
        pytest.param(
            {"backends": [{"url": "http://a"}], "models": [{"name": "x", "backend": "nope", "served": "y"}]},
            "models[0].backend: no backend named 'nope'",
            id="alias to an unknown backend",
        ),  # fmt: skip
        pytest.param(
            {"backends": [{"url": "http://a"}], "models": [{"name": "bad name", "backend": "a", "served": "y"}]},
            "models[0].name: 'bad name' is not a valid Ollama model name",
            id="invalid alias name",
        ),  # fmt: skip
        pytest.param(
            {"backends": [{"url": "http://a"}], "models": [{"name": "x", "backend": "a"}]},
            "models[0].served: missing",
            id="alias without served",
        ),  # fmt: skip
        pytest.param({"backends": "http://a"}, "backends: expected a list", id="backends not a list"),
        pytest.param(
            {"backends": [{"url": "http://a", "drop_unsupported_tools": "yes"}]},
            "backends[0].drop_unsupported_tools: expected true or false",
            id="drop_unsupported_tools not a bool",
        ),
        pytest.param(
            {
                "backends": [{"url": "http://a"}],
                "models": [{"name": "x", "backend": "a", "served": "y", "drop_unsupported_tools": 1}],
            },
            "models[0].drop_unsupported_tools: expected true or false",
            id="model drop_unsupported_tools",
        ),
        pytest.param([1], "top level: expected a mapping", id="not a mapping"),
    ],
)
def test_bad_config(data: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_mapping(data, "/etc/p.yaml")
    text = str(info.value)
    assert text.startswith("/etc/p.yaml: ") and message in text and "\n" not in text


def test_bad_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("listen: [\n")
    with pytest.raises(ConfigError, match=rf"{path}: line \d+ invalid YAML"):
        load(str(path))


@pytest.mark.parametrize(
    ("listen", "env", "expected"),
    [
        pytest.param(None, {}, "127.0.0.1:11434", id="default"),
        pytest.param(None, {"OLLAMA_HOST": "0.0.0.0"}, "0.0.0.0:11434", id="OLLAMA_HOST without port"),
        pytest.param(None, {"OLLAMA_HOST": ":8080"}, "127.0.0.1:8080", id="OLLAMA_HOST port only"),
        pytest.param(None, {"OLLAMA_HOST": "http://10.0.0.1:9000"}, "10.0.0.1:9000", id="OLLAMA_HOST with scheme"),
        pytest.param("127.0.0.1:1234", {"OLLAMA_HOST": "0.0.0.0"}, "127.0.0.1:1234", id="--listen wins"),
    ],
)
def test_listen_precedence(listen: str | None, env: dict[str, str], expected: str) -> None:
    assert Config().with_cli([], listen, env).listen == expected


def test_cli_backends_add_to_the_file_and_dedupe() -> None:
    config = from_mapping({"backends": [{"url": "http://a:1/v1", "name": "a"}]}).with_cli(["http://a:1", "http://b:2"], None, {})
    assert [(b.name, b.url) for b in config.backends] == [("a", "http://a:1"), ("b:2", "http://b:2")]


def test_cli_models_become_managed_models_with_family_defaults() -> None:
    config = Config().with_cli([], None, {}, models=["Qwen/Qwen3-8B", "small=./models/tiny-llama"],
                               vllm_python="/opt/vllm/bin/python", vllm_args="--dtype float32 --enforce-eager")  # fmt: skip
    qwen, tiny = config.managed
    assert (qwen.name, qwen.served) == ("qwen/qwen3-8b:latest", "Qwen/Qwen3-8B")  # named as discovery would
    assert (tiny.name, tiny.served) == ("small", "small")
    assert qwen.launch is not None and tiny.launch is not None
    spec = qwen.launch.spec(qwen.name, qwen.served, config.vllm_python)
    assert spec.command == ("/opt/vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server")
    assert spec.args == ("--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--reasoning-parser", "qwen3",
                         "--dtype", "float32", "--enforce-eager")  # fmt: skip
    assert qwen.launch.capabilities() == ("completion", "tools", "thinking")
    assert tiny.launch.full_args() == ("--dtype", "float32", "--enforce-eager")


def test_a_launch_entry_with_every_key() -> None:
    entry = {"name": "qwen3:8b", "options": {"temperature": 0.6},
             "launch": {"model": "Qwen/Qwen3-8B", "args": ["--tool-call-parser", "qwen3_xml", "--max-model-len", 8192],
                        "env": {"CUDA_VISIBLE_DEVICES": "1"}, "command": ["docker", "run", "vllm"], "gpu_share": 0.45,
                        "keep_alive": "10m", "pinned": True, "preload": True}}  # fmt: skip
    (model,) = from_mapping({"models": [entry], "max_loaded": 2, "max_queue": 8, "load_timeout": 120}).managed
    launch = model.launch
    assert launch is not None and model.backend == "" and model.served == "qwen3:8b"
    assert launch.gpu_share == 0.45 and launch.keep_alive == 600 and launch.pinned and launch.preload
    assert launch.device == "1" and launch.command == ("docker", "run", "vllm")
    # the config's parser replaces the table's, the table's other flags stay
    assert launch.full_args() == ("--enable-auto-tool-choice", "--reasoning-parser", "qwen3",
                                  "--tool-call-parser", "qwen3_xml", "--max-model-len", "8192")  # fmt: skip


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param({"models": [{"name": "x", "launch": {"args": []}}]}, "models[0].launch.model: missing", id="no model"),
        pytest.param(
            {"models": [{"name": "x", "launch": {"model": "m", "gpu_share": 1.5}}]},
            "models[0].launch.gpu_share: expected a fraction",
            id="share over one",
        ),  # fmt: skip
        pytest.param(
            {"models": [{"name": "x", "launch": {"model": "m", "keep_alive": "10"}}]},
            'models[0].launch.keep_alive: time: missing unit in duration "10"',
            id="bad keep_alive",
        ),  # fmt: skip
        pytest.param(
            {"models": [{"name": "x", "launch": {"model": "m", "pinnd": True}}]},
            "models[0].launch.pinnd: unknown key",
            id="unknown launch key",
        ),  # fmt: skip
        pytest.param(
            {"backends": ["http://a"], "models": [{"name": "x", "backend": "a", "launch": {"model": "m"}}]},
            "models[0].launch: a model is either launched by the proxy or served by a backend",
            id="both",
        ),  # fmt: skip
        pytest.param(
            {"models": [{"name": "x", "launch": "m"}, {"name": "X:latest", "launch": "n"}]},
            "models[1].name: 'X:latest' is already a managed model",
            id="the same name twice",
        ),  # fmt: skip
        pytest.param({"max_queue": 0}, "max_queue: expected a whole number >= 1", id="max_queue zero"),
    ],
)
def test_bad_launch_config(data: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_mapping(data, "/etc/p.yaml")
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("file", "env", "expected"),
    [
        pytest.param({}, {}, (300.0, 0, 512), id="defaults"),
        pytest.param(
            {},
            {"OLLAMA_KEEP_ALIVE": "1h", "OLLAMA_MAX_LOADED_MODELS": "2", "OLLAMA_MAX_QUEUE": "9"},
            (3600.0, 2, 9),
            id="Ollama's variables",
        ),  # fmt: skip
        pytest.param({}, {"OLLAMA_KEEP_ALIVE": "-1"}, (float("inf"), 0, 512), id="forever as a plain number"),
        pytest.param(
            {"keep_alive": "1m", "max_loaded": 1, "max_queue": 3},
            {"OLLAMA_KEEP_ALIVE": "1h", "OLLAMA_MAX_LOADED_MODELS": "2", "OLLAMA_MAX_QUEUE": "9"},
            (60.0, 1, 3),
            id="config keys win",
        ),  # fmt: skip
    ],
)
def test_ollama_env_vars(file: dict[str, Any], env: dict[str, str], expected: tuple[float, int, int]) -> None:
    config = from_mapping(file).with_cli([], None, env)
    assert (config.keep_alive, config.max_loaded, config.max_queue) == expected


def test_bad_ollama_env_var_is_named() -> None:
    with pytest.raises(ConfigError, match="OLLAMA_MAX_LOADED_MODELS: expected a whole number"):
        Config().with_cli([], None, {"OLLAMA_MAX_LOADED_MODELS": "two"})


def test_serve_needs_a_backend_or_a_model(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from proxy import __main__, workers

    started: list[Config] = []
    monkeypatch.setattr(workers, "run", lambda config, recipe=None: started.append(config) or 0)  # type: ignore[func-returns-value]
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    assert __main__.main(["serve"]) == 2
    assert "no backend: pass --backend URL or --model MODEL" in capsys.readouterr().err
    assert __main__.main(["serve", "--model", "qwen3:8b=Qwen/Qwen3-8B", "--vllm-args", "--dtype float32"]) == 0
    (model,) = started[0].managed
    assert model.name == "qwen3:8b" and model.launch is not None and model.launch.args == ("--dtype", "float32")
