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


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param({"lisen": "x"}, "lisen: unknown key", id="unknown top-level key"),
        pytest.param({"backends": [{"urll": "http://x"}]}, "backends[0].urll: unknown key", id="unknown nested key"),
        pytest.param({"backends": [{"url": "ftp://x"}]}, "backends[0].url: 'ftp://x' is not an http(s) URL", id="bad URL"),
        pytest.param({"backends": [{"url": "http://x:99999"}]}, "backends[0].url: 'http://x:99999' has an invalid port",
                     id="bad port"),  # fmt: skip
        pytest.param({"refresh_interval": "soon"}, "refresh_interval: expected a positive number", id="bad type"),
        pytest.param({"timeouts": {"connect": -1}}, "timeouts.connect: expected a positive number", id="negative timeout"),
        pytest.param({"listen": "host:port"}, "listen: invalid port", id="bad listen"),
        pytest.param({"ollama_version": "latest"}, "ollama_version: 'latest' is not a numeric dotted version", id="bad version"),
        pytest.param({"log_level": "loud"}, "log_level: 'loud' is not one of", id="bad log level"),
        pytest.param({"backends": [{"url": "http://a"}], "models": [{"name": "x", "backend": "nope", "served": "y"}]},
                     "models[0].backend: no backend named 'nope'", id="alias to an unknown backend"),  # fmt: skip
        pytest.param({"backends": [{"url": "http://a"}], "models": [{"name": "bad name", "backend": "a", "served": "y"}]},
                     "models[0].name: 'bad name' is not a valid Ollama model name", id="invalid alias name"),  # fmt: skip
        pytest.param({"backends": [{"url": "http://a"}], "models": [{"name": "x", "backend": "a"}]},
                     "models[0].served: missing", id="alias without served"),  # fmt: skip
        pytest.param({"backends": "http://a"}, "backends: expected a list", id="backends not a list"),
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
