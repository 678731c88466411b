"""Capacity report (bench/capacity.py): the output: terminal tables, the JSON document, the PNG chart."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from bench.capacity_stats import Target, Workload, interactive_capacity, median

# ---------------------------------------------------------------------------------------


def _f(x: float | None, spec: str = ".0f") -> str:
    return "-" if x is None else format(x, spec)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.0f}"


def render_table(levels: list[dict[str, Any]], targets: list[Target], interactive: float, asked: int) -> str:
    a = targets[0].label
    b = targets[1].label if len(targets) > 1 else None
    has_seq = any("sequential" in lv for lv in levels)
    head = ["users", "agg tok/s", "user p50", "user worst", "TTFT p50 ms", "TTFT p95 ms", "err"]
    if has_seq:
        head += ["seq agg", "seq user p50", "seq worst", "seq TTFT p50", "gain"]
    rows = []
    for lv in levels:
        m = lv[a]
        row = [str(lv["users"]), _f(m["agg_tps"]), _f(m["user_tps_p50"], ".1f"), _f(m["user_tps_worst"], ".1f"),
               _ms(m["ttft_p50_s"]), _ms(m["ttft_p95_s"]), f"{m['errors']}/{m['requests']}"]  # fmt: skip
        if has_seq:
            s = lv.get("sequential") or {}
            row += [_f(s.get("agg_tps")), _f(s.get("user_tps_p50"), ".1f"), _f(s.get("user_tps_worst"), ".1f"),
                    _ms(s.get("ttft_p50_s")), _f(lv.get("batching_gain"), ".2f") + "×"]  # fmt: skip
        rows.append(row)
    lines = [f"{a} ({targets[0].api} {targets[0].base}, model {targets[0].model}): concurrent"
             + (" vs sequential (one request at a time, OLLAMA_NUM_PARALLEL=1)" if has_seq else "")]  # fmt: skip
    lines += _grid(head, rows)
    if b is not None:
        head2 = ["users", f"{a} agg", f"{b} agg", f"{a}/{b}", "per round", f"{a} TTFT p50", f"{b} TTFT p50",
                 f"{a} user p50", f"{b} user p50", "err"]  # fmt: skip
        rows2 = []
        for lv in levels:
            x, y = lv[a], lv[b]
            rows2.append([str(lv["users"]), _f(x["agg_tps"]), _f(y["agg_tps"]), _f(lv["ratio"], ".3f"),
                          " ".join(_f(r, ".3f") for r in lv["ratio_rounds"]), _ms(x["ttft_p50_s"]),
                          _ms(y["ttft_p50_s"]), _f(x["user_tps_p50"], ".1f"), _f(y["user_tps_p50"], ".1f"),
                          f"{x['errors']}+{y['errors']}"])  # fmt: skip
        lines.append("")
        lines.append(f"{a} vs {b} ({targets[1].api} {targets[1].base}), concurrent, interleaved per level; "
                     f"{a}/{b} = median of paired agg tok/s ratios")  # fmt: skip
        lines += _grid(head2, rows2)
    cpu_keys = sorted({k for lv in levels for t in targets for k in (lv[t.label].get("cpu_us_per_token") or {})
                       if k != "other"}, key=lambda k: (k == "client", k))  # fmt: skip
    if cpu_keys and any(k != "client" for k in cpu_keys):
        wait_keys = [k for k in cpu_keys if k != "client"]
        head3 = (["users"] + [f"{t.label}: {k}" for t in targets for k in cpu_keys]
                 + [f"{t.label}: {k} waits" for t in targets[:1] for k in wait_keys] + ["other (noise) max"])  # fmt: skip
        rows3 = []
        for lv in levels:
            row = [str(lv["users"])]
            for t in targets:
                row += [_f(lv[t.label]["cpu_us_per_token"].get(k), ".0f") for k in cpu_keys]
            for t in targets[:1]:
                row += [_pct(lv[t.label].get("runq_wait_share", {}).get(k)) for k in wait_keys]
            share = max((lv[t.label].get("other_cpu_share_max") or 0.0) for t in targets)
            rows3.append([*row, f"{100 * share:.0f}% of box"])
        lines.append("")
        lines.append("CPU µs per generated token during each target's concurrent phases (median over rounds); "
                     "waits = time runnable but waiting for a CPU, % of wall (summed over threads); "
                     "other = box CPU not used by the watched processes or this client")  # fmt: skip
        lines += _grid(head3, rows3)
    lines.append("")
    lines += summary_lines(levels, targets, interactive, asked)
    return "\n".join(lines)


def summary_lines(levels: list[dict[str, Any]], targets: list[Target], interactive: float, asked: int) -> list[str]:
    a = targets[0].label
    out = []
    cap = interactive_capacity([(lv["users"], lv[a]["user_tps_worst"]) for lv in levels], interactive)
    cap50 = interactive_capacity([(lv["users"], lv[a]["user_tps_p50"]) for lv in levels], interactive)
    measured = [lv["users"] for lv in levels]
    more = " (the largest level measured: try more users)" if cap == max(measured) else ""
    out.append(f"interactive (≥ {interactive:g} tok/s per user): {a} serves {cap} users with every user that fast{more}, "
               f"{cap50} at the median user; levels measured {measured}")  # fmt: skip
    if any("sequential" in lv for lv in levels):
        seq = [(lv["users"], (lv.get("sequential") or {}).get("user_tps_worst")) for lv in levels]
        out.append(f"served one at a time (Ollama default) it would be {interactive_capacity(seq, interactive)} users; "
                   "batching gain: " + ", ".join(f"{lv['users']}u {_f(lv.get('batching_gain'), '.2f')}×"
                                                 for lv in levels))  # fmt: skip
    if len(targets) > 1:
        b = targets[1].label
        rs = [lv["ratio"] for lv in levels if lv.get("ratio") is not None]
        if rs:
            out.append(f"{a}/{b} agg tok/s: " + ", ".join(f"{lv['users']}u {_f(lv.get('ratio'), '.3f')}" for lv in levels)
                       + f"  (worst {min(rs):.3f}; cost {100 * (1 - min(rs)):.1f}%)")  # fmt: skip
    dropped = sum(lv.get("discarded_runs", 0) for lv in levels)
    if dropped:
        out.append(f"noisy box: {dropped} runs were measured again because other processes took CPU "
                   "(kept in the JSON as discarded)")  # fmt: skip
    means = [lv[a]["mean_output_tokens"] for lv in levels if lv[a]["mean_output_tokens"] is not None]
    if means:
        out.append(f"output tokens per reply: mean {sum(means) / len(means):.1f} (asked for "
                   f"{asked}); prompt tokens per request: "
                   f"{_f(median(lv[a]['mean_prompt_tokens'] for lv in levels), '.0f')}")  # fmt: skip
    return out


def _grid(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return [fmt.format(*head), "  ".join("-" * w for w in widths), *(fmt.format(*r) for r in rows)]


def _cap_text(cap: int, levels: Sequence[int]) -> str:
    if cap == 0:
        return "not interactive even for one user"
    if cap == max(levels):
        return f"interactive at every level measured, ≥ {cap} users"
    return f"interactive up to {cap} users"


def _prompt_desc(w: Workload) -> str:
    if w.prompt_words:
        return f"{w.prompt_tokens} tokens ({w.prompt_words} words)"
    return f"{w.prompt_tokens} words"


def plot(path: str, levels: list[dict[str, Any]], targets: list[Target], w: Workload, interactive: float) -> None:
    import matplotlib  # noqa: PLC0415 - optional (pip install -e '.[bench]')

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    a = targets[0].label
    b = targets[1].label if len(targets) > 1 else None
    xs = [lv["users"] for lv in levels]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 6.2))

    def series(label: str | None, key: str) -> list[float]:
        return [(lv.get(label) or {}).get(key) or math.nan for lv in levels] if label else []

    ax1.plot(xs, series(a, "user_tps_p50"), "o-", color="tab:blue", lw=2, label=f"{a}: per-user p50")
    ax1.plot(xs, series(a, "user_tps_worst"), "v--", color="tab:blue", lw=1.5, label=f"{a}: slowest user")
    if any("sequential" in lv for lv in levels):
        ax1.plot(xs, series("sequential", "user_tps_p50"), "s:", color="tab:red", lw=2,
                 label="one request at a time (Ollama default): p50")  # fmt: skip
        ax1.plot(xs, series("sequential", "user_tps_worst"), "x:", color="tab:red", lw=1,
                 label="one request at a time: slowest user")  # fmt: skip
    if b:
        ax1.plot(xs, series(b, "user_tps_p50"), "o-", color="tab:gray", lw=1, alpha=0.7, label=f"{b}: per-user p50")
    ax1.axhline(interactive, color="tab:green", lw=1.5, ls="-.")
    ax1.annotate(f"feels interactive ({interactive:g} tok/s)", (0, interactive), xycoords=("axes fraction", "data"),
                 xytext=(6, 3), textcoords="offset points", color="tab:green", va="bottom", ha="left",
                 fontsize=10, fontweight="bold")  # fmt: skip
    cap = interactive_capacity([(lv["users"], lv[a]["user_tps_worst"]) for lv in levels], interactive)
    if cap:
        ax1.axvline(cap, color="tab:green", lw=0.8, alpha=0.5)
        ax1.annotate(_cap_text(cap, xs), (cap, 1), xycoords=("data", "axes fraction"), xytext=(-4, -4),
                     textcoords="offset points", color="tab:green", fontsize=9, ha="right", va="top")  # fmt: skip
    ax1.set_title(f"What each user sees ({_cap_text(cap, xs)})")
    ax1.set_ylabel("tokens/s per user (own tokens ÷ own busy time)")
    ax2.plot(xs, series(a, "agg_tps"), "o-", color="tab:blue", lw=2, label=f"{a}: all users together")
    if b:
        ax2.plot(xs, series(b, "agg_tps"), "o-", color="tab:gray", lw=1, alpha=0.7, label=f"{b}: all users together")
    if any("sequential" in lv for lv in levels):
        ax2.plot(xs, series("sequential", "agg_tps"), "s:", color="tab:red", lw=2,
                 label="one request at a time (Ollama default)")  # fmt: skip
        for lv in levels:
            if lv.get("batching_gain"):
                ax2.annotate(f"{lv['batching_gain']:.1f}×", (lv["users"], lv[a]["agg_tps"]), textcoords="offset points",
                             xytext=(-6, 8), ha="right", fontsize=9, color="tab:blue")  # fmt: skip
    ax2.set_title("What the box delivers (labels: batching gain)")
    ax2.set_ylabel("aggregate tokens/s (all tokens ÷ wall time)")
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("concurrent users")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    fig.suptitle(f"Capacity of {targets[0].model} via {a} ({targets[0].api} API): prompt ~{_prompt_desc(w)}, "
                 f"{w.output_tokens} output tokens, {w.requests_per_user} turns/user, think {w.think_time:g}s")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_json(path: str, argv: list[str] | None, started: float, targets: list[Target], w: Workload, rounds: int,
               result: dict[str, Any], interactive: float, levels: list[dict[str, Any]]) -> None:  # fmt: skip
    """Every figure and every request (``--json``); ``argv`` as given to ``main`` (None: sys.argv)."""
    doc = {
        "tool": "bench/capacity.py",
        "argv": sys.argv if argv is None else ["bench/capacity.py", *argv],
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": time.time() - started,
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "targets": [asdict(t) for t in targets],
        "workload": asdict(w),
        "rounds": rounds,
        "calibration": result.get("calibration"),
        "interactive_tps": interactive,
        "interactive_users": interactive_capacity(
            [(lv["users"], lv[targets[0].label]["user_tps_worst"]) for lv in levels], interactive),
        "levels": levels,
        "runs": result["runs"],
    }  # fmt: skip
    with open(path, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
