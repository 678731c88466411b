"""The user Open WebUI forwards, read from its headers; pure (the caller passes the clock).

Open WebUI (backend/open_webui/utils/headers.py, ``include_user_info_headers``) sends
either ``X-OpenWebUI-User-Name`` (URL-quoted), ``-User-Id``, ``-User-Email`` and
``-User-Role`` (``ENABLE_FORWARD_USER_INFO_HEADERS=true``), or, when
``FORWARD_USER_INFO_HEADER_JWT_SECRET`` is set, instead of them one HS256 JWT in
``X-OpenWebUI-User-Jwt`` with the claims ``sub``, ``email``, ``name``, ``role``, ``iss``,
``iat`` and ``exp`` (300 s by default). Every value comes from the client: it is cut to
``MAX_USER`` characters and loses its control characters before anything logs it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

import orjson

JWT_HEADER = "X-OpenWebUI-User-Jwt"
EMAIL, NAME, ID = "X-OpenWebUI-User-Email", "X-OpenWebUI-User-Name", "X-OpenWebUI-User-Id"
MAX_USER = 128  # characters of a user name kept for the log line and the queues
MAX_TOKEN = 8192  # Open WebUI's tokens are a few hundred bytes


class InvalidToken(ValueError):
    """A JWT that is malformed, not HS256, wrongly signed or expired (the text says which)."""


def clean(value: str) -> str:
    """``value`` without control or other unprintable characters, trimmed and bounded."""
    return "".join(ch for ch in value if ch.isprintable()).strip()[:MAX_USER]


def from_headers(headers: Mapping[str, str]) -> str:
    """The user the plain headers name: the email, else the name, else the id; "" if none."""
    for header in (EMAIL, NAME, ID):
        raw = headers.get(header, "")
        user = clean(unquote(raw) if header == NAME else raw)
        if user:
            return user
    return ""


def from_claims(claims: Mapping[str, Any]) -> str:
    """The same choice among a verified token's claims (``sub`` is the user id)."""
    for claim in ("email", "name", "sub"):
        value = claims.get(claim)
        user = clean(value) if isinstance(value, str) else ""
        if user:
            return user
    return ""


def verify_hs256(token: str, secret: str, now: float) -> dict[str, Any]:
    """The claims of ``token`` if it is an HS256 JWT signed with ``secret`` (RFC 7519) and,
    when it has ``exp``, not expired at ``now`` (seconds since the epoch)."""
    if len(token) > MAX_TOKEN:
        raise InvalidToken("token too long")
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise InvalidToken("not a JWT")
    header, claims = _json_part(parts[0]), _json_part(parts[1])
    if header.get("alg") != "HS256":  # never the token's own choice of algorithm ("none")
        raise InvalidToken("not signed with HS256")
    signed = f"{parts[0]}.{parts[1]}".encode("ascii", "replace")
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, _b64(parts[2])):
        raise InvalidToken("bad signature")
    exp = claims.get("exp")
    if exp is not None:
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            raise InvalidToken("exp is not a number")
        if now >= exp:
            raise InvalidToken("expired")
    return claims


def _b64(part: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken("not a JWT") from None


def _json_part(part: str) -> dict[str, Any]:
    try:
        value = orjson.loads(_b64(part))
    except orjson.JSONDecodeError:
        raise InvalidToken("not a JWT") from None
    if not isinstance(value, dict):
        raise InvalidToken("not a JWT")
    return value
