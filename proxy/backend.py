"""HTTP calls to vLLM servers over one shared ``ClientSession``; failures become
``errors.*`` that name the backend."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson

from proxy.config import BackendConfig, Timeouts
from proxy.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    ProxyError,
    no_first_byte,
    parse_backend_error,
    unreachable,
)
from proxy.redact import without_userinfo

# vLLM closes idle keep-alive connections after 5 s (uvicorn's default,
# VLLM_HTTP_TIMEOUT_KEEP_ALIVE in vllm/envs.py): drop ours first.
POOL_IDLE_SECONDS = 4.0


def create_session(timeouts: Timeouts) -> aiohttp.ClientSession:
    # limit=0: aiohttp's default cap of 100 connections would silently queue the 101st
    # concurrent stream.
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=POOL_IDLE_SECONDS)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False,
                                 json_serialize=lambda o: orjson.dumps(o).decode())  # fmt: skip


class Upstream:
    def __init__(self, session: aiohttp.ClientSession, timeouts: Timeouts) -> None:
        self._session = session
        self._timeouts = timeouts

    async def post(
        self, backend: BackendConfig, path: str, body: Mapping[str, Any], request_id: str = ""
    ) -> aiohttp.ClientResponse:
        """POST and return the response once its headers arrived (status < 400).

        The caller owns the response and must ``close()`` it: closing an unfinished
        response drops the connection, which is what makes vLLM abort the request.
        """
        headers = {"Content-Type": "application/json", **_auth(backend)}
        if request_id:
            headers["X-Request-Id"] = request_id
        data = orjson.dumps(body)
        response = await self._send(backend, path, data, headers)
        if response.status >= 400:
            try:
                raw = await response.read()
            finally:
                response.close()
            raise parse_backend_error(response.status, raw, backend.name)
        return response

    async def post_json(self, backend: BackendConfig, path: str, body: Mapping[str, Any], request_id: str = "") -> Any:
        response = await self.post(backend, path, body, request_id)
        try:
            # A JSON body follows its head at once; bounded, since aiohttp 3.14 waits for
            # ever on a bad chunk size after the head.
            async with asyncio.timeout(self._timeouts.idle):
                raw = await response.read()
        except TimeoutError:
            raise BackendTimeout(
                f"vLLM backend {backend.name} ({backend.public_url}) sent nothing for {self._timeouts.idle:g} s mid-reply"
            ) from None
        except aiohttp.ClientError as exc:
            raise _unavailable(backend, exc) from None
        finally:
            response.close()
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BackendError(f"vLLM backend {backend.name} sent a body that is not JSON", 502) from None

    async def get_json(self, backend: BackendConfig, path: str) -> Any:
        raw = await self._get(backend, path)
        try:
            return orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError:
            raise BackendError(f"vLLM backend {backend.name} sent a body that is not JSON on {path}", 502) from None

    async def busy(self, backend: BackendConfig) -> bool:
        """Whether vLLM has requests running or waiting (its /metrics gauges)."""
        text = (await self._get(backend, "/metrics")).decode("utf-8", "replace")
        gauges = ("vllm:num_requests_running", "vllm:num_requests_waiting")
        return any(line.startswith(gauges) and float(line.rsplit(" ", 1)[1]) > 0 for line in text.splitlines())

    async def list_models(self, backend: BackendConfig) -> list[dict[str, Any]]:
        data = await self.get_json(backend, "/v1/models")
        return [c for c in data.get("data") or [] if isinstance(c, dict)]

    async def _get(self, backend: BackendConfig, path: str) -> bytes:
        """A short control-plane GET (listing, health, sleep state, metrics)."""
        try:
            async with asyncio.timeout(self._timeouts.discovery):
                async with self._session.get(_url(backend, path), headers=_auth(backend)) as response:
                    raw = await response.read()
        except TimeoutError:
            raise BackendTimeout(f"vLLM backend {backend.name} ({backend.public_url}) did not answer {path} in time") from None
        except aiohttp.ClientError as exc:
            raise _unavailable(backend, exc) from None
        if response.status >= 400:
            raise parse_backend_error(response.status, raw, backend.name)
        return raw

    async def probe_capabilities(self, backend: BackendConfig, served: str) -> tuple[str, ...]:
        """What a served model can do, learned once with tiny requests (vLLM 0.32, vllm/entrypoints/openai/):
        a pooling server answers ``/v1/embeddings`` and nothing else; a generative one
        takes tools only with a tool parser and images only if it is multimodal. Only a
        definite refusal (400) removes a capability; a probe that fails otherwise keeps it,
        so vLLM itself decides."""
        if await self._accepts(backend, "/v1/embeddings", {"model": served, "input": "probe"}) is True:
            return ("embedding",)
        caps = ["completion"]
        base = {"model": served, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
        if await self._accepts(backend, "/v1/chat/completions", {**base, "tools": [_PROBE_TOOL]}) is not False:
            caps.append("tools")
        image = [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": _PROBE_IMAGE}}]
        vision = {**base, "messages": [{"role": "user", "content": image}]}
        if await self._accepts(backend, "/v1/chat/completions", vision) is not False:
            caps.append("vision")
        return tuple(caps)

    async def _accepts(self, backend: BackendConfig, path: str, body: Mapping[str, Any]) -> bool | None:
        """True: answered; False: refused with a 4xx; None: could not tell."""
        try:
            async with asyncio.timeout(self._timeouts.discovery * 6):
                await self.post_json(backend, path, body)
        except BackendError as exc:
            return False if 400 <= exc.status < 500 else None
        except (ProxyError, TimeoutError):
            return None
        return True

    async def _send(self, backend: BackendConfig, path: str, data: bytes, headers: dict[str, str]) -> aiohttp.ClientResponse:
        url = _url(backend, path)
        for attempt in (1, 2):
            try:
                async with asyncio.timeout(self._timeouts.first_byte):
                    return await self._session.post(url, data=_payload(data), headers=headers)
            except TimeoutError:
                raise no_first_byte(backend.name, backend.url, self._timeouts.first_byte) from None
            except aiohttp.ServerDisconnectedError as exc:
                # A pooled connection the server closed while idle fails before any
                # byte of the answer: send once more on a fresh connection.
                if attempt == 2:
                    raise _unavailable(backend, exc) from None
            except aiohttp.ClientError as exc:
                raise _unavailable(backend, exc) from None
        raise AssertionError("unreachable")


_PROBE_TOOL = {"type": "function", "function": {"name": "probe", "description": "capability probe",
                                                "parameters": {"type": "object", "properties": {}}}}  # fmt: skip
# A 1x1 PNG: the smallest image a multimodal model accepts.
_PROBE_IMAGE = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def _url(backend: BackendConfig, path: str) -> str:
    return without_userinfo(backend.url)[0] + path


def _auth(backend: BackendConfig) -> dict[str, str]:
    """The api_key as a bearer token, else the URL's user:password as Basic auth (as the
    streaming relay sends them); aiohttp refuses a URL with credentials plus a header."""
    if backend.api_key:
        return {"Authorization": f"Bearer {backend.api_key}"}
    basic = without_userinfo(backend.url)[1]
    return {"Authorization": basic} if basic else {}


def _payload(data: bytes) -> bytes | io.BytesIO:
    # aiohttp warns that sending over 1 MiB of raw bytes blocks the event loop; a file
    # object is streamed in chunks instead (long prompts, base64 images).
    return io.BytesIO(data) if len(data) > 1024 * 1024 else data


def _unavailable(backend: BackendConfig, exc: BaseException) -> BackendUnavailable:
    return unreachable(backend.name, backend.url, str(exc) or type(exc).__name__)
