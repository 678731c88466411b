"""Several worker processes on one port (SO_REUSEPORT): the kernel spreads connections
over them, so streaming CPU scales past one Python process.

Each worker is a complete proxy with its own event loop, connection pool and model
discovery. The parent supervises them:

* A worker never outlives the parent. On Linux it asks the kernel for SIGTERM when the
  parent dies (``prctl(PR_SET_PDEATHSIG)``); everywhere, it also watches its stdin, a pipe
  only the parent holds open, and stops itself on EOF. SIGTERM is a graceful stop: the
  port is closed at once, requests in flight get up to ``drain_timeout`` (30 s) to finish.
* A worker that exits while the parent is not stopping is restarted after a backoff
  (0.5 s, doubling per consecutive early exit, at most 10 s). A worker that exits within
  10 s of its start five times in a row is a crash loop, and a worker that cannot listen
  (exit 78) would fail the same way again: then the parent stops the others and exits 1,
  leaving the next move to the service manager (systemd ``Restart=``).
* SIGTERM/SIGINT stop the workers and the parent exits 0. SIGHUP reloads: the parent makes
  the configuration again (proxy/reconfig.py); a bad one is refused with one line and
  nothing else happens, a good one becomes the one new workers get and SIGHUP goes on to
  every worker, which reloads its own (proxy/server.py).
* Under systemd (``$NOTIFY_SOCKET``) the parent is the one process that talks to it
  (``NotifyAccess=main``). Workers notify the parent instead, over a datagram socket of
  its own (proxy/notify.py, sender known by ``SCM_CREDENTIALS``): READY=1 goes to systemd
  when every worker has sent it, after a reload when every worker has sent it again, and
  WATCHDOG=1 only while every ready worker keeps pinging, so one stuck event loop gets
  the service restarted.

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
import socket
import struct
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
from proxy.config import Config, ConfigError
from proxy.drain import CUT_GRACE_S, SHUTDOWN_TIMEOUT_S
from proxy.managed import library
from proxy.notify import Notifier
from proxy.reconfig import Recipe, merge, sighup_before_listening

if TYPE_CHECKING:
    from proxy.managed.control import Owner

STABLE_SECONDS = 10.0  # a worker that ran this long was not crashing at start
MAX_EARLY_EXITS = 5  # consecutive early exits of one worker before the parent gives up
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 10.0
STOP_MARGIN_SECONDS = 5.0  # SIGTERM → exit: a worker gets its drain and cut times plus this, then SIGKILL
_BOOT = "import pickle, sys; sys.path[:0] = pickle.load(sys.stdin.buffer); from proxy.workers import child; child()"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
EXIT_CANNOT_LISTEN = 78  # EX_CONFIG (sysexits.h): a worker's bind failed; restarting will not help


def run(config: Config, recipe: Recipe | None = None) -> int:
    count = config.worker_count()
    if count == 1:
        from proxy.server import serve  # noqa: PLC0415 - see the module docstring (metrics)

        return serve(config, reuse_port=False, recipe=recipe)
    metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="ollama-vllm-proxy-metrics-")
    turns = admission_remote.Owner()  # one fair-turn state for every worker
    turns.start()
    config = replace(config, admission_socket=turns.path)
    try:
        owner = _managed_owner(config)
        if owner is None:
            return Supervisor(config, count, recipe).run()
        try:
            return Supervisor(replace(config, managed_socket=owner.path), count, recipe).run()
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
    ready: bool = False  # it sent READY=1 (since its start or the last reload)
    pinged: bool = False  # it sent WATCHDOG=1 since the parent's last ping


class Supervisor:
    def __init__(self, config: Config, count: int, recipe: Recipe | None = None) -> None:
        self._config = config
        self._recipe = recipe
        self._slots = [_Slot(f"worker-{i}") for i in range(count)]
        self._stopping = False
        self._hup = False
        self._notifier = Notifier.from_env(os.environ)
        self._relay: socket.socket | None = None
        self._child_env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        self._announce = "started"  # what the next all-ready READY=1 tells systemd; "" once told
        self._pinged_at = 0.0

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGHUP, self._sighup)
        if self._notifier.enabled:
            self._open_relay()
        code = 0
        for slot in self._slots:
            self._start(slot)
        while not self._stopping:
            now = time.monotonic()
            if not all(self._tend(slot, now) for slot in self._slots):
                code, self._stopping = 1, True
            self._read_relay(now)
            if self._hup:
                self._hup = False
                self._reload()
            time.sleep(0.1)
        self._notifier.stopping()
        self._stop_all()
        if self._relay is not None:
            self._relay.close()
        return code

    def _sighup(self, _: int, __: FrameType | None) -> None:
        self._hup = True

    def _reload(self) -> None:
        self._notifier.reloading()
        try:
            if self._recipe is None:
                raise ConfigError("this process was not started from a command line; nothing to reload from")
            new = self._recipe.build(os.environ)
        except ConfigError as exc:
            _say(f"reload failed: keeping the running configuration: {exc}")
            self._notifier.ready(f"reload failed: {exc}")
            return
        self._config, waiting = merge(self._config, new)
        from proxy import logs  # noqa: PLC0415 - see the module docstring (metrics); imports no prometheus-client

        logs.add_secrets(self._config.secrets())  # the managed models' log lines, written here, mask them too
        later = f" ({', '.join(waiting)} apply at the next restart)" if waiting else ""
        _say(f"reloading the configuration in every worker{later}")
        self._announce = "reloaded"
        for slot in self._slots:
            if slot.proc is not None and slot.proc.poll() is None:
                slot.ready = False
                slot.proc.send_signal(signal.SIGHUP)

    def _open_relay(self) -> None:
        """The socket the workers notify instead of systemd's (an abstract Unix name)."""
        name = f"ollama-vllm-proxy/{os.getpid()}/notify"
        relay = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        relay.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        relay.bind("\0" + name)
        relay.setblocking(False)
        self._relay = relay
        self._child_env["NOTIFY_SOCKET"] = "@" + name
        if self._notifier.watchdog_usec:  # twice as often: the parent pings once all of them did
            self._child_env["WATCHDOG_USEC"] = str(self._notifier.watchdog_usec // 2)

    def _read_relay(self, now: float) -> None:
        if self._relay is None:
            return
        by_pid = {slot.proc.pid: slot for slot in self._slots if slot.proc is not None}
        while True:
            try:
                data, ancillary, _, _ = self._relay.recvmsg(4096, socket.CMSG_SPACE(12))
            except BlockingIOError:
                break
            pids = [struct.unpack("3i", d[:12])[0] for level, kind, d in ancillary
                    if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS]  # fmt: skip
            slot = by_pid.get(pids[0]) if pids else None
            if slot is not None:
                lines = data.decode(errors="replace").splitlines()
                slot.ready = "READY=1" in lines or (slot.ready and "RELOADING=1" not in lines)
                slot.pinged = slot.pinged or "WATCHDOG=1" in lines
        running = [slot for slot in self._slots if slot.proc is not None]
        if self._announce and running and all(slot.ready for slot in running):
            self._notifier.ready(f"{self._announce}: {len(running)} workers")
            self._announce = ""
        usec = self._notifier.watchdog_usec
        ready = [slot for slot in running if slot.ready]
        if usec and now - self._pinged_at >= usec / 2e6 and all(slot.pinged for slot in ready):
            self._notifier.watchdog()
            self._pinged_at = now
            for slot in ready:
                slot.pinged = False

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
            proc = subprocess.Popen([sys.executable, "-c", _BOOT], stdin=subprocess.PIPE, close_fds=True, env=self._child_env)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        assert proc.stdin is not None
        try:
            proc.stdin.write(pickle.dumps(sys.path) + pickle.dumps((os.getpid(), self._config, self._recipe)))
            proc.stdin.flush()  # and left open: the worker stops when it reads EOF
        except BrokenPipeError:
            pass  # it died at once: the main loop sees the exit
        slot.proc, slot.started, slot.restart_at, slot.ready, slot.pinged = proc, time.monotonic(), None, False, False

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
        grace = self._config.service.drain_timeout + CUT_GRACE_S + 2 * SHUTDOWN_TIMEOUT_S + STOP_MARGIN_SECONDS
        deadline = time.monotonic() + grace
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
    parent, config, recipe = pickle.load(sys.stdin.buffer)
    armed = _parent_death_signal()
    if os.getppid() != parent:  # the parent died before the signal was armed
        sys.exit(0)
    threading.Thread(target=watch_eof, args=(sys.stdin.fileno(), None if armed else _terminate_self), daemon=True).start()
    from proxy.server import serve  # noqa: PLC0415 - see the module docstring (metrics)

    sys.exit(EXIT_CANNOT_LISTEN if serve(config, reuse_port=True, recipe=recipe) else 0)  # serve fails only to listen


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
    sighup_before_listening()  # the worker reloads as soon as it listens


def _say(text: str) -> None:
    print(f"ollama-vllm-proxy: {text}", file=sys.stderr, flush=True)


def _close(stream: IO[bytes] | None) -> None:
    if stream is not None:
        stream.close()
