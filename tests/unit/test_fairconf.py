"""The fair-turn keys (proxy/fairconf.py): per backend, falling back to the top-level
keys, and every bad value named by its key."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.config import ConfigError, from_mapping
from proxy.turns import Limits

URL = "http://127.0.0.1:8000"


def limits(data: dict[str, Any], backend: dict[str, Any], discovered: int | None = None) -> Limits:
    config = from_mapping({**data, "backends": [{"url": URL, **backend}]})
    turns = config.backends[0].turns
    return turns.limits(config.max_user_concurrency, config.max_queue, config.queue_timeout, discovered)


@pytest.mark.parametrize(
    ("top", "backend", "discovered", "expected"),
    [
        pytest.param({}, {}, None, Limits(256, 0, 512, 60.0), id="defaults"),
        pytest.param({}, {}, 128, Limits(128, 0, 512, 60.0), id="vllm-max-num-seqs-when-known"),
        pytest.param({}, {"max_concurrency": 8}, 128, Limits(8, 0, 512, 60.0), id="configured-limit-wins"),
        pytest.param({"max_user_concurrency": 3, "max_queue": 10, "queue_timeout": 5}, {}, None, Limits(256, 3, 10, 5.0),
                     id="top-level-keys-apply-to-every-backend"),
        pytest.param({"max_user_concurrency": 3, "queue_timeout": 5},
                     {"max_user_concurrency": 0, "queue_timeout": 2.5, "max_queue": 4}, None, Limits(256, 0, 4, 2.5),
                     id="a-backend-overrides-them"),
    ],
)  # fmt: skip
def test_limits(top: dict[str, Any], backend: dict[str, Any], discovered: int | None, expected: Limits) -> None:
    assert limits(top, backend, discovered) == expected


@pytest.mark.parametrize(
    ("top", "backend", "message"),
    [
        pytest.param({}, {"max_concurrency": 0}, "backends[0].max_concurrency: expected a whole number >= 1", id="zero-limit"),
        pytest.param({}, {"max_concurrency": "4"}, "backends[0].max_concurrency", id="string-limit"),
        pytest.param({}, {"max_user_concurrency": -1}, "backends[0].max_user_concurrency", id="negative-user-cap"),
        pytest.param({}, {"queue_timeout": 0}, "backends[0].queue_timeout: expected a positive number", id="zero-timeout"),
        pytest.param({}, {"max_queue": 0}, "backends[0].max_queue", id="zero-queue"),
        pytest.param({"max_user_concurrency": True}, {}, "max_user_concurrency", id="top-level-bool"),
    ],
)
def test_bad_values_name_the_key(top: dict[str, Any], backend: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        from_mapping({**top, "backends": [{"url": URL, **backend}]})
