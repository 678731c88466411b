"""The process between the proxy and one vLLM server, so no vLLM process outlives the proxy.

``python -m proxy.managed.shim --watch-fd N --grace S -- ARGV...`` runs ARGV in the shim's
own process group (the launcher starts the shim in a new session). vLLM's API server
starts engine-core and worker processes of its own, which survive a SIGKILL of the server
and would not see a parent-death signal meant for it; the shim therefore stops the whole
group when any of these happens:

- the proxy dies, even by SIGKILL: the read end ``N`` of a pipe whose write end only the
  proxy holds reaches end-of-file (and, on Linux, the shim's own parent-death signal);
- the shim gets SIGTERM or SIGINT (the launcher's ``stop``);
- vLLM exits by itself (its leftover children are stopped too).

Stopping is SIGTERM to the group, then SIGKILL after ``--grace`` seconds. The shim exits
with vLLM's exit code. Standard library only: it must start fast and run under any Python.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import select
import signal
import subprocess
import sys
import time
from types import FrameType
from typing import NamedTuple

PR_SET_PDEATHSIG = 1  # linux/prctl.h
POLL_S = 0.1


class Process(NamedTuple):
    pid: int
    ppid: int
    pgid: int
    argv: list[bytes]  # empty unless asked for


def live_processes(argv: bool = False) -> list[Process]:
    """Every live (non-zombie) process, read from /proc; with ``argv``, command lines too."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()  # after the command name, which may hold ")"
            if argv:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    args = fh.read().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        if fields[0] != "Z":
            found.append(Process(int(entry), int(fields[1]), int(fields[2]), args if argv else []))
    return found


def group_members(pgid: int, exclude: int = 0) -> list[int]:
    """Live processes of process group ``pgid``."""
    return [p.pid for p in live_processes() if p.pgid == pgid and p.pid != exclude]


def set_parent_death_signal(sig: int) -> None:
    """Linux only: deliver ``sig`` to this process when its parent exits."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="proxy.managed.shim")
    parser.add_argument("--watch-fd", type=int, required=True)
    parser.add_argument("--grace", type=float, default=10.0)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    stop_requested = False

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    set_parent_death_signal(signal.SIGTERM)  # the pipe below covers a proxy that died before this
    try:
        child = subprocess.Popen(command)
    except OSError as exc:
        print(f"cannot start {command[0]}: {exc.strerror}", flush=True)
        return 127
    watch_open = True
    while child.poll() is None and not stop_requested:
        if watch_open:
            readable, _, _ = select.select([args.watch_fd], [], [], POLL_S)
            if readable and not os.read(args.watch_fd, 1024):
                watch_open = False
                stop_requested = True  # end-of-file: the proxy is gone
        else:
            time.sleep(POLL_S)
    code = child.poll()
    _stop_group(args.grace, child)
    if code is None:
        code = child.wait()
    return code if code >= 0 else 128 - code


def _stop_group(grace: float, child: subprocess.Popen[bytes]) -> None:
    pgid, me = os.getpgrp(), os.getpid()
    if not group_members(pgid, exclude=me):
        return
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the group signal reaches the shim too
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        child.poll()  # reap vLLM itself so it does not linger as a zombie
        if not group_members(pgid, exclude=me):
            return
        time.sleep(POLL_S)
    for pid in group_members(pgid, exclude=me):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    child.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
