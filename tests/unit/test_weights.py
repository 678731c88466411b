"""Finding and removing a repository's weights in the Hugging Face cache, wherever the
environment puts the cache (as huggingface_hub resolves it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.managed import weights


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param({"HF_HUB_CACHE": "/c/hub"}, "/c/hub", id="HF_HUB_CACHE"),
        pytest.param({"HF_HOME": "/h"}, "/h/hub", id="HF_HOME"),
        pytest.param({"XDG_CACHE_HOME": "/x"}, "/x/huggingface/hub", id="XDG_CACHE_HOME"),
        pytest.param({"HOME": "/home/u"}, "/home/u/.cache/huggingface/hub", id="home"),
    ],
)
def test_the_cache_is_where_huggingface_hub_looks(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str) -> None:
    for var in ("HF_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert weights.cache_dir() == Path(expected)


def test_present_needs_a_weights_file_and_remove_deletes_the_repository(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert not weights.present("org/model") and not weights.remove("org/model")
    snapshot = tmp_path / "models--org--model" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    assert not weights.present("org/model")  # a config alone is not a downloaded model
    (snapshot / "sub").mkdir()
    (snapshot / "sub" / "model-00001-of-00002.safetensors").write_bytes(b"w")
    assert weights.present("org/model")
    assert weights.remove("org/model") and not (tmp_path / "models--org--model").exists()


def test_a_local_path_is_present_when_it_exists(tmp_path: Path) -> None:
    assert weights.is_path(str(tmp_path)) and weights.present(str(tmp_path))
    assert weights.is_path("/no/such/dir") and not weights.present("/no/such/dir")
    assert not weights.is_path("org/model")
