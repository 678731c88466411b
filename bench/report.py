"""Per-level summaries (median and min–max over rounds) and the printed tables."""

from __future__ import annotations

import statistics
from typing import Any

Run = dict[str, Any]


def spread(values: list[float | None]) -> dict[str, float] | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def _by_round(runs: list[Run]) -> dict[int, dict[str, Run]]:
    out: dict[int, dict[str, Run]] = {}
    for r in runs:
        out.setdefault(r["round"], {})[r["target"]] = r
    return out


def _diff(a: Run, b: Run, key: str) -> float | None:
    x, y = a["load"].get(key), b["load"].get(key)
    return None if x is None or y is None else x - y


def _us_per_event(run: Run, field: str = "cpu_ns") -> float | None:
    ev = run["load"]["events"]
    cpu = run.get(field)
    return None if not ev or cpu is None else cpu / 1000 / ev


def summarize_level(runs: list[Run]) -> dict[str, Any]:
    """Paired per round (each relay against the direct run of the same round), then median over rounds."""
    rounds = _by_round(runs)
    targets = sorted({r["target"] for r in runs})
    per: dict[str, dict[str, list[float | None]]] = {t: {} for t in targets}

    def add(t: str, k: str, v: float | None) -> None:
        per[t].setdefault(k, []).append(v)

    for rr in rounds.values():
        d = rr.get("direct")
        for t, run in rr.items():
            ld = run["load"]
            add(t, "events_per_s", ld["events_per_s"])
            for k in ("ttft_p50_ms", "ttft_p99_ms", "delay_p50_ms", "delay_p99_ms", "gap_p50_ms", "gap_p99_ms"):
                add(t, k, ld[k])
            add(t, "failed", ld["failed"])
            add(t, "short", ld["short"])
            add(t, "fake_us_per_event", _us_per_event(run, "fake_cpu_ns"))
            if t != "direct":
                add(t, "cpu_us_per_event", _us_per_event(run))
                add(t, "user_us_per_event", _us_per_event(run, "user_ns"))
                add(t, "sys_us_per_event", _us_per_event(run, "sys_ns"))
                add(t, "irq_us_per_event", _us_per_event(run, "irq_ns"))
                add(t, "cpu_util", run.get("cpu_util"))
                if d is not None:
                    de = d["load"]["events_per_s"]
                    add(t, "ratio_vs_direct", ld["events_per_s"] / de if de else None)
                    for k in ("ttft_p50_ms", "ttft_p99_ms", "delay_p50_ms", "delay_p99_ms", "gap_p99_ms"):
                        add(t, "added_" + k, _diff(run, d, k))
        p, n = rr.get("proxy"), rr.get("nginx")
        if p is not None and n is not None:
            pu, nu = _us_per_event(p), _us_per_event(n)
            add("proxy", "cpu_ratio_vs_nginx", pu / nu if pu is not None and nu else None)
            # the processes' own CPU only: the IRQ share is alike for both and would dilute the ratio
            pu, nu = _us_per_event(p, "process_ns"), _us_per_event(n, "process_ns")
            add("proxy", "process_ratio_vs_nginx", pu / nu if pu is not None and nu else None)
    return {t: {k: spread(v) for k, v in m.items()} for t, m in per.items()}


def _f(s: dict[str, float] | None, digits: int = 2, scale: float = 1.0) -> str:
    if s is None:
        return "-"
    m, lo, hi = s["median"] * scale, s["min"] * scale, s["max"] * scale
    if digits == 0:
        return f"{m:,.0f} [{lo:,.0f}–{hi:,.0f}]"
    return f"{m:.{digits}f} [{lo:.{digits}f}–{hi:.{digits}f}]"


def _get(summary: dict[str, Any], target: str, key: str) -> dict[str, float] | None:
    value: dict[str, float] | None = summary.get(target, {}).get(key)
    return value


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) for r in rows]
    return "\n".join(lines)


def render(levels: dict[int, dict[str, Any]], targets: list[str], latency: bool = True) -> str:
    """Two tables: throughput/CPU and added latency. Figures are `median [min–max]` over rounds."""
    relays = [t for t in ("proxy", "nginx") if t in targets]
    h1 = ["c", "direct ev/s"]
    for t in relays:
        h1 += [f"{t}/direct", f"{t} µs/ev (user/sys/irq)"]
    if "proxy" in relays and "nginx" in relays:
        h1 += ["proxy/nginx CPU", "… process only"]
    h1 += ["fake µs/ev", "fail/short"]
    rows1 = []
    for c, lv in sorted(levels.items()):
        s = lv["summary"]
        row = [str(c), _f(_get(s, "direct", "events_per_s"), 0)]
        for t in relays:
            us = _get(s, t, "cpu_us_per_event")
            u, y, q = (_get(s, t, f"{k}_us_per_event") for k in ("user", "sys", "irq"))
            split = f" ({u['median']:.0f}/{y['median']:.0f}/{q['median'] if q else 0:.0f})" if u and y else ""
            row += [_f(_get(s, t, "ratio_vs_direct")), _f(us, 1) + split]
        if "proxy" in relays and "nginx" in relays:
            row += [_f(_get(s, "proxy", "cpu_ratio_vs_nginx")), _f(_get(s, "proxy", "process_ratio_vs_nginx"))]
        row.append(_f(_get(s, "direct", "fake_us_per_event"), 1))
        row.append(" ".join(f"{t[0]}:{_sum(lv, t, 'failed')}/{_sum(lv, t, 'short')}" for t in ("direct", *relays)))
        rows1.append(row)
    if not latency:
        return _table(h1, rows1) + "\n(burst: latencies measure queueing, not relay cost; see the JSON)"
    h2 = ["c", "direct TTFT p50/p99 ms", "direct delay p50/p99 ms"]
    for t in relays:
        h2 += [f"{t} +TTFT p50", f"{t} +TTFT p99", f"{t} +delay p50", f"{t} +delay p99", f"{t} +gap p99"]
    rows2 = []
    for c, lv in sorted(levels.items()):
        s = lv["summary"]
        d = s.get("direct", {})
        row = [str(c), _pair(d.get("ttft_p50_ms"), d.get("ttft_p99_ms")), _pair(d.get("delay_p50_ms"), d.get("delay_p99_ms"))]
        for t in relays:
            keys = ("ttft_p50_ms", "ttft_p99_ms", "delay_p50_ms", "delay_p99_ms", "gap_p99_ms")
            row += [_f(_get(s, t, "added_" + k)) for k in keys]
        rows2.append(row)
    return (
        _table(h1, rows1) + "\n\nAdded latency vs direct in the same round, ms (delay = receive − send stamp "
        "of each content event; gap = time between two content events of a stream):\n" + _table(h2, rows2)
    )


def _sum(level: dict[str, Any], target: str, key: str) -> int:
    return sum(r["load"][key] for r in level["runs"] if r["target"] == target)


def _pair(a: dict[str, float] | None, b: dict[str, float] | None) -> str:
    fa = "-" if a is None else f"{a['median']:.2f}"
    fb = "-" if b is None else f"{b['median']:.2f}"
    return f"{fa} / {fb}"


def render_rss(rss: dict[str, Any]) -> str:
    rows = []
    for t, r in rss.items():
        if "error" in r:
            rows.append([t, "-", "-", "-", "-", r["error"][:80]])
            continue
        rows.append(
            [
                t,
                str(r["streams_open_upstream"]),
                f"{r['rss_before_kib']:,}",
                f"{r['rss_during_kib']:,}",
                f"{r['kib_per_stream']:.1f}",
                (f"{r['rss_after_kib']:,}; upstream still open after close: {r['upstream_left_open']}"),
            ]
        )
    return _table(["relay", "idle streams", "RSS before KiB", "RSS during KiB", "KiB/stream", "after"], rows)
