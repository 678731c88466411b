"""Fair turns under a flood: user A sends 64 long streams at once, user B one short chat;
B's time to first token (TTFT) against an idle system's, with and without fair turns.

Everything runs in this process over real sockets: the fake vLLM of tests/fakes/vllm.py
with vLLM's batch limit (``max_num_seqs``: 4 streams generate at once, the rest wait in
vLLM's FCFS queue) and a prefill delay, and the proxy in front of it. A and B are told
apart by their client address (127.0.0.1 and 127.0.0.2), the fallback identity.

    .venv/bin/python bench/fairness.py [--flood 64] [--seqs 4]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy import logs  # noqa: E402
from proxy.app import create_app  # noqa: E402
from proxy.config import from_mapping  # noqa: E402
from proxy.state import ADMISSION  # noqa: E402
from tests.fakes.vllm import FakeVLLM  # noqa: E402

A_ADDR, B_ADDR = "127.0.0.1", "127.0.0.2"
MODES = {  # name → the backend's fair-turn keys
    "no fair turns": {"max_concurrency": 100_000},  # everything reaches vLLM, which queues FCFS
    "fair turns": {},  # max_concurrency = vLLM's max_num_seqs, read from /server_info
    "fair turns + max_user_concurrency": {"max_user_concurrency": -1},  # seqs - 1, filled in below
}


@dataclass(frozen=True)
class Shape:
    flood: int = 64  # A's concurrent streams
    seqs: int = 4  # vLLM's max_num_seqs
    prefill: float = 0.1  # seconds before a running request's first token
    tokens: int = 20  # tokens in each of A's streams
    token_delay: float = 0.005  # seconds between tokens


async def ttft(session: aiohttp.ClientSession, base: str, content: str, num_predict: int) -> float:
    """Seconds from sending a streamed /api/chat to its first NDJSON line (this clock)."""
    body = {"model": "tiny", "messages": [{"role": "user", "content": content}], "options": {"num_predict": num_predict}}
    began = time.monotonic()
    async with session.post(f"{base}/api/chat", json=body) as response:
        assert response.status == 200, await response.text()
        await response.content.readline()
        first = time.monotonic() - began
        await response.read()
    return first


async def scenario(turns: dict[str, Any], shape: Shape = Shape()) -> dict[str, float]:
    """Idle TTFT (median of 3), B's TTFT under A's flood, and how many of A's streams had
    ended when B's first token came."""
    fake = FakeVLLM()
    fake.max_num_seqs, fake.first_token_delay, fake.token_delay = shape.seqs, shape.prefill, shape.token_delay
    fake.reply.tokens = ["tok "] * shape.tokens
    fake.dev_mode = True  # /server_info tells the proxy max_num_seqs
    await fake.start()
    if turns.get("max_user_concurrency") == -1:
        turns = {**turns, "max_user_concurrency": shape.seqs - 1}
    config = from_mapping({"backends": [{"url": fake.url, "name": "fake", **turns}], "log_level": "warning"})
    app = create_app(config)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    a = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, local_addr=(A_ADDR, 0)))
    b = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, local_addr=(B_ADDR, 0)))
    try:
        idle = statistics.median([await ttft(b, base, f"idle {i}", 2) for i in range(3)])
        flood = [asyncio.create_task(ttft(a, base, f"flood {i}", shape.tokens)) for i in range(shape.flood)]
        for _ in range(500):  # until every one of A's streams runs or waits somewhere
            queued = sum(s.queued for s in app[ADMISSION].snapshot().values())
            if fake.active + queued >= shape.flood:
                break
            await asyncio.sleep(0.01)
        under_flood = await ttft(b, base, "short chat", 2)
        ended = sum(1 for task in flood if task.done())
        for task in flood:
            task.cancel()
        await asyncio.gather(*flood, return_exceptions=True)
    finally:
        await a.close()
        await b.close()
        await runner.cleanup()
        await fake.stop()
    return {"idle_ttft_s": idle, "flood_ttft_s": under_flood, "ratio": under_flood / idle, "a_streams_ended": ended}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flood", type=int, default=64)
    parser.add_argument("--seqs", type=int, default=4)
    args = parser.parse_args()
    logs.configure("warning", "console", ())
    shape = Shape(flood=args.flood, seqs=args.seqs)
    stream_s = shape.prefill + shape.tokens * shape.token_delay
    print(f"A: {shape.flood} streams of {shape.tokens} tokens (~{stream_s:.2f} s each); B: 1 chat of 2 tokens; "
          f"vLLM max_num_seqs {shape.seqs}, prefill {shape.prefill:g} s")  # fmt: skip
    print(f"{'mode':36} {'idle TTFT':>10} {'B TTFT':>10} {'× idle':>7} {'A ended':>8}")
    for name, turns in MODES.items():
        r = await scenario(turns, shape)
        print(f"{name:36} {r['idle_ttft_s']:>9.3f}s {r['flood_ttft_s']:>9.3f}s {r['ratio']:>7.1f} {r['a_streams_ended']:>8.0f}")


if __name__ == "__main__":
    asyncio.run(main())
