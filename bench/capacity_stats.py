"""Capacity report (bench/capacity.py): the pure statistics and data model.

Percentiles, per-user rates, the batching gain, per-phase summaries, the phase plan and the
per-level figures (tests/unit/test_capacity_stats.py). No I/O here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation between closest ranks
    (numpy's default method); None for no values."""
    xs = sorted(values)
    if not xs:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def rate(tokens: float, seconds: float) -> float | None:
    """tokens ÷ seconds; None when no time passed (nothing to divide by)."""
    return tokens / seconds if seconds > 0 else None


def ratio(a: float | None, b: float | None) -> float | None:
    """a ÷ b, or None when either is missing or b is 0."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def batching_gain(concurrent_agg: float | None, sequential_agg: float | None) -> float | None:
    """How many times more tokens/s the box delivers serving users at once than one at a time."""
    return ratio(concurrent_agg, sequential_agg)


@dataclass
class RequestRecord:
    """One chat turn. Times are seconds from the start of its phase (the run's ``started_unix``)."""

    user: int
    turn: int
    t_queue: float  # the user wanted to send (equals t_send unless queued behind others)
    t_send: float = 0.0
    t_first: float | None = None  # first content token
    t_end: float = 0.0  # last byte (or failure)
    tokens: int = 0  # generated tokens: the server's count, else content chunks
    tokens_source: str = ""  # eval_count | usage | chunks
    prompt_tokens: int | None = None
    chunks: int = 0  # content chunks received
    done_reason: str | None = None
    error: str | None = None
    server: dict[str, int] = field(default_factory=dict)  # Ollama's *_duration fields, ns

    @property
    def busy(self) -> float:
        return self.t_end - self.t_queue

    @property
    def ttft(self) -> float | None:
        return None if self.t_first is None else self.t_first - self.t_queue


def compact_record(r: RequestRecord) -> dict[str, Any]:
    """A record for the JSON: times rounded to 10 µs, empty fields left out."""
    out: dict[str, Any] = {}
    for k, v in asdict(r).items():
        if v is None or v == {} or v == "":
            continue
        out[k] = round(v, 5) if isinstance(v, float) else v
    return out


def user_busy(records: Iterable[RequestRecord]) -> dict[int, tuple[int, float]]:
    """user → (generated tokens of its successful turns, its busy time over all turns)."""
    out: dict[int, tuple[int, float]] = {}
    for r in records:
        tokens, busy = out.get(r.user, (0, 0.0))
        out[r.user] = (tokens + (r.tokens if r.error is None else 0), busy + r.busy)
    return out


def per_user_rates(records: Iterable[RequestRecord]) -> dict[int, float]:
    """user → its own generated tokens ÷ its busy time (tokens/s); users with no busy time are left out."""
    rates = {}
    for user, (tokens, busy) in sorted(user_busy(records).items()):
        r = rate(tokens, busy)
        if r is not None:
            rates[user] = r
    return rates


def summarize(records: Sequence[RequestRecord], wall_s: float) -> dict[str, Any]:
    """One phase's figures: aggregate and per-user tokens/s, TTFT percentiles, errors."""
    ok = [r for r in records if r.error is None]
    tokens = sum(r.tokens for r in ok)
    rates = per_user_rates(records)
    ttfts = [t for r in ok if (t := r.ttft) is not None]
    prompt = [r.prompt_tokens for r in ok if r.prompt_tokens is not None]
    return {
        "users": len({r.user for r in records}),
        "requests": len(records),
        "errors": len(records) - len(ok),
        "tokens": tokens,
        "wall_s": wall_s,
        "agg_tps": rate(tokens, wall_s),
        "user_tps": rates,
        "user_tps_p50": percentile(rates.values(), 50),
        "user_tps_worst": min(rates.values()) if rates else None,
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p95_s": percentile(ttfts, 95),
        "mean_output_tokens": tokens / len(ok) if ok else None,
        "mean_prompt_tokens": sum(prompt) / len(prompt) if prompt else None,
        "error_samples": sorted({r.error for r in records if r.error})[:5],
    }


def median(values: Iterable[float | None]) -> float | None:
    return percentile([v for v in values if v is not None], 50)


def _median_dicts(dicts: Sequence[dict[str, float]]) -> dict[str, float | None]:
    keys = sorted({k for d in dicts for k in d})
    return {k: median(d.get(k) for d in dicts) for k in keys}


def interactive_capacity(levels: Sequence[tuple[int, float | None]], threshold: float) -> int:
    """The largest user count whose per-user rate, and that of every smaller level, is ≥ threshold
    (0 if even the smallest level is slower). ``levels``: (users, per-user tokens/s)."""
    best = 0
    for users, tps in sorted(levels):
        if tps is None or tps < threshold:
            break
        best = users
    return best


@dataclass
class Target:
    url: str
    api: str  # ollama | openai
    model: str
    label: str

    @property
    def base(self) -> str:
        return self.url.rstrip("/")


@dataclass
class Workload:
    users: list[int]
    requests_per_user: int = 4
    prompt_tokens: int = 64
    prompt_words: int | None = None  # words per prompt; None = prompt_tokens (see calibrate_prompt)
    output_tokens: int = 128
    think_time: float = 0.0
    seed: int | None = None
    temperature: float | None = None
    timeout: float = 300.0


def words_for_tokens(target_tokens: int, probes: Sequence[tuple[int, int]]) -> int:
    """Words per prompt that make about ``target_tokens`` prompt tokens, from two or more
    (words, prompt tokens) probes: a straight line through them (tokens per word, plus the
    chat template's fixed overhead)."""
    (w1, t1), (w2, t2) = min(probes), max(probes)
    if w2 == w1 or t2 <= t1:
        return target_tokens
    per_word = (t2 - t1) / (w2 - w1)
    overhead = t1 - per_word * w1
    return max(1, round((target_tokens - overhead) / per_word))


def plan(levels: Sequence[int], rounds: int, compare: bool, sequential: bool) -> list[tuple[int, str, int]]:
    """The measurement phases in order: (users, "A"|"B"|"seq", round)."""
    phases = []
    for users in levels:
        for rnd in range(rounds):
            phases.append((users, "A", rnd))
            if compare:
                phases.append((users, "B", rnd))
        if sequential:
            phases.append((users, "seq", 0))
    return phases


def units(phases: Sequence[tuple[int, str, int]]) -> list[list[tuple[int, str, int]]]:
    """Phases measured (and, on a noisy box, repeated) together: an A run with the B run of the
    same level and round, or a lone phase."""
    out: list[list[tuple[int, str, int]]] = []
    for phase in phases:
        users, which, rnd = phase
        if which == "B" and out and out[-1][-1] == (users, "A", rnd):
            out[-1].append(phase)
        else:
            out.append([phase])
    return out


def build_levels(runs: list[dict[str, Any]], targets: list[Target], levels: Sequence[int]) -> list[dict[str, Any]]:
    """Per level: each target's concurrent figures (median over rounds), the sequential baseline,
    the batching gain and the paired A/B ratio."""
    out = []
    a = targets[0].label
    b = targets[1].label if len(targets) > 1 else None
    for users in levels:
        at = [r for r in runs if r["users"] == users and not r.get("discarded")]
        conc_a = [r["summary"] for r in at if r["target"] == a and r["mode"] == "concurrent"]
        conc_b = [r["summary"] for r in at if r["target"] == b and r["mode"] == "concurrent"]
        seq = next((r["summary"] for r in at if r["mode"] == "sequential"), None)

        def med(summaries: list[dict[str, Any]], key: str) -> float | None:
            return median(s[key] for s in summaries)

        level: dict[str, Any] = {
            "users": users,
            "discarded_runs": sum(1 for r in runs if r["users"] == users and r.get("discarded")),
        }
        for label, sums in ((a, conc_a), (b, conc_b)):
            if label is None:
                continue
            level[label] = {
                "agg_tps": med(sums, "agg_tps"),
                "user_tps_p50": med(sums, "user_tps_p50"),
                "user_tps_worst": med(sums, "user_tps_worst"),
                "ttft_p50_s": med(sums, "ttft_p50_s"),
                "ttft_p95_s": med(sums, "ttft_p95_s"),
                "errors": sum(s["errors"] for s in sums),
                "requests": sum(s["requests"] for s in sums),
                "mean_output_tokens": med(sums, "mean_output_tokens"),
                "mean_prompt_tokens": med(sums, "mean_prompt_tokens"),
                "rounds_agg_tps": [s["agg_tps"] for s in sums],
                "cpu_us_per_token": _median_dicts([s.get("cpu_us_per_token") or {} for s in sums]),
                "other_cpu_share_max": max((s.get("other_cpu_share") or 0.0 for s in sums), default=None),
                "runq_wait_share": _median_dicts([s.get("runq_wait_share") or {} for s in sums]),
            }
        if seq is not None:
            level["sequential"] = {k: seq[k] for k in ("agg_tps", "user_tps_p50", "user_tps_worst", "ttft_p50_s",
                                                       "ttft_p95_s", "errors", "requests", "mean_output_tokens")}  # fmt: skip
            level["batching_gain"] = batching_gain(level[a]["agg_tps"], seq["agg_tps"])
        if b is not None:
            pairs = [ratio(x["agg_tps"], y["agg_tps"]) for x, y in zip(conc_a, conc_b, strict=False)]
            level["ratio_rounds"] = pairs
            level["ratio"] = median(pairs)
        out.append(level)
    return out
