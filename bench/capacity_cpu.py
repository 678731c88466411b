"""Capacity report (bench/capacity.py): CPU accounting per phase (Linux /proc; optional)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any


def box_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    tck = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user
    return (total - idle) / tck, total / tck


class CpuMeter:
    """CPU seconds used during a phase by each watched process tree (``--cpu-pid LABEL=PID``, via
    bench/procstat.py), by this client, and by the whole box; ``other`` = box − watched − client,
    i.e. load from outside the measurement (a noisy neighbour). ``wait:LABEL`` is the time that
    tree's threads were runnable but waiting for a CPU (schedstat): a starved process."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._tree_cpu: Callable[[int], Any] | None = None
        self._descendants: Callable[[int], list[int]] | None = None
        if pids:
            try:
                from bench.procstat import descendants, tree_cpu  # noqa: PLC0415
            except ImportError:  # run as `python bench/capacity.py`: bench/ is sys.path[0]
                from procstat import descendants, tree_cpu  # type: ignore[no-redef,import-not-found]  # noqa: PLC0415
            self._tree_cpu = tree_cpu
            self._descendants = descendants

    def _runq_wait_s(self, root: int) -> float:
        total = 0
        for pid in self._descendants(root) if self._descendants else ():
            try:
                for task in os.scandir(f"/proc/{pid}/task"):
                    with open(os.path.join(task.path, "schedstat")) as f:
                        total += int(f.read().split()[1])
            except (OSError, ValueError, IndexError):
                pass
        return total / 1e9

    def sample(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self._tree_cpu is not None:
            for label, pid in self.pids.items():
                out[label] = self._tree_cpu(pid).run_ns / 1e9
                out[f"wait:{label}"] = self._runq_wait_s(pid)
        t = os.times()
        out["client"] = t.user + t.system
        out["box_busy"], out["box_total"] = box_cpu_s()
        return out

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        d = {k: after[k] - before[k] for k in before}
        watched = sum(v for k, v in d.items() if k not in ("box_busy", "box_total") and not k.startswith("wait:"))
        d["other"] = max(0.0, d["box_busy"] - watched)
        return d
