"""CPU and memory of a process tree (Linux only).

Three sources, strictest first:

* ``CpuGroup``: a cgroup of its own per relay (cgroup v1 ``cpuacct`` or v2 ``cpu.stat``),
  joined by the relay before it execs (``preexec``), so every thread and process it ever
  runs is counted, the ones that already exited included. Nanoseconds.
* ``tree_cpu``: ``/proc/<pid>/stat`` utime+stime of the live tree, plus the root's
  cutime+cstime (reaped children); a process's own figures include its exited threads.
  Clock ticks. Used when no cgroup can be made (no permission, no cgroupfs).
* ``cpu_irq``: interrupt work on the relay's CPUs, which the kernel charges to no process when
  it accounts IRQ time separately (``CONFIG_IRQ_TIME_ACCOUNTING``): the ``irq`` and
  ``softirq`` columns of those CPUs in ``/proc/stat`` plus the ``ksoftirqd/N`` threads. On
  loopback most of it is the network stack delivering what the relay sent, so bench/run.py
  charges all of it to the relay pinned there (an upper bound: a neighbour's interrupts on
  that CPU count too, for every relay alike).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
TICK_NS = 1_000_000_000 // CLK_TCK


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


def _stat_fields(pid: int) -> list[str]:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()


def _proc_cpu(pid: int, reaped: bool) -> tuple[int, int]:
    """(user, sys) clock ticks of one process, its exited threads included; with ``reaped``
    also its waited-for children's."""
    try:
        f = _stat_fields(pid)
        user, sys_ = int(f[11]), int(f[12])
        if reaped:
            user, sys_ = user + int(f[13]), sys_ + int(f[14])
        return user, sys_
    except (OSError, ValueError, IndexError):
        return 0, 0


def tree_cpu(root: int) -> CpuSample:
    user = sys_ = 0
    for pid in descendants(root):
        u, s = _proc_cpu(pid, reaped=pid == root)
        user, sys_ = user + u, sys_ + s
    return CpuSample((user + sys_) * TICK_NS, user / CLK_TCK, sys_ / CLK_TCK)


def live_tasks_ns(root: int) -> int:
    """On-CPU ns of the threads alive now (``/proc/<pid>/task/*/schedstat``): what this module
    used to report, which misses every thread and process that exited in between; kept to
    show the difference (bench/run.py records both)."""
    total = 0
    for pid in descendants(root):
        try:
            for t in os.scandir(f"/proc/{pid}/task"):
                try:
                    total += int(Path(t.path, "schedstat").read_text().split()[0])
                except (OSError, ValueError, IndexError):
                    pass
        except OSError:
            pass
    return total


def _cgroup_roots() -> list[tuple[str, Path]]:
    roots = [("v1", Path("/sys/fs/cgroup/cpuacct"))]
    for p in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
        if (p / "cgroup.controllers").exists():
            roots.append(("v2", p))
    return [(v, p) for v, p in roots if (p / "cgroup.procs").exists()]


class CpuGroup:
    """A cgroup for one relay: ``make`` it, pass ``preexec`` to ``Popen(preexec_fn=...)``,
    ``sample()`` it, ``remove()`` it once the relay is gone."""

    def __init__(self, version: str, path: Path) -> None:
        self.version, self.path = version, path

    @classmethod
    def make(cls, name: str) -> CpuGroup | None:
        for version, root in _cgroup_roots():
            path = root / f"{name}-{os.getpid()}"
            try:
                path.mkdir(exist_ok=True)
                group = cls(version, path)
                group.sample()
                return group
            except OSError:
                try:
                    path.rmdir()
                except OSError:
                    pass
        return None

    def preexec(self) -> None:
        """In the child, before exec: move itself into the group (children inherit it)."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def sample(self) -> CpuSample:
        if self.version == "v1":
            total = int((self.path / "cpuacct.usage").read_text())
            try:
                user = int((self.path / "cpuacct.usage_user").read_text())
                sys_ = int((self.path / "cpuacct.usage_sys").read_text())
            except OSError:  # older kernels: only the tick-based split
                ticks = dict(line.split() for line in (self.path / "cpuacct.stat").read_text().splitlines())
                user, sys_ = int(ticks["user"]) * TICK_NS, int(ticks["system"]) * TICK_NS
            return CpuSample(total, user / 1e9, sys_ / 1e9)
        stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines())
        return CpuSample(int(stat["usage_usec"]) * 1000, int(stat["user_usec"]) / 1e6, int(stat["system_usec"]) / 1e6)

    def remove(self) -> None:
        parent = self.path.parent / "cgroup.procs"
        try:
            for pid in (self.path / "cgroup.procs").read_text().split():
                parent.write_text(pid)  # a straggler must not keep the group alive
            self.path.rmdir()
        except OSError:
            pass


def cpu_irq_ns(cpus: set[int]) -> int:
    """Interrupt time (hard + soft IRQ columns of /proc/stat) plus ``ksoftirqd/N`` run time on ``cpus``."""
    total = 0
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            head, _, rest = line.partition(" ")
            if head.startswith("cpu") and head[3:].isdigit() and int(head[3:]) in cpus:
                f = rest.split()
                total += (int(f[5]) + int(f[6])) * TICK_NS  # irq, softirq
    except (OSError, ValueError, IndexError):
        return 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            comm = Path(entry.path, "comm").read_text().strip()
            if comm.startswith("ksoftirqd/") and int(comm.split("/", 1)[1]) in cpus:
                total += int(Path(entry.path, "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
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
