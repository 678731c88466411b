"""The proxy as systemd runs it, as real processes over real sockets: readiness and
watchdog datagrams to a fake ``$NOTIFY_SOCKET``, the drain on SIGTERM, the reload on
SIGHUP and ``ollama-vllm-proxy check``."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from proxy import check
from proxy.app import create_app, reload
from proxy.config import from_mapping
from tests.fakes.vllm import FakeVLLM, Model, Reply
from tests.integration.helpers import REPO, alive, closed_port, descendants, free_port, port_open, serve, until

STATES = ("READY=1", "RELOADING=1", "STOPPING=1", "WATCHDOG=1")


class NotifySocket:
    """systemd's end of ``Type=notify``: a datagram socket (in the abstract namespace, so
    the name's length never matters) that records the state lines it receives, in order."""

    def __init__(self) -> None:
        name = f"ollama-vllm-proxy-test/{uuid.uuid4().hex}"
        self.address = "@" + name
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind("\0" + name)
        self._sock.setblocking(False)
        self.lines: list[str] = []

    def states(self, watchdog: bool = False) -> list[str]:
        while True:
            try:
                self.lines += self._sock.recv(65536).decode().splitlines()
            except BlockingIOError:
                break
        return [s for s in self.lines if s in STATES and (watchdog or s != "WATCHDOG=1")]

    async def until(self, state: str, count: int = 1) -> None:
        await until(lambda: self.states(watchdog=True).count(state) >= count)

    def close(self) -> None:
        self._sock.close()


class Proxy:
    """``ollama-vllm-proxy serve --config PATH`` with its log in a file."""

    def __init__(self, tmp: Path, notify: NotifySocket, workers: int = 1, watchdog_usec: int = 0) -> None:
        self.config = tmp / "config.yaml"
        self.log = tmp / "proxy.log"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.notify, self.workers, self.watchdog_usec = notify, workers, watchdog_usec
        self.proc: subprocess.Popen[bytes] | None = None

    def write(self, backends: list[str], **top: Any) -> None:
        lines = ["log_format: json", "backends:", *(f"  - url: {url}" for url in backends)]
        lines += [f"{key}: {value}" for key, value in top.items()]
        self.config.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        env = {"PYTHONUNBUFFERED": "1", "NOTIFY_SOCKET": self.notify.address}
        if self.watchdog_usec:
            env["WATCHDOG_USEC"] = str(self.watchdog_usec)
        with self.log.open("wb") as out:
            self.proc = serve("--config", str(self.config), "--listen", f"127.0.0.1:{self.port}",
                              "--workers", str(self.workers), env=env, stdout=out)  # fmt: skip

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def exit_code(self) -> int:
        assert self.proc is not None
        await until(lambda: self.proc is not None and self.proc.poll() is not None, timeout=30)
        return self.proc.returncode

    def events(self, name: str) -> list[dict[str, Any]]:
        """The JSON log lines whose event is ``name``."""
        found = []
        for line in self.log.read_bytes().splitlines():
            if line.startswith(b"{"):
                record = orjson.loads(line)
                if record.get("event") == name:
                    found.append(record)
        return found

    async def tags(self) -> set[str]:
        async with aiohttp.ClientSession() as session, session.get(f"{self.base}/api/tags") as reply:
            assert reply.status == 200
            return {m["name"] for m in (await reply.json())["models"]}


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()


@pytest.fixture
def proxies(tmp_path: Path, notify: NotifySocket) -> Iterator[list[Proxy]]:
    started: list[Proxy] = []
    yield started
    for proxy in started:
        if proxy.proc is not None and proxy.proc.poll() is None:
            proxy.proc.kill()
            proxy.proc.wait()


async def _up(proxies: list[Proxy], tmp_path: Path, notify: NotifySocket, backends: list[str], workers: int = 1,
              watchdog_usec: int = 0, **top: Any) -> Proxy:  # fmt: skip
    proxy = Proxy(tmp_path, notify, workers, watchdog_usec)
    proxy.write(backends, **top)
    proxies.append(proxy)
    proxy.start()
    await notify.until("READY=1")
    return proxy


class Stream:
    """A streamed /api/chat read line by line."""

    def __init__(self, proxy: Proxy, model: str = "tiny") -> None:
        self._url = f"{proxy.base}/api/chat"
        self._body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        self._session = aiohttp.ClientSession()
        self.lines: list[dict[str, Any]] = []

    async def __aenter__(self) -> Stream:
        self._reply = await self._session.post(self._url, json=self._body)
        assert self._reply.status == 200
        self.lines.append(orjson.loads(await self._reply.content.readline()))  # the stream has begun
        return self

    async def rest(self) -> list[dict[str, Any]]:
        async for line in self._reply.content:
            self.lines.append(orjson.loads(line))
        return self.lines

    async def __aexit__(self, *_: object) -> None:
        self._reply.release()
        await self._session.close()


def _slow(fake: FakeVLLM, tokens: int, delay_s: float) -> str:
    fake.reply = Reply(tokens=[f"t{i} " for i in range(tokens)])
    fake.token_delay = delay_s
    return "".join(fake.reply.tokens)


@pytest.mark.parametrize("workers", [1, 2], ids=["one-worker", "two-workers"])
async def test_notify_ready_watchdog_reloading_stopping_in_order(
    fake: FakeVLLM, tmp_path: Path, notify: NotifySocket, proxies: list[Proxy], workers: int
) -> None:
    proxy = await _up(proxies, tmp_path, notify, [fake.url], workers=workers, watchdog_usec=200_000)
    # READY=1 only once it listens and the first discovery has listed the backend's models.
    assert port_open(proxy.port)
    assert "tiny:latest" in await proxy.tags()
    await notify.until("WATCHDOG=1", 3)  # every half WatchdogSec= (0.1 s here)
    proxy.signal(signal.SIGHUP)
    await notify.until("READY=1", 2)
    proxy.signal(signal.SIGTERM)
    assert await proxy.exit_code() == 0
    assert notify.states() == ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"]
    assert any(line.startswith("STATUS=") for line in notify.lines)


async def test_a_stuck_worker_stops_the_services_watchdog_pings(
    fake: FakeVLLM, tmp_path: Path, notify: NotifySocket, proxies: list[Proxy]
) -> None:
    proxy = await _up(proxies, tmp_path, notify, [fake.url], workers=2, watchdog_usec=200_000)
    await notify.until("WATCHDOG=1", 2)
    assert proxy.proc is not None
    stuck = min(alive(descendants(proxy.proc.pid)))
    os.kill(stuck, signal.SIGSTOP)  # its event loop stops, as a stuck one would
    try:
        await asyncio.sleep(0.3)  # a ping already under way may still arrive
        pings = notify.states(watchdog=True).count("WATCHDOG=1")
        await asyncio.sleep(0.5)  # five parent intervals: systemd would now see silence
        assert notify.states(watchdog=True).count("WATCHDOG=1") == pings
    finally:
        os.kill(stuck, signal.SIGCONT)
    await notify.until("WATCHDOG=1", pings + 2)  # it runs again: so do the pings


@pytest.mark.parametrize("workers", [1, 2], ids=["one-worker", "two-workers"])
async def test_sigterm_lets_a_stream_in_flight_finish_and_refuses_new_connections(
    fake: FakeVLLM, tmp_path: Path, notify: NotifySocket, proxies: list[Proxy], workers: int
) -> None:
    # 2.5 s of stream: longer than aiohttp's own last wait for handlers (2 x SHUTDOWN_TIMEOUT_S),
    # so only the drain lets it finish.
    text = _slow(fake, tokens=50, delay_s=0.05)
    proxy = await _up(proxies, tmp_path, notify, [fake.url], workers=workers, drain_timeout=30)
    async with Stream(proxy) as stream:
        proxy.signal(signal.SIGTERM)
        await until(lambda: not port_open(proxy.port))  # the listener closes at once
        assert fake.active == 1  # while the stream still runs
        lines = await stream.rest()
    assert "".join(line["message"]["content"] for line in lines) == text
    assert lines[-1]["done"] is True and "error" not in lines[-1]
    assert await proxy.exit_code() == 0


async def test_past_drain_timeout_a_stream_ends_with_one_error_line_and_exit_0(
    fake: FakeVLLM, tmp_path: Path, notify: NotifySocket, proxies: list[Proxy]
) -> None:
    _slow(fake, tokens=400, delay_s=0.02)  # 8 s of stream, far past the drain
    proxy = await _up(proxies, tmp_path, notify, [fake.url], drain_timeout=0.3)
    async with Stream(proxy) as stream:
        proxy.signal(signal.SIGTERM)
        lines = await stream.rest()
    assert lines[-1] == {"error": "server shutting down"}
    assert all("error" not in line for line in lines[:-1]) and not any(line.get("done") for line in lines)
    assert await proxy.exit_code() == 0
    await until(lambda: fake.active == 0)  # the upstream stream was closed too


@pytest.mark.parametrize("workers", [1, 2], ids=["one-worker", "two-workers"])
async def test_sighup_reload_keeps_the_stream_in_flight_and_serves_the_new_backend(
    fake: FakeVLLM, tmp_path: Path, notify: NotifySocket, proxies: list[Proxy], workers: int
) -> None:
    other = FakeVLLM({"other": Model()})
    await other.start()
    try:
        text = _slow(fake, tokens=60, delay_s=0.03)  # 1.8 s: longer than the reload takes
        proxy = await _up(proxies, tmp_path, notify, [fake.url], workers=workers)
        assert "other:latest" not in await proxy.tags()
        async with Stream(proxy) as stream:
            proxy.write([fake.url, other.url])
            proxy.signal(signal.SIGHUP)
            await notify.until("READY=1", 2)
            assert {"tiny:latest", "other:latest"} <= await proxy.tags()
            assert fake.active == 1  # the stream was in flight across the reload
            lines = await stream.rest()
        assert "".join(line["message"]["content"] for line in lines) == text
        assert lines[-1]["done"] is True and "error" not in lines[-1]
        reloaded = proxy.events("configuration reloaded")
        assert len(reloaded) == workers and all(r["backends"] == 2 for r in reloaded)  # each worker once
        async with Stream(proxy, "other") as chat:  # the new backend, over the new generation's pool
            assert (await chat.rest())[-1]["done"] is True
    finally:
        await other.stop()


@pytest.mark.parametrize("workers", [1, 2], ids=["one-worker", "two-workers"])
async def test_sighup_applies_new_api_keys_to_the_next_request_and_keeps_them_out_of_the_log(
    fake: FakeVLLM, tmp_path: Path, notify: NotifySocket, proxies: list[Proxy], workers: int
) -> None:
    proxy = await _up(proxies, tmp_path, notify, [fake.url], workers=workers)
    assert "tiny:latest" in await proxy.tags()  # no keys: open
    proxy.write([fake.url], api_keys='[{name: alice, key: "reloaded-key-1234"}]')
    proxy.signal(signal.SIGHUP)
    await notify.until("READY=1", 2)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{proxy.base}/api/tags") as reply:
            assert reply.status == 401
        headers = {"Authorization": "Bearer reloaded-key-1234"}
        async with session.get(f"{proxy.base}/api/tags", headers=headers) as reply:
            assert reply.status == 200
        # A client that pastes the key into a path: the request's log line has the path.
        for _ in range(2 * workers):  # with two workers, each one's scrubber
            async with session.get(f"{proxy.base}/reloaded-key-1234", headers=headers) as reply:
                assert reply.status == 404
    await until(lambda: len([r for r in proxy.events("request") if r.get("status") == 404]) >= 2 * workers)
    assert "reloaded-key-1234" not in proxy.log.read_text()
    assert {r["path"] for r in proxy.events("request") if r.get("status") == 404} == {"/***"}


@pytest.mark.parametrize(
    ("bad", "workers"),
    [
        pytest.param("backends:\n  - url: http://127.0.0.1:1\nbogus_key: 1\n", 1, id="unknown-key"),
        pytest.param("backends: [\n", 1, id="not-yaml"),
        pytest.param("drain_timeout: -1\nbackends:\n  - url: http://127.0.0.1:1\n", 1, id="bad-value"),
        pytest.param("backends:\n  - url: http://127.0.0.1:1\nbogus_key: 1\n", 2, id="two-workers"),
    ],
)
async def test_a_bad_config_on_reload_is_refused_with_one_log_line_and_the_old_one_kept(
    fake: FakeVLLM, tmp_path: Path, notify: NotifySocket, proxies: list[Proxy], bad: str, workers: int
) -> None:
    proxy = await _up(proxies, tmp_path, notify, [fake.url], workers=workers)
    before = await proxy.tags()
    proxy.config.write_text(bad)
    proxy.signal(signal.SIGHUP)
    await notify.until("READY=1", 2)
    # One line, from the process that read the file (with --workers N the parent, which then
    # leaves the workers alone).
    [line] = [ln for ln in proxy.log.read_text().splitlines() if "reload failed" in ln]
    assert "keeping the running configuration" in line and proxy.config.name in line
    assert not proxy.events("configuration reloaded")
    assert await proxy.tags() == before
    async with Stream(proxy) as stream:
        assert (await stream.rest())[-1]["done"] is True
    assert "STATUS=reload failed" in " ".join(notify.lines)


async def _check(config: Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "check", "--config", str(config), cwd=REPO,
        env={**os.environ, "OLLAMA_HOST": ""}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def unreachable() -> AsyncIterator[str]:
    yield f"http://127.0.0.1:{closed_port()}"


@pytest.mark.parametrize(
    ("case", "code", "out_has", "err_has"),
    [
        pytest.param("good", 0, ["tiny:latest", "minilm:latest", ": ok, 3 models"], [], id="good"),
        pytest.param("bad", 2, [], ["configuration error", "bogus_key"], id="bad-config"),
        pytest.param("unreachable", 1, ["UNREACHABLE"], ["check failed", "is unreachable"], id="unreachable-backend"),
    ],
)
async def test_check_validates_reaches_every_backend_and_lists_the_models(
    fake: FakeVLLM, tmp_path: Path, unreachable: str, case: str, code: int, out_has: list[str], err_has: list[str]
) -> None:
    config = tmp_path / "config.yaml"
    backends = {"good": [fake.url], "bad": [fake.url], "unreachable": [fake.url, unreachable]}[case]
    text = "backends:\n" + "".join(f"  - url: {url}\n" for url in backends)
    config.write_text(text + ("bogus_key: 1\n" if case == "bad" else "") + "timeouts:\n  discovery: 2\n")
    returncode, out, err = await _check(config)
    assert returncode == code, (out, err)
    for piece in out_has:
        assert piece in out
    for piece in err_has:
        assert piece in err


async def test_check_in_process_names_every_replica_and_the_down_backend(fake: FakeVLLM, unreachable: str) -> None:
    config = from_mapping({"backends": [{"url": fake.url, "name": "up"}, {"url": unreachable, "name": "down"}],
                           "timeouts": {"discovery": 2}})  # fmt: skip
    out = StringIO()
    assert await check.report(config, out) == 1
    text = out.getvalue()
    assert "backend up " in text and ": ok, 3 models" in text
    assert "backend down " in text and "UNREACHABLE" in text
    assert "tiny:latest  on up as 'tiny'" in text


async def test_a_reload_neither_probes_known_models_again_nor_changes_their_modified_at(
    aiohttp_client: Any, fake: FakeVLLM, make_config: Any
) -> None:
    app = create_app(make_config())
    client = await aiohttp_client(app)
    before = (await (await client.get("/api/tags")).json())["models"]
    probes = len(fake.requests)
    await reload(app, make_config(keep_alive="10m"))  # the same backend, something else changed
    assert len(fake.requests) == probes  # only the listing: no capability probe sent again
    after = (await (await client.get("/api/tags")).json())["models"]
    assert after == before
    reply = await client.post("/api/show", json={"model": "llava"})
    assert "vision" in (await reply.json())["capabilities"]  # what the probes learned is kept
