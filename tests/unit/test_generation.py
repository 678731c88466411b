"""The reload's parts: a new generation swapped in whole, the old pool closed only once its
requests ended, what a reload applies and what waits for a restart, and the notifier."""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any

import pytest
from prometheus_client import REGISTRY

from proxy.config import from_mapping
from proxy.generation import RETIRE_POLL_S, Engine, build
from proxy.h1pool import Pool
from proxy.notify import Notifier
from proxy.reconfig import merge
from proxy.state import Live
from tests.fakes.timers import FakeTimers
from tests.integration.helpers import closed_port


def _config(*names: str, **top: Any) -> Any:
    port = closed_port()  # nothing answers: discovery marks the backends down at once
    return from_mapping({"backends": [{"url": f"http://127.0.0.1:{port}/{n}", "name": n} for n in names], **top})


async def test_reload_swaps_a_whole_generation_and_retires_the_old_pool_after_its_requests() -> None:
    fake = FakeTimers()
    first = _config("a")
    live = Live(build(first, fake.timers()))
    engine = Engine(live, fake.timers())
    await engine.start()
    old = live.current
    old.backends["a"].load.inflight = 1  # a stream of the old generation still runs
    old.backends["a"].max_num_seqs = 8  # what its /server_info said (the fair-turn limit)
    second = from_mapping({"backends": [{"url": old.backends["a"].config.url, "name": "a"},
                                        {"url": "http://127.0.0.1:1/b", "name": "b"}]})  # fmt: skip
    new = await engine.reload(second)
    assert live.current is new and new is not old
    assert [s.config.name for s in new.registry.backends] == ["a", "b"]
    assert new.backends["a"] is not old.backends["a"] and new.backends.pool is not old.backends.pool
    assert new.backends["a"].health is old.backends["a"].health  # what it learned is kept
    assert new.backends["a"].max_num_seqs == 8 and new.backends["b"].max_num_seqs is None
    await fake.advance(RETIRE_POLL_S)
    assert not old.backends.pool.closed  # its stream still holds a connection
    old.backends["a"].load.inflight = 0
    await fake.advance(RETIRE_POLL_S)
    assert old.backends.pool.closed and not new.backends.pool.closed
    await engine.close()
    assert new.backends.pool.closed


async def test_a_backend_whose_settings_changed_starts_with_fresh_health() -> None:
    fake = FakeTimers()
    live = Live(build(_config("a"), fake.timers()))
    engine = Engine(live, fake.timers())
    await engine.start()
    old = live.current
    changed = from_mapping({"backends": [{"url": old.backends["a"].config.url, "name": "a", "sleep_mode": True}]})
    new = await engine.reload(changed)
    assert new.backends["a"].health is not old.backends["a"].health
    await engine.close()
    assert old.backends.pool.closed  # nothing was in flight: retired, then closed on shutdown


async def test_shutdown_during_a_retirement_closes_both_pools() -> None:
    fake = FakeTimers()
    live = Live(build(_config("a"), fake.timers()))
    engine = Engine(live, fake.timers())
    await engine.start()
    old = live.current
    old.backends["a"].load.inflight = 1
    new = await engine.reload(_config("a"))
    await engine.close()
    assert old.backends.pool.closed and new.backends.pool.closed


class _Transport:
    def __init__(self) -> None:
        self.closed = False

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def set_protocol(self, _: object) -> None:
        pass


def test_a_closed_pool_closes_the_connections_that_come_back() -> None:
    pool = Pool()
    kept, late = _Transport(), _Transport()
    key = ("http", "h", 1, "")
    pool.put(key, kept)  # type: ignore[arg-type]
    pool.close()
    assert kept.closed
    pool.put(key, late)  # type: ignore[arg-type]  # a stream of the retired generation ended
    assert late.closed and pool.idle_count() == 0


@pytest.mark.parametrize(
    ("change", "waiting", "applied"),
    [
        pytest.param({"max_inflight": 7}, [], {"max_inflight": 7}, id="limits-apply"),
        pytest.param({"drain_timeout": 3}, [], {}, id="drain-applies"),
        pytest.param({"workers": 4}, ["workers"], {"workers": 1}, id="workers-wait"),
        pytest.param({"listen": "127.0.0.1:9"}, ["listen"], {"listen": "127.0.0.1:11434"}, id="listen-waits"),
        pytest.param({"log_level": "debug"}, ["log_level"], {"log_level": "info"}, id="logging-waits"),
        pytest.param({"metrics_listen": "127.0.0.1:9464"}, ["metrics"], {}, id="metrics-listen-waits"),
    ],
)
def test_merge_applies_what_a_running_process_can_change(
    change: dict[str, Any], waiting: list[str], applied: dict[str, Any]
) -> None:
    base = {"backends": [{"url": "http://127.0.0.1:1"}]}
    running = from_mapping(base)
    merged, later = merge(running, from_mapping({**base, **change}))
    assert later == waiting
    for key, value in applied.items():
        assert getattr(merged, key) == value
    if "drain_timeout" in change:
        assert merged.service.drain_timeout == 3


@pytest.mark.parametrize(
    ("env", "enabled", "watchdog"),
    [
        pytest.param({}, False, 0, id="not-under-systemd"),
        pytest.param({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "2000000"}, True, 2_000_000, id="watchdog"),
        pytest.param({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, True, 0, id="other-pid"),
        pytest.param({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "junk"}, True, 0, id="bad-usec"),
    ],
)
def test_notifier_from_env(env: dict[str, str], enabled: bool, watchdog: int) -> None:
    notifier = Notifier.from_env(env)
    assert notifier.enabled is enabled and notifier.watchdog_usec == watchdog
    if not enabled:
        assert notifier.ready() is False  # nothing to send to: a no-op


def test_notifier_sends_one_datagram_per_call_and_survives_a_missing_socket() -> None:
    name = f"ovp-unit/{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_PID": str(os.getpid())})
        assert notifier.ready("3 models") and notifier.reloading() and notifier.stopping() and notifier.watchdog()
        got = [sock.recv(4096).decode().splitlines() for _ in range(4)]
    assert got[0] == ["READY=1", "STATUS=3 models"]
    assert got[1][0] == "RELOADING=1" and got[1][1].startswith("MONOTONIC_USEC=")
    assert got[2][0] == "STOPPING=1" and got[3] == ["WATCHDOG=1"]
    assert notifier.ready() is False  # the socket is gone: no exception, just False
    notifier.close()


async def test_a_sleep_mode_timer_restarted_by_an_old_request_is_the_new_generations() -> None:
    fake = FakeTimers()
    sleepy = {"backends": [{"url": "http://127.0.0.1:1/a", "name": "a", "sleep_mode": True}]}
    live = Live(build(from_mapping(sleepy), fake.timers()))
    engine = Engine(live, fake.timers())
    old = live.current
    new = await engine.reload(from_mapping(sleepy))
    old.keepalive.end(old.backends["a"], 5.0)  # a request that began before the reload ends
    assert new.keepalive.expires_at(new.backends["a"]) == 5.0
    await engine.close()


async def test_a_reload_keeps_the_backend_up_gauge_of_a_backend_that_is_out() -> None:
    fake = FakeTimers()
    live = Live(build(_config("a"), fake.timers()))
    engine = Engine(live, fake.timers())
    old = live.current
    for _ in range(5):
        old.backends["a"].health.failed(fake.now, "refused", hard=True)
    assert not old.backends["a"].health.up
    await engine.reload(from_mapping({"backends": [{"url": old.backends["a"].config.url, "name": "a"}]}))
    assert REGISTRY.get_sample_value("ollama_proxy_backend_up", {"backend": "a"}) == 0.0
    await engine.close()
