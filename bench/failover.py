#!/usr/bin/env python3
"""Failover timing: how long a backend's death and recovery are visible to clients.

Two fake vLLM servers (bench/fake_vllm.py, paced at 50 tokens/s) serve the same model
behind the proxy (``--backend A --backend B``: two replicas, the default routing: least
loaded, cool-down and probe interval 2 s). A client starts a non-streaming ``/api/chat``
of 10 tokens (~0.2 s) every ``1 / --rate`` seconds, each a new conversation, so about ten
are in flight and least-loaded routing uses both replicas. Per round:

1. after ``--warmup-s``, A is killed (SIGKILL: its port refuses connections at once);
2. ``--down-s`` later A is started again on the same port;
3. the round ends ``--after-s`` after A answers ``/health`` again.

Reported per round: requests in flight on A at the kill that failed (never resent: the
client gets the error), failures among requests sent after the kill, how long after the
kill the first request that succeeded was sent, how much slower than the median before
the kill the slowest request sent in the second after it was, and the time from A's
restart until A served a request again (A's count of generation streams, polled every 10 ms). Usage::

    .venv/bin/python bench/failover.py --rounds 3
    .venv/bin/python bench/failover.py --proxy-arg=--config --proxy-arg=my.yaml   # other routing: settings
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.relays import BENCH_DIR, HOST, Proc, _spawn, _wait, fake_stats, free_port, http_get, start_proxy  # noqa: E402

# Each request a new conversation (a different first message), so affinity does not pin them to one replica.
BODY = {"model": "bench", "stream": False, "options": {"num_predict": 10}}


@dataclass
class Sent:
    at: float  # monotonic time it was sent
    ok: bool = False
    seconds: float = 0.0
    error: str = ""


@dataclass
class Round:
    killed_at: float = 0.0
    restarted_at: float = 0.0  # A answers /health again
    served_again_at: float = 0.0  # A's request counter grew after the restart
    sent: list[Sent] = field(default_factory=list)

    def report(self) -> dict[str, float | int | str]:
        before = [s for s in self.sent if s.at < self.killed_at]
        after = [s for s in self.sent if s.at >= self.killed_at]
        in_flight_failed = sum(1 for s in before if not s.ok and s.at + s.seconds >= self.killed_at)
        first_ok = min((s.at for s in after if s.ok), default=float("nan"))
        first_second = [s.seconds for s in after if s.at < self.killed_at + 1.0]
        baseline = statistics.median([s.seconds for s in before if s.ok])
        return {
            "in_flight_at_kill_failed": in_flight_failed,
            "sent_after_kill": len(after),
            "failed_after_kill": sum(1 for s in after if not s.ok),
            "first_success_sent_ms_after_kill": round((first_ok - self.killed_at) * 1000, 1),
            "first_second_slowest_added_ms": round((max(first_second, default=0.0) - baseline) * 1000, 1),
            "baseline_p50_ms": round(baseline * 1000, 1),
            "restart_to_served_again_s": round(self.served_again_at - self.restarted_at, 2) if self.served_again_at else "never",
            "errors": "; ".join(sorted({s.error for s in self.sent if s.error}))[:300],
        }


def start_fake_at(workdir: Path, port: int, name: str) -> Proc:
    cmd = [sys.executable, str(BENCH_DIR / "fake_vllm.py"), "--port", str(port), "--tick-ms", "20"]
    proc = _spawn(name, cmd, port, workdir)
    _wait(proc, lambda: http_get(port, "/health")[0] == 200, 15)
    return proc


async def one(session: aiohttp.ClientSession, url: str, record: Sent) -> None:
    try:
        messages = [{"role": "user", "content": f"question {record.at}"}]
        async with session.post(url, json={**BODY, "messages": messages}) as r:
            body = await r.json(content_type=None)
            record.ok = r.status == 200 and "error" not in body
            if not record.ok:
                record.error = f"{r.status} {body.get('error', '')}"
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        record.error = type(exc).__name__
    record.seconds = time.monotonic() - record.at


async def run_round(args: argparse.Namespace, workdir: Path, proxy: Proc, a: Proc) -> tuple[Round, Proc]:
    result = Round()
    url = f"http://{HOST}:{proxy.port}/api/chat"
    stop = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()

    async def client() -> None:
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
            while not stop.is_set():
                record = Sent(time.monotonic())
                result.sent.append(record)
                task = asyncio.create_task(one(session, url, record))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                await asyncio.sleep(1 / args.rate)
            await asyncio.gather(*tasks)

    sender = asyncio.create_task(client())
    await asyncio.sleep(args.warmup_s)
    a.popen.send_signal(signal.SIGKILL)
    result.killed_at = time.monotonic()
    a.popen.wait()
    await asyncio.sleep(args.down_s)
    a = await asyncio.to_thread(start_fake_at, workdir, a.port, "fake_a")
    result.restarted_at = time.monotonic()
    served = fake_stats(a.port)["streams"]
    deadline = result.restarted_at + args.after_s
    while time.monotonic() < deadline:
        if not result.served_again_at and fake_stats(a.port)["streams"] > served:
            result.served_again_at = time.monotonic()
        await asyncio.sleep(0.01)
    stop.set()
    await sender
    return result, a


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rate", type=float, default=50.0, help="requests per second [%(default)s]")
    p.add_argument("--warmup-s", type=float, default=1.5, help="before the kill [%(default)s]")
    p.add_argument("--down-s", type=float, default=3.0, help="from the kill to the restart [%(default)s]")
    p.add_argument("--after-s", type=float, default=4.0, help="watched after the restart [%(default)s]")
    p.add_argument("--proxy-arg", action="append", default=[], help="extra proxy argument (repeatable)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="failover-") as tmp:
        workdir = Path(tmp)
        a = start_fake_at(workdir, free_port(), "fake_a")
        b = start_fake_at(workdir, free_port(), "fake_b")
        extra = ["--backend", f"http://{HOST}:{b.port}", "--workers", "1", *args.proxy_arg]
        proxy = start_proxy(workdir, a.port, None, extra)
        reports = []
        try:
            for n in range(args.rounds):
                result, a = asyncio.run(run_round(args, workdir, proxy, a))
                report = result.report()
                reports.append(report)
                print(f"round {n + 1}: " + ", ".join(f"{k}={v}" for k, v in report.items() if v != ""), flush=True)
        finally:
            for proc in (proxy, a, b):
                proc.stop()
    recover = [r["restart_to_served_again_s"] for r in reports]
    first = [r["first_second_slowest_added_ms"] for r in reports]
    failed = sum(int(r["failed_after_kill"]) for r in reports)
    print(f"summary: failed after the kill {failed}; slowest added in the second after it {first} ms; "
          f"restart → served again {recover} s")  # fmt: skip
    return 0 if failed == 0 and all(isinstance(r, float) for r in recover) else 1


if __name__ == "__main__":
    sys.exit(main())
