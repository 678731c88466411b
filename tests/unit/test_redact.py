"""The scrubbers' fast paths (proxy/redact.py ``could_hold``, logs' ``_Scrubber``) never let a
text through that ``scrub`` would have changed."""

from __future__ import annotations

import io
import json

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import logs
from proxy.redact import MASK, could_hold, scrub

SECRETS = ("sekrit-key-123", "p4ss", "abc")  # "abc" is too short to mask in free text


@settings(max_examples=500, deadline=None, derandomize=True, database=None)
@given(
    text=st.text(alphabet=st.sampled_from(list("sekrit-y123p4aBEARbearer xX\"'\\")), max_size=40),
    secrets=st.lists(st.text(alphabet=st.sampled_from(list("sekrit-123p4")), min_size=1, max_size=8), max_size=3),
)
def test_every_text_scrub_changes_is_suspect(text: str, secrets: list[str]) -> None:
    if scrub(text, tuple(secrets)) != text:
        assert could_hold(tuple(secrets))(text) is not None


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        pytest.param("key sekrit-key-123 here", f"key {MASK} here", id="secret"),
        pytest.param("Authorization: Bearer tok-999", f"Authorization: Bearer {MASK}", id="any-bearer-token"),
        pytest.param("SEKRIT-KEY-123", "SEKRIT-KEY-123", id="another-case-is-not-the-secret"),
        pytest.param("abc abc", "abc abc", id="too-short"),
        pytest.param({"nested": ["p4ss", 3]}, {"nested": [MASK, 3]}, id="nested"),
        pytest.param(12345, 12345, id="number"),
        pytest.param(None, None, id="null"),
    ],
)
def test_the_log_line_is_masked(value: object, shown: object, monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    logs.configure("info", "json", SECRETS)
    try:
        structlog.get_logger("t").info("request", field=value)
    finally:
        structlog.reset_defaults()
    assert json.loads(out.getvalue())["field"] == shown
