"""Several worker processes on one port (SO_REUSEPORT): the kernel spreads connections
over them, so streaming CPU scales past one Python process.

Each worker is a complete proxy with its own event loop, connection pool and model
discovery. The parent supervises them:

* A worker never outlives the parent. On Linux it asks the kernel for SIGTERM when the
  parent dies (``prctl(PR_SET_PDEATHSIG)``); everywhere, it also watches its stdin, a pipe
  only the parent holds open, and stops itself on EOF. SIGTERM is a graceful stop: the
  port is closed at once, requests in flight get up to 30 s to finish.
* A worker that exits while the parent is not stopping is restarted after a backoff
  (0.5 s, doubling per consecutive early exit, at most 10 s). A worker that exits within
  10 s of its start five times in a row is a crash loop, and a worker that cannot listen
  (exit 78) would fail the same way again: then the parent stops the others and exits 1,
  leaving the next move to the service manager (systemd ``Restart=``).
* SIGTERM/SIGINT stop the workers and the parent exits 0. SIGHUP is logged and ignored,
  by parent and workers alike (reloading is not supported yet).

The parent also keeps the one fair-turn state on a thread (proxy/admission_remote.py),
so each backend's limit and the round-robin between users hold across the workers.

Workers are plain ``python -c`` child processes, not ``multiprocessing`` ones: they share
no semaphores or memory, so there is no resource-tracker process to orphan. The
configuration (with its secrets) travels over the stdin pipe, never on a command line.

Metrics (proxy/metrics.py) are summed across the workers by prometheus-client's
multiprocess mode: before anything imports prometheus-client (this module imports the
server only inside functions) the parent makes a private ``PROMETHEUS_MULTIPROC_DIR``,
which the workers inherit; it marks each exited worker dead there (its live gauges go)
and removes the directory when it exits.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import FrameType
from typing import IO, TYPE_CHECKING

from proxy import admission_remote
from proxy.config import Config
from proxy.managed import library

if TYPE_CHECKING:
    from proxy.managed.control import Owner

STABLE_SECONDS = 10.0  # a worker that ran this long was not crashing at start
MAX_EARLY_EXITS = 5  # consecutive early exits of one worker before the parent gives up
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 10.0
STOP_GRACE_SECONDS = 40.0  # SIGTERM → exit; beyond aiohttp's 30 s drain, SIGKILL
_BOOT = "import pickle, sys; sys.path[:0] = pickle.load(sys.stdin.buffer); from proxy.workers import child; child()"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
EXIT_CANNOT_LISTEN = 78  # EX_CONFIG (sysexits.h): a worker's bind failed; restarting will not help


def run(config: Config) -> int:
    count = config.worker_count()
    if count == 1:
        from proxy.server import serve  # noqa: PLC0415 - see the module docstring (metrics)

        return serve(config, reuse_port=False)
    metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="ollama-vllm-proxy-metrics-")
    turns = admission_remote.Owner()  # one fair-turn state for every worker
    turns.start()
    config = replace(config, admission_socket=turns.path)
    try:
        owner = _managed_owner(config)
        if owner is None:
            return Supervisor(config, count).run()
        try:
            return Supervisor(replace(config, managed_socket=owner.path), count).run()
        finally:
            owner.stop()  # the workers are gone: stop every vLLM child
    finally:
        turns.stop()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _managed_owner(config: Config) -> Owner | None:
    """With managed models, the parent owns them (proxy/managed/control.py) and the
    workers ask it over a Unix socket, so a model starts once whatever worker asks."""
    if not library.managed(config):
        return None
    from proxy import logs  # noqa: PLC0415
    from proxy.managed import service  # noqa: PLC0415
    from proxy.managed.control import Owner  # noqa: PLC0415 - imports the metrics: after their directory is set

    logs.configure(config.log_level, config.log_format, config.secrets())
    owner = Owner(lambda: service.scheduler(config))
    owner.start()
    return owner


@dataclass
class _Slot:
    name: str
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    early_exits: int = 0
    restart_at: float | None = None


class Supervisor:
    def __init__(self, config: Config, count: int) -> None:
        self._config = config
        self._slots = [_Slot(f"worker-{i}") for i in range(count)]
        self._stopping = False

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGHUP, _sighup)
        code = 0
        for slot in self._slots:
            self._start(slot)
        while not self._stopping:
            now = time.monotonic()
            if not all(self._tend(slot, now) for slot in self._slots):
                code, self._stopping = 1, True
            time.sleep(0.1)
        self._stop_all()
        return code

    def _tend(self, slot: _Slot, now: float) -> bool:
        """Notice an exit, or start a restart that is due; False if the parent gives up."""
        if self._stopping:
            return True
        if slot.proc is not None and slot.proc.poll() is not None:
            return self._exited(slot, now)
        if slot.restart_at is not None and now >= slot.restart_at:
            self._start(slot)
        return True

    def _stop(self, _: int, __: FrameType | None) -> None:
        self._stopping = True

    def _start(self, slot: _Slot) -> None:
        # Started with SIGHUP blocked (the mask survives exec), so a SIGHUP during its
        # start-up waits for the worker's handler instead of killing it.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            proc = subprocess.Popen([sys.executable, "-c", _BOOT], stdin=subprocess.PIPE, close_fds=True)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        assert proc.stdin is not None
        try:
            proc.stdin.write(pickle.dumps(sys.path) + pickle.dumps((os.getpid(), self._config)))
            proc.stdin.flush()  # and left open: the worker stops when it reads EOF
        except BrokenPipeError:
            pass  # it died at once: the main loop sees the exit
        slot.proc, slot.started, slot.restart_at = proc, time.monotonic(), None

    def _exited(self, slot: _Slot, now: float) -> bool:
        """Schedule the restart of a worker that exited; False if the parent should give up."""
        assert slot.proc is not None
        pid, code = slot.proc.pid, slot.proc.returncode
        _close(slot.proc.stdin)
        slot.proc = None
        _mark_dead(pid)
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"code {code}"
        if code == EXIT_CANNOT_LISTEN:
            _say(f"{slot.name} (pid {pid}) cannot listen on {self._config.listen}; stopping")
            return False
        slot.early_exits = slot.early_exits + 1 if now - slot.started < STABLE_SECONDS else 1
        if slot.early_exits >= MAX_EARLY_EXITS:
            _say(f"{slot.name} (pid {pid}) exited with {how}, {slot.early_exits} times in a row within "
                 f"{STABLE_SECONDS:g} s of its start; stopping")  # fmt: skip
            return False
        delay = min(BACKOFF_FIRST * 2 ** (slot.early_exits - 1), BACKOFF_MAX)
        _say(f"{slot.name} (pid {pid}) exited with {how}; restarting it in {delay:g} s")
        slot.restart_at = now + delay
        return True

    def _stop_all(self) -> None:
        procs = [s.proc for s in self._slots if s.proc is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            _close(proc.stdin)


def _mark_dead(pid: int) -> None:
    """Drop an exited worker's live gauges (in flight, queued, backend up) from the sums;
    its counters and histograms stay counted."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        from prometheus_client import multiprocess  # noqa: PLC0415 - after the directory is set

        multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]  # untyped in prometheus-client


def child() -> None:
    """A worker's entry point (run by ``_BOOT``): read the configuration, tie the process's
    life to the parent's, serve."""
    signal.signal(signal.SIGHUP, _sighup)  # until serve's event loop takes SIGHUP over
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    parent, config = pickle.load(sys.stdin.buffer)
    armed = _parent_death_signal()
    if os.getppid() != parent:  # the parent died before the signal was armed
        sys.exit(0)
    threading.Thread(target=watch_eof, args=(sys.stdin.fileno(), None if armed else _terminate_self), daemon=True).start()
    from proxy.server import serve  # noqa: PLC0415 - see the module docstring (metrics)

    sys.exit(EXIT_CANNOT_LISTEN if serve(config, reuse_port=True) else 0)  # serve fails only to listen


def _parent_death_signal() -> bool:
    """SIGTERM when the parent dies (Linux). The kernel sends it when the *thread* that
    forked exits: the parent forks from its main thread only, which lives as long as it."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def watch_eof(fd: int, on_eof: Callable[[], None] | None) -> None:
    """Block until ``fd`` (the parent's pipe) ends, then call ``on_eof``. With the
    parent-death signal armed it has already arrived, so ``on_eof`` is None: a second
    SIGTERM would cut the graceful drain short. Reads the raw fd: a daemon thread blocked
    in a buffered reader would abort the interpreter's exit."""
    while os.read(fd, 65536):
        pass
    if on_eof is not None:
        on_eof()


def _terminate_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def _sighup(_: int, __: FrameType | None) -> None:
    _say("SIGHUP: reload is not supported yet; ignoring (stop and start the service to apply a new configuration)")


def _say(text: str) -> None:
    print(f"ollama-vllm-proxy: {text}", file=sys.stderr, flush=True)


def _close(stream: IO[bytes] | None) -> None:
    if stream is not None:
        stream.close()
