"""The catalog of Ollama library names: its data file's schema, the vLLM flags each family
gets from proxy/managed/families.py, and overrides from config.yaml."""

from __future__ import annotations

from typing import Any

import pytest

from proxy import catalog
from proxy.config import ConfigError, from_mapping
from proxy.managed import families

ENTRIES = catalog.builtin()

# What Ollama's library shows for each family (tools / thinking badges), which the vLLM
# flags from families.py must deliver.
EXPECTED = {
    "llama3.1": ("completion", "tools"),
    "llama3.2": ("completion", "tools"),
    "llama3.3": ("completion", "tools"),
    "qwen2.5": ("completion", "tools"),
    "qwen2.5-coder": ("completion", "tools"),
    "qwen3": ("completion", "tools", "thinking"),
    "mistral": ("completion", "tools"),
    "mixtral": ("completion", "tools"),
    "gemma2": ("completion",),
    "gemma3": ("completion",),
    "phi3": ("completion",),
    "phi4": ("completion",),
    "deepseek-r1": ("completion", "thinking"),
    "nomic-embed-text": ("embedding",),
    "mxbai-embed-large": ("embedding",),
    "all-minilm": ("embedding",),
}


def test_the_data_file_covers_the_families_people_pull() -> None:
    assert {e.name.split(":")[0] for e in ENTRIES} == set(EXPECTED)


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_each_entry_gets_the_flags_its_family_needs(entry: catalog.Entry) -> None:
    assert entry.launch().capabilities() == EXPECTED[entry.name.split(":")[0]]
    if entry.kind == "chat":
        row = families.lookup(entry.repo)
        assert row is not None and row.pattern == entry.family, "the family named is the one families.py applies"
    else:
        assert entry.family is None and entry.tool_parser is None


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_each_entry_cites_its_model_card(entry: catalog.Entry) -> None:
    assert entry.source == f"https://huggingface.co/{entry.repo}"
    assert entry.params_b is not None and entry.gpu_memory_gb == round(entry.params_b * 2, 2)
    for repo in entry.quantized.values():
        assert repo.count("/") == 1 and repo != entry.repo


@pytest.mark.parametrize(
    ("name", "repo", "tool_parser", "reasoning_parser"),
    [
        pytest.param("llama3.1", "meta-llama/Llama-3.1-8B-Instruct", "llama3_json", None, id="bare name is :latest"),
        pytest.param("qwen3:8b", "Qwen/Qwen3-8B", "hermes", "qwen3", id="qwen3"),
        pytest.param("deepseek-r1:70b", "deepseek-ai/DeepSeek-R1-Distill-Llama-70B", None, "deepseek_r1", id="r1 on llama"),
        pytest.param("registry.ollama.ai/library/MISTRAL:latest", "mistralai/Mistral-7B-Instruct-v0.3", "mistral", None,
                     id="full and upper-case name"),
    ],
)  # fmt: skip
def test_names_find_their_entry(name: str, repo: str, tool_parser: str | None, reasoning_parser: str | None) -> None:
    entry = catalog.merged().find(name)
    assert entry is not None and entry.repo == repo
    assert (entry.tool_parser, entry.reasoning_parser) == (tool_parser, reasoning_parser)


def test_the_gemma3_sizes_that_take_images_say_so() -> None:
    assert sorted(e.name for e in ENTRIES if e.vision) == ["gemma3:12b", "gemma3:27b", "gemma3:4b"]


@pytest.mark.parametrize(
    ("repo", "name"),
    [
        pytest.param("google/gemma-3-4b-it", "gemma3:4b", id="repository"),
        pytest.param("GOOGLE/Gemma-3-4B-IT", "gemma3:4b", id="another spelling"),
        pytest.param("Qwen/Qwen3-8B-AWQ", "qwen3:8b", id="a quantized repository"),
        pytest.param("org/unknown", None, id="not in the catalog"),
    ],
)  # fmt: skip
def test_repositories_find_their_entry(repo: str, name: str | None) -> None:
    entry = catalog.merged().for_repo(repo)
    assert (entry.name if entry else None) == name


def test_unknown_and_invalid_names_find_nothing() -> None:
    assert catalog.merged().find("no-such-model:1b") is None
    assert catalog.merged().find("bad name!") is None


def test_config_entries_override_and_extend_the_catalog() -> None:
    config = from_mapping({
        "catalog": [
            {"name": "llama3.1:8b", "repo": "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4", "args": "--max-model-len 8192"},
            {"name": "granite3.3:8b", "aliases": ["granite3.3"], "repo": "ibm-granite/granite-3.3-8b-instruct"},
        ],
        "delete_weights": True,
    })  # fmt: skip
    assert config.library.delete_weights is True
    merged = catalog.merged(config.library.catalog or ())
    own = merged.find("llama3.1:8b")
    assert own is not None and own.repo.startswith("hugging-quants/") and own.args == ("--max-model-len", "8192")
    assert merged.find("llama3.1") is not None  # the built-in alias still leads to the replaced entry
    new = merged.find("granite3.3")
    assert new is not None and new.tool_parser == "granite"
    assert len(merged.entries) == len(ENTRIES) + 1


def test_without_the_key_the_catalog_is_off() -> None:
    assert from_mapping({}).library == catalog.LibrarySettings()


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        pytest.param({"repo": "a/b"}, "catalog[0].name: missing", id="no name"),
        pytest.param({"name": "x:1b"}, "catalog[0].repo: missing", id="no repo"),
        pytest.param({"name": "bad name", "repo": "a/b"}, "catalog[0].name: 'bad name' is not a valid", id="bad name"),
        pytest.param({"name": "x", "repo": "a/b", "kind": "vision"}, "catalog[0].kind: 'vision' is not one of", id="bad kind"),
        pytest.param({"name": "x", "repo": "a/b", "quantized": {"gguf": "a/c"}}, "catalog[0].quantized.gguf: unknown key",
                     id="bad quantization"),
        pytest.param({"name": "x", "repo": "a/b", "params_b": -1}, "catalog[0].params_b: expected a positive", id="bad size"),
        pytest.param({"name": "x", "repo": "a/b", "context_length": 1.5}, "catalog[0].context_length: expected a whole",
                     id="bad context"),
        pytest.param({"name": "x", "repo": "a/b", "vision": "yes"}, "catalog[0].vision: expected", id="bad vision"),
        pytest.param({"name": "x", "repo": "a/b", "colour": "red"}, "catalog[0].colour: unknown key", id="unknown key"),
    ],
)  # fmt: skip
def test_bad_entries_name_the_key(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        from_mapping({"catalog": [entry]}, "c.yaml")
    assert message in str(caught.value)


def test_a_name_listed_twice_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"catalog\[1\]: the name 'x' is listed twice"):
        from_mapping({"catalog": [{"name": "x:latest", "repo": "a/b"}, {"name": "y", "aliases": ["x"], "repo": "a/c"}]})
