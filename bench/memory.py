"""Peak memory of the proxy while it refuses oversized request bodies (Linux /proc).

Starts the fake vLLM and the real proxy (`python -m proxy serve`, one worker), then sends,
each on its own connection and after the proxy's peak RSS was reset:

* ``content-length``: a 257 MiB body announced by ``Content-Length`` (refused before it is read);
* ``chunked``: a 257 MiB chunked body (refused once the count passes 256 MiB);
* ``gzip-bomb``: ~260 KiB of gzip that inflates past 256 MiB (refused at the inflate ratio);
* ``accepted``: a 16 MiB prompt the proxy takes, for scale.

and prints the proxy's peak RSS during each (VmHWM after ``echo 5 > /proc/PID/clear_refs``,
which resets it; also the highest VmRSS a 2 ms sampler saw) against its idle RSS.

    .venv/bin/python bench/memory.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import relays

MIB = 1024 * 1024
OVER = 257 * MIB  # the limit is 256 MiB (proxy/body.py)
PIECE = MIB


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class Sampler:
    """The highest VmRSS of ``pid`` seen every 2 ms while it runs."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, status_kib(self.pid, "VmRSS"))
            time.sleep(0.002)


async def send(port: int, head: bytes, body: AsyncIterator[bytes]) -> tuple[str, int, float]:
    """Send ``head`` and body pieces until the proxy answers; its status line, the body
    bytes sent before it did, and the seconds it took."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(relays.HOST, port)
    writer.write(head)
    answer = asyncio.ensure_future(reader.readuntil(b"\r\n"))
    sent = 0
    try:
        async for piece in body:
            if answer.done():
                break
            writer.write(piece)
            try:
                await writer.drain()
            except ConnectionError:
                break  # the proxy answered and closed: its answer is in the buffer
            sent += len(piece)
        line = await asyncio.wait_for(answer, 30)
    finally:
        writer.close()
    return line.decode().strip(), sent, time.monotonic() - started


async def spaces(total: int, frame: Callable[[bytes], bytes] = bytes) -> AsyncIterator[bytes]:
    piece = b" " * PIECE
    for at in range(0, total, PIECE):
        yield frame(piece[: total - at])
    await asyncio.sleep(0)


async def once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def gzip_bomb(inflated: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
    out = [compressor.compress(b'{"model":"bench","prompt":"')]
    piece = b" " * PIECE
    for _ in range(inflated // PIECE):
        out.append(compressor.compress(piece))
    out.append(compressor.compress(b'"}') + compressor.flush())
    return b"".join(out)


def cases() -> dict[str, tuple[bytes, Callable[[], AsyncIterator[bytes]]]]:
    post = "POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    bomb = gzip_bomb(OVER)
    prompt = b'{"model":"bench","stream":false,"options":{"num_predict":1},"prompt":"' + b"a " * (8 * MIB) + b'"}'
    return {
        "content-length": ((post + f"Content-Length: {OVER}\r\n\r\n").encode(), lambda: spaces(OVER)),
        "chunked": (
            (post + "Transfer-Encoding: chunked\r\n\r\n").encode(),
            lambda: spaces(OVER, lambda p: b"%x\r\n%b\r\n" % (len(p), p)),
        ),
        "gzip-bomb": (
            (post + f"Content-Encoding: gzip\r\nContent-Length: {len(bomb)}\r\n\r\n").encode(),
            lambda: once(bomb),
        ),
        "accepted": ((post + f"Content-Length: {len(prompt)}\r\nConnection: close\r\n\r\n").encode(), lambda: once(prompt)),
    }


async def measure(pid: int, port: int) -> list[dict[str, Any]]:
    rows = []
    for name, (head, body) in cases().items():
        await asyncio.sleep(0.5)  # let the previous case's buffers go
        idle = status_kib(pid, "VmRSS")
        resettable = reset_peak(pid)
        with Sampler(pid) as sampler:
            line, sent, seconds = await send(port, head, body())
            await asyncio.sleep(0.2)  # the handler's last allocations
        hwm = status_kib(pid, "VmHWM") if resettable else None
        rows.append({"case": name, "answer": line, "sent_mib": round(sent / MIB, 1), "seconds": round(seconds, 2),
                     "idle_mib": round(idle / 1024, 1), "peak_mib": round((hwm or sampler.peak) / 1024, 1),
                     "sampled_peak_mib": round(sampler.peak / 1024, 1), "vmhwm_reset": resettable})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, default=None, help="write the rows here too")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        workdir = Path(tmp)
        fake = relays.start_fake(workdir, None, None)
        proxy = relays.start_proxy(workdir, fake.port, None, ["--workers", "1"])
        try:
            rows = asyncio.run(measure(proxy.pid, proxy.port))
        finally:
            proxy.stop()
            fake.stop()
    print(f"{'case':<16}{'answer':<36}{'sent MiB':>9}{'s':>7}{'idle MiB':>10}{'peak MiB':>10}")
    for r in rows:
        print(f"{r['case']:<16}{r['answer']:<36}{r['sent_mib']:>9}{r['seconds']:>7}{r['idle_mib']:>10}{r['peak_mib']:>10}")
    if not rows[0]["vmhwm_reset"]:
        print("(VmHWM could not be reset here: peaks are the 2 ms VmRSS sampler's)")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
