"""Who may call and who is asking: the ``api_keys``, ``api_keys_file``, ``trust_user_headers``
and ``user_jwt_secret`` keys (the middleware that uses them is proxy/auth.py).

A key is kept as its SHA-256 digest only, and matched by comparing the digest of what a
client sent with every configured digest in constant time. A plain ``key`` from the file
is also kept for the log scrubber; neither it nor any digest or secret shows in a repr.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import string
from dataclasses import dataclass
from typing import Any

from proxy.confcheck import ConfigError, read_yaml
from proxy.confcheck import boolean as _bool
from proxy.confcheck import listing as _list
from proxy.confcheck import require_mapping as _require_mapping
from proxy.confcheck import text as _str

KEYS = frozenset({"api_keys", "api_keys_file", "trust_user_headers", "user_jwt_secret"})
JWT_SECRET_ENV = "FORWARD_USER_INFO_HEADER_JWT_SECRET"  # the variable Open WebUI signs with (its env.py)
_ENTRY_KEYS = {"name", "key", "key_sha256", "weight", "priority", "trust_user_headers"}
_INT64 = 2**63  # vLLM's priority field is an int64 (vllm/entrypoints/openai/chat_completion/protocol.py)


@dataclass(frozen=True, repr=False)
class ApiKey:
    name: str  # who the key's requests are accounted to (log line, queues, metrics)
    digest: bytes  # SHA-256 of the key
    weight: float = 1.0  # share of turns when requests queue
    priority: int | None = None  # vLLM request priority (lower runs earlier), with scheduling_policy: priority
    trust_user_headers: bool = False  # this key's client (Open WebUI) may name the user it forwards

    def __repr__(self) -> str:
        return f"ApiKey(name={self.name!r}, weight={self.weight}, priority={self.priority})"


@dataclass(frozen=True, repr=False)
class AuthSettings:
    keys: tuple[ApiKey, ...] = ()
    trust_user_headers: bool = False  # without keys: believe Open WebUI's X-OpenWebUI-User-* headers
    jwt_secret: str = ""  # verify X-OpenWebUI-User-Jwt with it (HS256); "" = ignore that header
    secrets: tuple[str, ...] = ()  # plain keys and the JWT secret, for the log scrubber

    def match(self, token: str) -> ApiKey | None:
        """The key ``token`` is, comparing its digest with every key's (no early exit, so
        the time taken does not tell which key was close or matched)."""
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found = None
        for key in self.keys:
            same = hmac.compare_digest(digest, key.digest)
            found = key if same else found
        return found

    def __repr__(self) -> str:
        secret = "***" if self.jwt_secret else ""
        names = [k.name for k in self.keys]
        return f"AuthSettings(keys={names!r}, trust_user_headers={self.trust_user_headers}, jwt_secret={secret!r})"


def parse(data: dict[str, Any], source: str, env: dict[str, str] | None = None) -> AuthSettings:
    """The top-level auth keys of the mapping ``data`` (the config file ``source``);
    ``user_jwt_secret`` falls back to ``$FORWARD_USER_INFO_HEADER_JWT_SECRET``."""
    env = dict(os.environ) if env is None else env
    entries = [(e, f"api_keys[{i}]") for i, e in enumerate(_list(data.get("api_keys", []), "api_keys"))]
    if "api_keys_file" in data:
        path = _str(data["api_keys_file"], "api_keys_file")
        if not os.path.isabs(path) and os.path.isfile(source):
            path = os.path.join(os.path.dirname(os.path.abspath(source)), path)
        entries += [(e, f"api_keys_file[{i}]") for i, e in enumerate(_read_file(path))]
    keys: list[ApiKey] = []
    secrets: list[str] = []
    for entry, where in entries:
        key, plain = _entry(entry, where)
        if any(k.name == key.name for k in keys):
            raise ConfigError(f"{where}.name: {key.name!r} is used twice")
        if any(k.digest == key.digest for k in keys):
            raise ConfigError(f"{where}: the same key as {next(k.name for k in keys if k.digest == key.digest)!r}")
        keys.append(key)
        secrets += [plain] if plain else []
    secret = _str(data["user_jwt_secret"], "user_jwt_secret") if "user_jwt_secret" in data else env.get(JWT_SECRET_ENV, "")
    return AuthSettings(
        keys=tuple(keys),
        trust_user_headers=_bool(data.get("trust_user_headers", False), "trust_user_headers"),
        jwt_secret=secret,
        secrets=tuple(secrets) + ((secret,) if secret else ()),
    )


def _read_file(path: str) -> list[Any]:
    try:
        data = read_yaml(path)
    except ConfigError as exc:
        raise ConfigError(f"api_keys_file: {exc}") from None
    if isinstance(data, dict) and set(data) == {"api_keys"}:
        data = data["api_keys"]  # the same section as in the config file
    return _list(data or [], f"api_keys_file ({path})")


def _entry(data: Any, where: str) -> tuple[ApiKey, str]:
    _require_mapping(data, where, _ENTRY_KEYS)
    if "name" not in data:
        raise ConfigError(f"{where}.name: missing")
    name = _str(data["name"], f"{where}.name")
    if ("key" in data) == ("key_sha256" in data):
        raise ConfigError(f"{where}: give exactly one of key or key_sha256")
    plain = ""
    if "key" in data:
        plain = _str(data["key"], f"{where}.key")
        digest = hashlib.sha256(plain.encode()).digest()
    else:
        hexed = data["key_sha256"]
        if not isinstance(hexed, str) or len(hexed) != 64 or not set(hexed.lower()) <= set(string.hexdigits.lower()):
            raise ConfigError(f"{where}.key_sha256: expected 64 hex digits (sha256sum of the key)")
        digest = bytes.fromhex(hexed)
    weight = data.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0:
        raise ConfigError(f"{where}.weight: expected a positive number, got {weight!r}")
    priority = data.get("priority")
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int) or not -_INT64 <= priority < _INT64):
        raise ConfigError(f"{where}.priority: expected a whole number (lower runs earlier), got {priority!r}")
    trust = _bool(data.get("trust_user_headers", False), f"{where}.trust_user_headers")
    return ApiKey(name, digest, float(weight), priority, trust), plain


def open_warning(listen: str, settings: AuthSettings) -> str | None:
    """The start-up warning for a proxy any host can use: bound beyond loopback, no keys."""
    host = listen.rpartition(":")[0].strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False  # a host name: it may resolve to any interface
    if loopback or settings.keys:
        return None
    return (f"warning: listening on {listen} without api_keys: anyone who can reach it can use every model; "
            "set api_keys: in the config (README: Users and keys)")  # fmt: skip
