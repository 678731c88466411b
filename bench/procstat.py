"""CPU and memory of a process tree from /proc (Linux only).

CPU is summed over the process and its live descendants, because a relay may run worker processes
(nginx master + worker, a pre-forking proxy). Total CPU comes from /proc/<pid>/task/*/schedstat
(nanoseconds); the user/sys split from /proc/<pid>/stat (clock ticks, coarse).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def descendants(root: int) -> list[int]:
    """`root` and every live descendant."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


@dataclass(frozen=True)
class CpuSample:
    run_ns: int  # on-CPU time, all threads of all processes
    user_s: float
    sys_s: float

    def __sub__(self, other: CpuSample) -> CpuSample:
        return CpuSample(self.run_ns - other.run_ns, self.user_s - other.user_s, self.sys_s - other.sys_s)


def _proc_cpu(pid: int) -> CpuSample:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        user, sys_ = int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK
        run_ns = 0
        for t in os.scandir(f"/proc/{pid}/task"):
            try:
                run_ns += int(Path(t.path, "schedstat").read_text().split()[0])
            except (OSError, ValueError):
                pass
        if run_ns == 0:  # kernel without schedstat
            run_ns = int((user + sys_) * 1e9)
        return CpuSample(run_ns, user, sys_)
    except (OSError, ValueError):
        return CpuSample(0, 0.0, 0.0)


def tree_cpu(root: int) -> CpuSample:
    total = CpuSample(0, 0.0, 0.0)
    for pid in descendants(root):
        s = _proc_cpu(pid)
        total = CpuSample(total.run_ns + s.run_ns, total.user_s + s.user_s, total.sys_s + s.sys_s)
    return total


def tree_rss_kib(root: int) -> int:
    """Sum of VmRSS over the tree (shared pages of forked workers count once per process)."""
    total = 0
    for pid in descendants(root):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            pass
    return total
