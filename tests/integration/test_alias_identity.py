"""Alias identity: clients that key on the digest (llm-ollama caches per digest) must not
conflate an alias that has its own parameters with the model it points to. A plain alias
is the same model (as ``ollama cp``); one with its own settings is another (as a Modelfile
``PARAMETER`` makes one)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from tests.fakes.vllm import FakeVLLM


async def get_json(url: str, method: str = "GET", body: Any = None) -> Any:
    async with aiohttp.ClientSession() as session, session.request(method, url, json=body) as reply:
        assert reply.status == 200
        return await reply.json()


@pytest.mark.parametrize(
    ("alias", "own_digest", "shown"),
    [
        pytest.param({}, False, {"parameters": "", "capabilities": ["completion", "tools"]}, id="plain-alias"),
        pytest.param({"options": {"temperature": 0.2}}, True,
                     {"parameters": "temperature                    0.2", "capabilities": ["completion", "tools"]},
                     id="alias-with-options"),
        pytest.param({"capabilities": ["completion"]}, True, {"parameters": "", "capabilities": ["completion"]},
                     id="alias-with-capabilities"),
        pytest.param({"fim": "qwen"}, True, {"parameters": "", "capabilities": ["completion", "tools", "insert"]},
                     id="alias-with-fim-template"),
        pytest.param({"system": "Be terse."}, True, {"system": "Be terse.", "capabilities": ["completion", "tools"]},
                     id="alias-with-system"),
        pytest.param({"family": "llama", "size": 5}, False,
                     {"parameters": "", "capabilities": ["completion", "tools"]},
                     id="alias-with-only-descriptive-fields"),
    ],
)  # fmt: skip
async def test_alias_digest_follows_its_own_settings(
    start_proxy: Callable[..., Awaitable[str]], fake: FakeVLLM, alias: dict[str, Any], own_digest: bool, shown: dict[str, Any]
) -> None:
    entry = {"name": "my-alias:1", "backend": "fake", "served": "tiny", **alias}
    other = {"name": "other-alias:1", "backend": "fake", "served": "tiny", **alias}  # the same settings twice
    url = await start_proxy(backends=[{"url": fake.url, "name": "fake"}], models=[entry, other])
    digests = {m["name"]: m["digest"] for m in (await get_json(f"{url}/api/tags"))["models"]}
    assert (digests["my-alias:1"] != digests["tiny:latest"]) is own_digest
    assert digests["my-alias:1"] == digests["other-alias:1"]  # derived from the settings, not the name
    assert len(digests["my-alias:1"]) == 64
    show = await get_json(f"{url}/api/show", "POST", {"model": "my-alias:1"})
    assert {k: show[k] for k in shown} == shown
    target = await get_json(f"{url}/api/show", "POST", {"model": "tiny"})
    assert target["parameters"] == "" and target["capabilities"] == ["completion", "tools"]


async def test_aliases_with_different_options_differ(start_proxy: Callable[..., Awaitable[str]], fake: FakeVLLM) -> None:
    models = [{"name": f"t{t}", "backend": "fake", "served": "tiny", "options": {"temperature": t}} for t in (0.1, 0.9)]
    url = await start_proxy(backends=[{"url": fake.url, "name": "fake"}], models=models)
    digests = {m["name"]: m["digest"] for m in (await get_json(f"{url}/api/tags"))["models"]}
    assert digests["t0.1:latest"] != digests["t0.9:latest"]
