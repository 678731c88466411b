"""Fixtures for the socket-level integration tests: a raw aiohttp session (no
connection cap) and factories for proxies with their own configuration."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from proxy.app import create_app
from proxy.config import from_mapping
from proxy.timers import SYSTEM, Timers
from tests.fakes.raw import RawBackend
from tests.fakes.vllm import FakeVLLM


@pytest.fixture
def base_url(proxy_server: TestServer) -> str:
    return str(proxy_server.make_url("")).rstrip("/")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client session over real sockets, without aiohttp's 100-connection cap."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        yield s


@pytest.fixture
def start_proxy(aiohttp_server: Any) -> Callable[..., Awaitable[str]]:
    """Start a proxy for an explicit configuration mapping; returns its base URL."""

    async def start(timers: Timers = SYSTEM, **data: Any) -> str:
        data.setdefault("log_level", "debug")
        server = await aiohttp_server(create_app(from_mapping(data, "test"), timers=timers))
        return str(server.make_url("")).rstrip("/")

    return start


@pytest.fixture
async def raw() -> AsyncIterator[RawBackend]:
    """The byte-scripted backend (tests/fakes/raw.py)."""
    server = RawBackend()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def upstream_count(fake: FakeVLLM) -> Callable[[], int]:
    """How many inference requests the fake has received so far."""
    return lambda: len(fake.requests)
