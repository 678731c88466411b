"""bench/capacity.py: the pure statistics (percentiles, per-user rates, batching gain, the
interactive read-off), the workload and phase plan, and one smoke run through the proxy
against the fake vLLM (so a wire change that breaks the capacity tool shows up here)."""

from __future__ import annotations

import io
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from bench import capacity as cap
from bench.capacity import RequestRecord


def rec(user: int, turn: int, queue: float, end: float, tokens: int, first: float | None = None,
        error: str | None = None) -> RequestRecord:  # fmt: skip
    return RequestRecord(user=user, turn=turn, t_queue=queue, t_send=queue, t_end=end, tokens=tokens,
                         t_first=queue + 0.1 if first is None else first, error=error)  # fmt: skip


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        pytest.param([], 50, None, id="empty-is-none"),
        pytest.param([7.0], 50, 7.0, id="single-value-any-q"),
        pytest.param([7.0], 95, 7.0, id="single-value-p95"),
        pytest.param([1, 2, 3, 4], 50, 2.5, id="even-count-median-interpolates"),
        pytest.param([3, 1, 2], 50, 2.0, id="unsorted-input"),
        pytest.param([1, 2, 3, 4, 5], 0, 1.0, id="p0-is-min"),
        pytest.param([1, 2, 3, 4, 5], 100, 5.0, id="p100-is-max"),
        pytest.param(list(range(1, 21)), 95, 19.05, id="p95-of-20-linear-like-numpy"),
        pytest.param([10, 20], 25, 12.5, id="quarter-between-two"),
    ],
)
def test_percentile(values: list[float], q: float, expected: float | None) -> None:
    got = cap.percentile(values, q)
    assert got == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize("q", [pytest.param(-1, id="below-0"), pytest.param(101, id="above-100")])
def test_percentile_rejects_out_of_range(q: float) -> None:
    with pytest.raises(ValueError, match="0..100"):
        cap.percentile([1, 2], q)


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        pytest.param([rec(0, 0, 0.0, 2.0, 100)], {0: 50.0}, id="one-user-one-turn"),
        pytest.param([rec(0, 0, 0.0, 1.0, 100), rec(0, 1, 5.0, 6.0, 100)], {0: 100.0},
                     id="think-time-between-turns-is-not-busy"),
        pytest.param([rec(0, 0, 0.0, 1.0, 100), rec(1, 0, 0.0, 4.0, 100)], {0: 100.0, 1: 25.0},
                     id="users-rated-separately"),
        pytest.param([rec(0, 0, 0.0, 1.0, 100), rec(0, 1, 1.0, 2.0, 100, error="HTTP 500")], {0: 50.0},
                     id="failed-turn-adds-time-not-tokens"),
        pytest.param([rec(0, 0, 1.0, 1.0, 0)], {}, id="no-busy-time-left-out"),
        # Sequential: user 1 queued at 0 behind user 0, served 1..2: its wait counts.
        pytest.param([rec(0, 0, 0.0, 1.0, 100), rec(1, 0, 0.0, 2.0, 100)], {0: 100.0, 1: 50.0},
                     id="queueing-counts-against-the-user"),
    ],
)  # fmt: skip
def test_per_user_rates(records: list[RequestRecord], expected: dict[int, float]) -> None:
    assert cap.per_user_rates(records) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("concurrent", "sequential", "expected"),
    [
        pytest.param(900.0, 130.0, 900 / 130, id="batching-7x"),
        pytest.param(130.0, 130.0, 1.0, id="one-user-no-gain"),
        pytest.param(100.0, 200.0, 0.5, id="slower-than-sequential"),
        pytest.param(900.0, 0.0, None, id="zero-sequential-undefined"),
        pytest.param(None, 130.0, None, id="missing-concurrent"),
        pytest.param(900.0, None, None, id="missing-sequential"),
    ],
)
def test_batching_gain(concurrent: float | None, sequential: float | None, expected: float | None) -> None:
    got = cap.batching_gain(concurrent, sequential)
    assert got == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize(
    ("tokens", "seconds", "expected"),
    [
        pytest.param(128, 1.0, 128.0, id="plain"),
        pytest.param(0, 2.0, 0.0, id="no-tokens"),
        pytest.param(10, 0.0, None, id="no-time"),
    ],
)
def test_rate(tokens: int, seconds: float, expected: float | None) -> None:
    assert cap.rate(tokens, seconds) == expected


@pytest.mark.parametrize(
    ("levels", "threshold", "expected"),
    [
        pytest.param([(1, 130.0), (2, 90.0), (4, 50.0), (8, 25.0)], 20, 8, id="all-levels-fast"),
        pytest.param([(1, 130.0), (2, 90.0), (4, 50.0), (8, 15.0)], 20, 4, id="last-level-too-slow"),
        pytest.param([(1, 10.0), (2, 9.0)], 20, 0, id="even-one-user-too-slow"),
        pytest.param([(1, 30.0), (2, 10.0), (4, 25.0)], 20, 1, id="stops-at-first-slow-level"),
        pytest.param([(8, 25.0), (1, 130.0), (4, 50.0)], 20, 8, id="unsorted-levels"),
        pytest.param([(1, 30.0), (2, None)], 20, 1, id="missing-figure-stops"),
        pytest.param([(1, 20.0)], 20, 1, id="threshold-inclusive"),
    ],
)
def test_interactive_capacity(levels: list[tuple[int, float | None]], threshold: float, expected: int) -> None:
    assert cap.interactive_capacity(levels, threshold) == expected


def test_summarize_level() -> None:
    records = [
        rec(0, 0, 0.0, 1.0, 100, first=0.1),
        rec(0, 1, 1.0, 2.0, 100, first=1.3),
        rec(1, 0, 0.0, 2.0, 100, first=0.2),
        rec(1, 1, 2.0, 4.0, 0, first=None, error="timeout after 300s"),
    ]
    records[3].t_first = None
    s = cap.summarize(records, wall_s=4.0)
    assert s["users"] == 2 and s["requests"] == 4 and s["errors"] == 1
    assert s["tokens"] == 300
    assert s["agg_tps"] == pytest.approx(75.0)  # 300 tokens / 4 s wall
    assert s["user_tps"] == pytest.approx({0: 100.0, 1: 25.0})  # 200/2 s and 100/4 s
    assert s["user_tps_p50"] == pytest.approx(62.5)
    assert s["user_tps_worst"] == pytest.approx(25.0)
    assert s["ttft_p50_s"] == pytest.approx(0.2)  # of 0.1, 0.3, 0.2 (the failed turn has none)
    assert s["error_samples"] == ["timeout after 300s"]


@pytest.mark.parametrize(
    ("words", "user", "turn"),
    [pytest.param(64, 0, 0, id="64-words"), pytest.param(500, 7, 3, id="500-words"), pytest.param(3, 1, 1, id="tiny")],
)
def test_prompt_is_deterministic_and_about_the_length(words: int, user: int, turn: int) -> None:
    a = cap.make_prompt(words, user, turn, "[3]")
    assert a == cap.make_prompt(words, user, turn, "[3]")
    assert a.startswith("[3] ")  # phases never share a prefix
    assert abs(len(a.split()) - words) <= 8
    assert a != cap.make_prompt(words, user + 1, turn, "[3]")


@pytest.mark.parametrize(
    ("target", "probes", "expected"),
    [
        pytest.param(64, [(32, 35), (128, 131)], 61, id="one-token-per-word-plus-template"),
        pytest.param(64, [(32, 78), (128, 276)], 25, id="two-tokens-per-word-code-tokenizer"),
        pytest.param(64, [(128, 131), (32, 35)], 61, id="probe-order-irrelevant"),
        pytest.param(64, [(32, 40), (128, 40)], 64, id="flat-probes-fall-back-to-words"),
        pytest.param(2, [(32, 35), (128, 131)], 1, id="never-below-one-word"),
    ],
)
def test_words_for_tokens(target: int, probes: list[tuple[int, int]], expected: int) -> None:
    assert cap.words_for_tokens(target, probes) == expected


def test_plan_interleaves_targets_then_sequential() -> None:
    assert cap.plan([1, 8], rounds=2, compare=True, sequential=True) == [
        (1, "A", 0), (1, "B", 0), (1, "A", 1), (1, "B", 1), (1, "seq", 0),
        (8, "A", 0), (8, "B", 0), (8, "A", 1), (8, "B", 1), (8, "seq", 0),
    ]  # fmt: skip


def test_units_pair_a_with_b_of_the_same_round() -> None:
    phases = cap.plan([2], rounds=2, compare=True, sequential=True)
    assert cap.units(phases) == [[(2, "A", 0), (2, "B", 0)], [(2, "A", 1), (2, "B", 1)], [(2, "seq", 0)]]
    assert cap.units(cap.plan([2], rounds=2, compare=False, sequential=False)) == [[(2, "A", 0)], [(2, "A", 1)]]


def test_paired_ratio_is_median_over_rounds() -> None:
    def run(users: int, target: str, mode: str, rnd: int, agg: float) -> dict[str, Any]:
        summary = {"agg_tps": agg, "user_tps_p50": agg / users, "user_tps_worst": agg / users, "ttft_p50_s": 0.1,
                   "ttft_p95_s": 0.2, "errors": 0, "requests": users, "mean_output_tokens": 128.0,
                   "mean_prompt_tokens": 70.0}  # fmt: skip
        return {"users": users, "target": target, "mode": mode, "round": rnd, "summary": summary}

    runs = [run(8, "proxy", "concurrent", 0, 950), run(8, "direct", "concurrent", 0, 1000),
            run(8, "proxy", "concurrent", 1, 500), run(8, "direct", "concurrent", 1, 1000),
            run(8, "proxy", "concurrent", 2, 990), run(8, "direct", "concurrent", 2, 1000),
            run(8, "proxy", "sequential", 0, 130),
            {**run(8, "proxy", "concurrent", 0, 10), "discarded": True},  # a noisy attempt, measured again
            {**run(8, "direct", "concurrent", 0, 1000), "discarded": True}]  # fmt: skip
    targets = [cap.Target("u1", "ollama", "tiny", "proxy"), cap.Target("u2", "openai", "tiny", "direct")]
    (level,) = cap.build_levels(runs, targets, [8])
    assert level["ratio_rounds"] == pytest.approx([0.95, 0.5, 0.99])
    assert level["ratio"] == pytest.approx(0.95)  # one noisy round does not decide it
    assert level["batching_gain"] == pytest.approx(950 / 130)
    assert level["discarded_runs"] == 2
    table = cap.render_table([level], targets, 20.0, 128)
    assert "proxy/direct" in table and "0.950" in table and "7.31×" in table
    assert "2 runs were measured again" in table


async def test_smoke_through_the_proxy(proxy_server: TestServer) -> None:
    """Ollama API through the proxy against the fake vLLM (4 tokens per reply), concurrent and sequential."""
    url = str(proxy_server.make_url("")).rstrip("/")
    targets = [cap.Target(url, "ollama", "tiny", "proxy")]
    w = cap.Workload(users=[1, 3], requests_per_user=2, prompt_tokens=20, output_tokens=4)
    err = io.StringIO()
    result = await cap.run_all(targets, w, rounds=1, sequential=True, progress=cap.Progress(0, stream=err), calibrate=True)
    assert result["calibration"] == {"probes_words_tokens": [(32, 35), (128, 131)], "prompt_words": 17}
    assert [(r["users"], r["mode"]) for r in result["runs"]] == [
        (1, "concurrent"), (1, "sequential"), (3, "concurrent"), (3, "sequential")]  # fmt: skip
    for r in result["runs"]:
        assert r["summary"]["errors"] == 0
        assert r["summary"]["tokens"] == r["users"] * 2 * 4
        assert {x["tokens_source"] for x in r["records"]} == {"eval_count"}
        assert all(x["prompt_tokens"] for x in r["records"])
    assert "[phase 4/4] users 3 · proxy sequential" in err.getvalue()
    assert "6/6 req" in err.getvalue()
