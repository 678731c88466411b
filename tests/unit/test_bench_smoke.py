"""bench/run.py --smoke: the verdict CI acts on. It fails on a proxied stream that failed or was
truncated even when throughput is fine, and on low throughput when every stream was whole."""

from __future__ import annotations

from typing import Any

import pytest

from bench.run import smoke_verdict


def level(failed: int = 0, short: int = 0, best: float = 0.9, rounds: int = 3) -> dict[int, dict[str, Any]]:
    load: dict[str, Any] = {"streams": 16, "failed": 0, "short": 0, "errors": {}}
    runs: list[dict[str, Any]] = [{"target": "direct", "load": dict(load)} for _ in range(rounds)]
    runs += [{"target": "proxy", "load": dict(load)} for _ in range(rounds)]
    if rounds:
        runs[-1]["load"].update(failed=failed, short=short, errors={"error event: boom": failed} if failed else {})
    summary = {"proxy": {"ratio_vs_direct": {"max": best, "median": best - 0.05}}}
    return {16: {"runs": runs, "summary": summary}}


@pytest.mark.parametrize(
    ("levels", "targets", "status", "says"),
    [
        pytest.param(level(), ["direct", "proxy"], 0, "SMOKE OK", id="whole-streams-good-ratio"),
        pytest.param(level(failed=1), ["direct", "proxy"], 1, "1 failed, 0 truncated of 48", id="one-failed-stream"),
        pytest.param(level(short=2), ["direct", "proxy"], 1, "0 failed, 2 truncated of 48", id="truncated-streams"),
        pytest.param(level(best=0.4), ["direct", "proxy"], 1, "best round 0.4 < 0.5", id="low-ratio"),
        pytest.param(level(rounds=0), ["direct", "proxy"], 1, "0 failed, 0 truncated of 0", id="no-proxy-runs"),
        pytest.param(level(), ["direct"], 1, "proxy did not start", id="proxy-not-started"),
    ],
)
def test_smoke_verdict(
    levels: dict[int, dict[str, Any]], targets: list[str], status: int, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert smoke_verdict(levels, targets) == status
    assert says in capsys.readouterr().out
