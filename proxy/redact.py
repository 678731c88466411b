"""How a backend is named wherever someone other than the backend can read it.

A backend URL may carry credentials (``http://user:pass@host:8000``) and a backend may
have an ``api_key``. Every client-visible text, log line and listing names a backend by
``display_url`` (the password replaced by ``***``, the user kept so operators can tell
accounts apart); ``scrub`` is the second line of defence for texts built from other
people's strings (exception messages, tracebacks), masking any known secret in them.
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "***"
# Shorter secrets are not masked inside free text (a 2-letter password would mangle every
# word containing it); URLs are redacted structurally whatever the password's length.
MIN_SCRUB_LENGTH = 4
# A bearer token in any text (a header echoed into an exception, say), whether or not it is a
# configured key: a client's mistyped key is someone's secret too.
_BEARER = re.compile(r"(?i)\b(bearer\s+)[^\s\"',;]+")


def display_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``: ``http://user:***@host:8000``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK if "@" in url else url
    if "@" not in parts.netloc:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    netloc = f"{user}:{MASK}@{hostport}" if colon else f"{user}@{hostport}"
    return urlunsplit(parts._replace(netloc=netloc))


def host_port(url: str) -> str:
    """The URL's ``host:port`` without any userinfo (the default backend name)."""
    return urlsplit(url).netloc.rpartition("@")[2]


def without_userinfo(url: str) -> tuple[str, str | None]:
    """``url`` without ``user:pass@``, and the ``Authorization: Basic`` value it stood for
    (None without userinfo): credentials then travel in a header, never in a URL that an
    HTTP library may echo into an exception text."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
    return urlunsplit(parts._replace(netloc=hostport)), f"Basic {token}"


def url_secrets(url: str) -> tuple[str, ...]:
    """The password in ``url`` as written and percent-decoded, and the Basic auth token it
    is sent as (a backend that echoes its Authorization header shows that), if any."""
    try:
        password = urlsplit(url).password
        raw = urlsplit(url).netloc.rpartition("@")[0].partition(":")[2]
    except ValueError:
        return ()
    if not (password or raw):
        return ()
    basic = without_userinfo(url)[1]
    return tuple(sorted({s for s in (password, raw, basic and basic.removeprefix("Basic ")) if s}))


def scrub(text: str, secrets: Iterable[str], bearer: bool = True) -> str:
    """``text`` with every occurrence of a (long enough) secret, and any bearer token
    (unless ``bearer`` is false), replaced by ``***``."""
    if bearer and _MAYBE_BEARER(text) is not None:
        text = _BEARER.sub(rf"\1{MASK}", text)
    for secret in _longest_first(secrets if isinstance(secrets, tuple) else tuple(secrets)):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


_MAYBE_BEARER = re.compile(r"(?i)bearer").search  # most texts have no token: skip the substitution


@functools.lru_cache(maxsize=64)
def _longest_first(secrets: tuple[str, ...]) -> tuple[str, ...]:
    """The secrets long enough to mask, longest first (one inside another is masked whole).
    Cached: every log line scrubs its values with the same few secrets."""
    return tuple(s for s in sorted(secrets, key=len, reverse=True) if len(s) >= MIN_SCRUB_LENGTH)


def scrub_value(value: Any, secrets: tuple[str, ...], bearer: bool = True) -> Any:
    """``scrub`` through the strings of a JSON-like value (a log event, a traceback dict)."""
    if type(value) in _PLAIN:  # most of a log line's values
        return value
    if isinstance(value, str):
        return scrub(value, secrets, bearer)
    if isinstance(value, dict):
        return {k: scrub_value(v, secrets, bearer) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_value(v, secrets, bearer) for v in value]
    return value


_PLAIN = (int, float, bool, type(None))  # nothing to mask


def scrub_fields(event: MutableMapping[str, Any], secrets: tuple[str, ...]) -> MutableMapping[str, Any]:
    """``scrub_value`` of each value of a log event, in place; a string is scrubbed only if
    ``could_hold`` says it may hold something to mask (most of a line's strings do not)."""
    suspect = could_hold(secrets)
    for key, value in event.items():
        kind = type(value)
        if kind is str:
            if suspect(value) is not None:
                event[key] = scrub(value, secrets)
        elif kind not in _PLAIN:
            event[key] = scrub_value(value, secrets)
    return event


@functools.lru_cache(maxsize=64)
def could_hold(secrets: tuple[str, ...], bearer: bool = True) -> Callable[[str], object]:
    """A test that is true for every text ``scrub`` would change (and some it would not):
    one regex search, where ``scrub`` is a substitution and a loop over the secrets."""
    parts = [re.escape(s) for s in _longest_first(secrets)] + (["bearer"] if bearer else [])
    if not parts:
        return lambda text: None
    return re.compile("(?i)" + "|".join(parts)).search


def scrub_error_event(event: bytes, secrets: tuple[bytes, ...]) -> bytes:
    """An SSE event relayed as the backend sent it, masked when it is an error event
    (``{"error": ...}`` or ``"object":"error"``) that quotes a secret; others untouched."""
    if b'"error"' not in event:
        return event
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= MIN_SCRUB_LENGTH:
            event = event.replace(secret, MASK.encode())
    return event
