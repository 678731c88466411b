"""CORS as Ollama configures gin-contrib/cors (Ollama's server/routes.go, gin): browser and webview
clients (local web UIs, VS Code webviews, Obsidian, Tauri apps) may call the API from
local origins; any other origin is refused with 403. ``origins`` in the config (or
``OLLAMA_ORIGINS``, comma-separated) adds patterns, ``*`` matching anything."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_LOCAL = re.compile(r"https?://(localhost|127\.0\.0\.1|0\.0\.0\.0|\[::1\])(:\d+)?")
_SCHEMES = ("app://", "file://", "tauri://", "vscode-webview://", "vscode-file://")
_METHODS = "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"
_HEADERS = ("Authorization, Content-Type, User-Agent, Accept, X-Requested-With, OpenAI-Beta, "
            "x-stainless-arch, x-stainless-async, x-stainless-custom-poll-interval, x-stainless-helper-method, "
            "x-stainless-lang, x-stainless-os, x-stainless-package-version, x-stainless-poll-helper, "
            "x-stainless-retry-count, x-stainless-runtime, x-stainless-runtime-version, x-stainless-timeout")  # fmt: skip


class Cors:
    def __init__(self, extra_origins: tuple[str, ...]) -> None:
        self._extra = extra_origins

    def allowed(self, origin: str) -> bool:
        if _LOCAL.fullmatch(origin) or origin.startswith(_SCHEMES):
            return True
        return any(fnmatch.fnmatchcase(origin, pattern) for pattern in self._extra)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is None:
            return await handler(request)
        if not self.allowed(origin):
            return web.Response(status=403)
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            return web.Response(status=204, headers={
                "Access-Control-Allow-Methods": _METHODS,
                "Access-Control-Allow-Headers": _HEADERS,
                "Access-Control-Max-Age": "43200",
            })  # fmt: skip
        return await handler(request)

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """Runs before any response's headers go out, streams included."""
        origin = request.headers.get("Origin")
        if origin is not None and self.allowed(origin):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
