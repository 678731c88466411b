"""Who is asking, and whether they may: the middleware after ``canonical`` that checks API
keys and stores the request's ``Caller`` on its context (read by ``state.caller_of``).

The user is, in order: the API key's name; else, for a client trusted to say so, the user
Open WebUI forwards (its signed JWT when a secret is configured, else its plain headers);
else the client address. The settings are read from the app's config on every request,
so a reload that swaps the config swaps the keys.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from proxy import userinfo
from proxy.auth_config import ApiKey, AuthSettings
from proxy.errors import Unauthorized
from proxy.identity import Caller
from proxy.state import CONTEXT, TIMERS, live
from proxy.timers import SYSTEM

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def identify(request: web.Request, handler: Handler) -> web.StreamResponse:
    settings = live(request).config.auth
    context = request[CONTEXT]
    context.caller = Caller(user=request.remote or "unknown")
    context.log.update(user=context.caller.user, user_source=context.caller.source)
    if _open(request):
        return await handler(request)
    key = settings.match(_bearer(request)) if settings.keys else None
    if settings.keys and key is None:
        raise Unauthorized("unauthorized: this server needs an API key, sent as 'Authorization: Bearer <key>'")
    if key is not None:
        context.caller = Caller(key.name, "key", key.weight, key.priority)
    if key is None or key.trust_user_headers:
        context.caller = _forwarded(request, settings, key) or context.caller
    context.log.update(user=context.caller.user, user_source=context.caller.source)
    return await handler(request)


def _open(request: web.Request) -> bool:
    """What needs no key: Ollama's liveness check (``GET``/``HEAD /``) and CORS preflights,
    which browsers send without credentials."""
    if request.path == "/" and request.method in ("GET", "HEAD"):
        return True
    return request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers


def _bearer(request: web.Request) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _forwarded(request: web.Request, settings: AuthSettings, key: ApiKey | None) -> Caller | None:
    """The user Open WebUI names, if this request may name one. With a JWT secret only the
    signed token counts (Open WebUI then sends no plain headers, so any are forged)."""
    weight, priority = (key.weight, key.priority) if key is not None else (1.0, None)
    if settings.jwt_secret:
        token = request.headers.get(userinfo.JWT_HEADER)
        if token is None:
            return None
        try:
            claims = userinfo.verify_hs256(token, settings.jwt_secret, request.app.get(TIMERS, SYSTEM).wall_ns() / 1e9)
        except userinfo.InvalidToken as exc:
            raise Unauthorized(f"unauthorized: invalid {userinfo.JWT_HEADER}: {exc}") from None
        user = userinfo.from_claims(claims)
        return Caller(user, "jwt", weight, priority) if user else None
    if settings.trust_user_headers or key is not None:
        user = userinfo.from_headers(request.headers)
        return Caller(user, "header", weight, priority) if user else None
    return None
