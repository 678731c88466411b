"""bench/report.py: per-round pairing of the proxy's CPU with nginx's, with and without IRQ time."""

from __future__ import annotations

from typing import Any

import pytest

from bench.report import summarize_level


def run(target: str, rnd: int, process_us: float = 0.0, irq_us: float = 0.0, events: int = 1000) -> dict[str, Any]:
    load = {k: 1.0 for k in ("ttft_p50_ms", "ttft_p99_ms", "delay_p50_ms", "delay_p99_ms", "gap_p50_ms", "gap_p99_ms")}
    load.update(events=events, events_per_s=100.0, failed=0, short=0)
    r: dict[str, Any] = {"target": target, "round": rnd, "load": load, "fake_cpu_ns": 0}
    if target != "direct":
        process, irq = int(process_us * 1000 * events), int(irq_us * 1000 * events)
        r.update(cpu_ns=process + irq, process_ns=process, irq_ns=irq, user_ns=process, sys_ns=0, cpu_util=0.5)
    return r


@pytest.mark.parametrize(
    ("rounds", "all_cpu", "process_only"),
    [
        pytest.param([(20, 5, 10, 5)], 25 / 15, 2.0, id="irq-alike-dilutes-the-all-cpu-ratio"),
        pytest.param([(20, 0, 10, 0)], 2.0, 2.0, id="no-irq-both-ratios-agree"),
        pytest.param([(20, 5, 10, 5), (30, 5, 10, 5), (22, 5, 10, 5)], 27 / 15, 2.2, id="median-of-per-round-ratios"),
    ],
)
def test_proxy_cpu_is_paired_with_nginx_per_round(
    rounds: list[tuple[float, float, float, float]], all_cpu: float, process_only: float
) -> None:
    runs = []
    for i, (pp, pi, np_, ni) in enumerate(rounds):
        runs += [run("direct", i), run("proxy", i, pp, pi), run("nginx", i, np_, ni)]
    proxy = summarize_level(runs)["proxy"]
    assert proxy["cpu_ratio_vs_nginx"]["median"] == pytest.approx(all_cpu)
    assert proxy["process_ratio_vs_nginx"]["median"] == pytest.approx(process_only)
    assert proxy["irq_us_per_event"]["median"] == pytest.approx(rounds[0][1])
