"""The auth keys of the config (api_keys, api_keys_file, trust_user_headers, user_jwt_secret,
a backend's scheduling_policy), the HS256 check's edge cases, and the start-up warning for
a proxy open to the network."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy import userinfo
from proxy.auth_config import open_warning
from proxy.config import Config, ConfigError, from_mapping, load

DIGEST = hashlib.sha256(b"k").hexdigest()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param({"api_keys": {"a": "b"}}, "api_keys: expected a list", id="not a list"),
        pytest.param({"api_keys": [{"key": "k"}]}, "api_keys[0].name: missing", id="no name"),
        pytest.param({"api_keys": [{"name": "a"}]}, "api_keys[0]: give exactly one of key or key_sha256", id="no key"),
        pytest.param(
            {"api_keys": [{"name": "a", "key": "k", "key_sha256": DIGEST}]}, "exactly one of key or key_sha256", id="both"
        ),  # fmt: skip
        pytest.param(
            {"api_keys": [{"name": "a", "key_sha256": "abc"}]},
            "api_keys[0].key_sha256: expected 64 hex digits",
            id="short digest",
        ),  # fmt: skip
        pytest.param({"api_keys": [{"name": "a", "key_sha256": "g" * 64}]}, "expected 64 hex digits", id="not hex"),
        pytest.param({"api_keys": [{"name": "a", "key": ""}]}, "api_keys[0].key: expected a non-empty string", id="empty key"),
        pytest.param(
            {"api_keys": [{"name": "a", "key": "k", "weight": 0}]},
            "api_keys[0].weight: expected a positive number",
            id="zero weight",
        ),  # fmt: skip
        pytest.param(
            {"api_keys": [{"name": "a", "key": "k", "priority": 1.5}]},
            "api_keys[0].priority: expected a whole number",
            id="fractional priority",
        ),  # fmt: skip
        pytest.param(
            {"api_keys": [{"name": "a", "key": "k", "prio": 1}]}, "api_keys[0].prio: unknown key", id="unknown entry key"
        ),
        pytest.param(
            {"api_keys": [{"name": "a", "key": "k"}, {"name": "a", "key": "j"}]},
            "api_keys[1].name: 'a' is used twice",
            id="name twice",
        ),  # fmt: skip
        pytest.param(
            {"api_keys": [{"name": "a", "key": "k"}, {"name": "b", "key_sha256": DIGEST}]},
            "api_keys[1]: the same key as 'a'",
            id="key twice",
        ),  # fmt: skip
        pytest.param({"trust_user_headers": "yes"}, "trust_user_headers: expected true or false", id="trust not a bool"),
        pytest.param({"user_jwt_secret": ""}, "user_jwt_secret: expected a non-empty string", id="empty secret"),
        pytest.param(
            {"api_keys_file": "/nonexistent/keys.yaml"}, "api_keys_file: /nonexistent/keys.yaml: cannot read", id="missing file"
        ),  # fmt: skip
        pytest.param(
            {"backends": [{"url": "http://a", "scheduling_policy": "lifo"}]},
            "backends[0].scheduling_policy: 'lifo' is not one of fcfs, priority",
            id="bad policy",
        ),  # fmt: skip
    ],
)
def test_bad_auth_config(data: Any, message: str) -> None:
    with pytest.raises(ConfigError, match="^/etc/p.yaml: .*") as info:
        from_mapping(data, "/etc/p.yaml")
    assert message in str(info.value)


def test_a_keys_file_relative_to_the_config_and_its_errors(tmp_path: Path) -> None:
    (tmp_path / "keys.yaml").write_text("api_keys:\n  - {name: bob, key: bobs-key, weight: 2, priority: -1}\n")
    (tmp_path / "config.yaml").write_text("api_keys: [{name: al, key: als-key}]\napi_keys_file: keys.yaml\n")
    config = load(str(tmp_path / "config.yaml"))
    assert [(k.name, k.weight, k.priority) for k in config.auth.keys] == [("al", 1.0, None), ("bob", 2.0, -1)]
    assert config.auth.match("bobs-key") is config.auth.keys[1] and config.auth.match("bobs-key ") is None
    (tmp_path / "keys.yaml").write_text("- {name: bob, key: [1]\n")
    with pytest.raises(ConfigError, match=r"api_keys_file: .*keys.yaml: line \d+ invalid YAML"):
        load(str(tmp_path / "config.yaml"))
    (tmp_path / "keys.yaml").write_text("bob: key\n")
    with pytest.raises(ConfigError, match=r"api_keys_file \(.*keys.yaml\): expected a list"):
        load(str(tmp_path / "config.yaml"))


def test_the_jwt_secret_defaults_to_open_webuis_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORWARD_USER_INFO_HEADER_JWT_SECRET", "from-env")
    assert from_mapping({}).auth.jwt_secret == "from-env"
    assert from_mapping({"user_jwt_secret": "from-file"}).auth.jwt_secret == "from-file"
    monkeypatch.delenv("FORWARD_USER_INFO_HEADER_JWT_SECRET")
    assert from_mapping({}).auth.jwt_secret == ""


def _token(header: Any, claims: Any, secret: str = "s") -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(orjson.dumps(header)) + "." + b64(orjson.dumps(claims))
    return head + "." + b64(hmac.new(secret.encode(), head.encode(), hashlib.sha256).digest())


HS = {"alg": "HS256"}


@pytest.mark.parametrize(
    ("token", "error"),
    [
        pytest.param("a." * 5000, "token too long", id="too long"),
        pytest.param("a.b", "not a JWT", id="two parts"),
        pytest.param("a.e30.x", "not a JWT", id="not base64"),
        pytest.param("é.e30.x", "not a JWT", id="not ASCII"),
        pytest.param("W10.e30.x", "not a JWT", id="header not an object"),
        pytest.param("e30.bm90IGpzb24.x", "not a JWT", id="claims not JSON"),
        pytest.param(_token({"alg": "HS512"}, {}), "not signed with HS256", id="another algorithm"),
        pytest.param(_token(HS, {"exp": "tomorrow"}), "exp is not a number", id="exp a string"),
        pytest.param(_token(HS, {"exp": 1000}), "expired", id="exp at now"),
    ],
)
def test_bad_tokens(token: str, error: str) -> None:
    with pytest.raises(userinfo.InvalidToken, match=f"^{error}$"):
        userinfo.verify_hs256(token, "s", now=1000.0)


def test_a_good_token_and_the_user_it_names() -> None:
    claims = userinfo.verify_hs256(_token(HS, {"sub": "u1", "name": "N", "exp": 1001}), "s", now=1000.0)
    assert userinfo.from_claims(claims) == "N"
    assert userinfo.from_claims({"email": 5, "sub": "\x00"}) == ""


@pytest.mark.parametrize(
    ("listen", "keys", "warned"),
    [
        pytest.param("127.0.0.1:11434", False, False, id="loopback"),
        pytest.param("[::1]:11434", False, False, id="IPv6 loopback"),
        pytest.param("localhost:11434", False, False, id="localhost"),
        pytest.param("0.0.0.0:11434", False, True, id="every interface"),
        pytest.param("[::]:11434", False, True, id="every IPv6 interface"),
        pytest.param("box.lan:11434", False, True, id="a host name"),
        pytest.param("0.0.0.0:11434", True, False, id="every interface, with keys"),
    ],
)
def test_warning_when_open_to_the_network(listen: str, keys: bool, warned: bool) -> None:
    config = from_mapping({"listen": listen, "api_keys": [{"name": "a", "key": "k"}] if keys else []})
    warning = open_warning(config.listen, config.auth)
    assert (warning is not None) == warned
    if warning:
        assert warning.startswith(f"warning: listening on {config.listen} without api_keys")


def test_serve_warns_once_at_start(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from proxy import __main__, workers

    monkeypatch.setattr(workers, "run", lambda config, recipe=None: 0)
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    assert __main__.main(["serve", "--backend", "http://127.0.0.1:8000", "--listen", "0.0.0.0:11434"]) == 0
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "ollama-vllm-proxy: warning: listening on 0.0.0.0:11434 without api_keys" in err
    assert __main__.main(["serve", "--backend", "http://127.0.0.1:8000"]) == 0
    assert capsys.readouterr().err == ""


def test_no_keys_by_default() -> None:
    assert Config().auth.keys == () and Config().auth.match("anything") is None
