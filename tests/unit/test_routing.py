"""The routing strategies, health transitions and the /metrics parser, on an injected
clock and a seeded RNG."""

from __future__ import annotations

import random

import pytest

from proxy.backend import Backend
from proxy.config import BackendConfig, Timeouts
from proxy.h1pool import Pool
from proxy.health import SOFT_FAILURES, Health, Load, parse_metrics
from proxy.routing import Affinity, First, LeastLoaded, Router, router, session_key


def backend(name: str, **load: float) -> Backend:
    made = Backend(BackendConfig(url=f"http://{name}:8000", name=name), Timeouts(), Pool())
    made.load = Load(**load)  # type: ignore[arg-type]
    return made


@pytest.mark.parametrize(
    "loads, expected",
    [
        pytest.param([{"inflight": 3}, {"inflight": 1}], "b", id="fewest in flight"),
        pytest.param([{"running": 5}, {"inflight": 2}], "b", id="vLLM's count covers other clients"),
        pytest.param([{"inflight": 1, "waiting": 1}, {"inflight": 2}], "b", id="a queue weighs double"),
        pytest.param([{"kv_cache": 0.8}, {"kv_cache": 0.1}], "b", id="then KV-cache use"),
    ],
)
def test_least_loaded_picks_the_lowest_load(loads: list[dict[str, float]], expected: str) -> None:
    a, b = backend("a", **loads[0]), backend("b", **loads[1])
    assert LeastLoaded(random.Random(0)).choose([a, b], None).name == expected


def test_least_loaded_breaks_ties_between_two_random_candidates() -> None:
    candidates = [backend(n) for n in "abcd"]
    picks = {LeastLoaded(random.Random(seed)).choose(candidates, None).name for seed in range(40)}
    assert picks == set("abcd")
    fast = backend("e")
    fast.latency_ms, candidates[0].latency_ms = 1.0, 50.0
    assert LeastLoaded(random.Random(1)).choose([candidates[0], fast], None).name == "e"  # the quicker of the two


async def test_a_replica_probed_back_in_takes_ties_again() -> None:
    steady, recovered = backend("a"), backend("b")
    steady.latency_ms, recovered.latency_ms = 5.0, 1.0
    recovered.health.failed(0.0, "refused", hard=True)

    async def answers(path: str) -> bytes:
        return b""

    recovered.get = answers  # type: ignore[method-assign]
    assert await recovered.probe()
    picks = {LeastLoaded(random.Random(seed)).choose([steady, recovered], None).name for seed in range(20)}
    assert picks == {"a", "b"}  # its stale figure forgotten, ties split again


def test_affinity_keeps_a_key_on_its_replica_until_it_is_saturated() -> None:
    a, b = backend("a"), backend("b")
    sticky = Affinity(First())
    assert sticky.choose([a, b], "k").name == "a"
    b.load.inflight = 0
    a.load.inflight = 3
    assert sticky.choose([a, b], "k").name == "a"  # busier, but not saturated: the prefix cache wins
    a.load.waiting = 1
    assert sticky.choose([b, a], "k").name == "b"  # saturated and another is lighter: gives way
    assert sticky.choose([a, b], "k").name == "b"  # ... and the key moves with it
    assert sticky.choose([a], "k").name == "a"  # its replica gone from the candidates


def test_affinity_forgets_the_oldest_keys() -> None:
    a, b = backend("a"), backend("b")
    sticky = Affinity(First(), capacity=1)
    sticky.choose([b, a], "old")
    sticky.choose([a, b], "new")
    assert sticky.choose([a, b], "old").name == "a"


@pytest.mark.parametrize(
    ("before", "after", "placed"),
    [
        pytest.param(True, True, "b", id="affinity-both: kept"),
        pytest.param(True, False, "a", id="affinity-turned-off: plain choice"),
        pytest.param(False, True, "a", id="affinity-turned-on: nothing to keep"),
    ],
)
def test_a_new_router_keeps_the_old_ones_conversations(before: bool, after: bool, placed: str) -> None:
    a, b = backend("a"), backend("b")
    old = Router(Affinity(First()) if before else First())
    old.strategy.choose([b, a], "older")
    old.strategy.choose([b, a], "k")  # placed on b
    new = Router(Affinity(First(), capacity=1) if after else First())  # keeps the newest key only
    new.inherit(old)
    assert new.pick([a, b], "k").name == placed  # type: ignore[union-attr]


def test_the_router_prefers_healthy_replicas_and_fails_over_only_to_another() -> None:
    a, b = backend("a"), backend("b")
    route = Router(First())
    a.health.failed(0.0, "refused", hard=True)
    assert route.pick([a, b]) is b
    assert route.pick([a, b], exclude={b}) is None  # failover: only to a healthy, different replica
    b.health.failed(1.0, "refused", hard=True)
    assert route.pick([b, a]) is a  # all out: the one probed back first gets the request
    assert route.pick([]) is None
    assert isinstance(router("least_loaded", affinity=True).strategy, Affinity)


def test_health_transitions() -> None:
    health = Health(cooldown_s=2.0, probe_s=3.0)
    for _ in range(SOFT_FAILURES - 1):
        assert not health.failed(10.0, "500", hard=False)
    assert health.succeeded() is False and health.failures == 0  # a success resets the count
    for _ in range(SOFT_FAILURES - 1):
        health.failed(10.0, "500", hard=False)
    assert health.failed(10.0, "500", hard=False) and not health.up  # the third in a row
    assert not health.failed(10.5, "500", hard=False)  # already out
    assert not health.probe_due(11.9) and health.probe_due(12.0)  # the cool-down
    health.probing(12.0)
    assert not health.probe_due(14.9) and health.probe_due(15.0)  # then every probe interval
    assert health.succeeded() and health.up and health.error == ""
    assert Health().failed(0.0, "connection refused", hard=True)  # a connect error: out at once


def test_metrics_are_summed_over_engines() -> None:
    text = "\n".join([
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        'vllm:num_requests_running{engine="0",model_name="m"} 2.0',
        'vllm:num_requests_running{engine="1",model_name="m"} 3.0',
        'vllm:num_requests_waiting{engine="0",model_name="m"} 1.0',
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25',
        'vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.5',
        'vllm:num_requests_waiting{engine="1",model_name="m"} NaN',
        "vllm:num_requests_waiting",
        'vllm:prompt_tokens_total{engine="0"} 9.0',
    ])  # fmt: skip
    assert parse_metrics(text) == {"running": 5.0, "waiting": 1.0, "kv_cache": 0.75}


@pytest.mark.parametrize(
    "headers, body, expected",
    [
        pytest.param({"X-OpenWebUI-Chat-Id": "c1"}, {}, "chat:c1", id="Open WebUI's chat id"),
        pytest.param({}, {"prompt": "x"}, None, id="no conversation"),
        pytest.param({}, {"messages": []}, None, id="no messages"),
    ],
)
def test_session_keys(headers: dict[str, str], body: dict[str, object], expected: str | None) -> None:
    assert session_key(headers, body) == expected


def test_a_conversation_keeps_its_key_as_it_grows() -> None:
    first = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    later = [*first, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "more"}]
    key = session_key({"X-OpenWebUI-User-Id": "u1"}, {"messages": first})
    assert key is not None and key.startswith("user:u1:")
    assert session_key({"X-OpenWebUI-User-Id": "u1"}, {"messages": later}) == key
    assert session_key({"X-OpenWebUI-User-Id": "u2"}, {"messages": later}) != key
