"""The proxy's pure per-event pipeline in a tight loop, no I/O: one upstream read (one HTTP chunk
holding one SSE event, as vLLM writes them) → dechunk → SSE → translate → the client's HTTP chunk.
Prints the best of ``--repeats`` runs in µs per event: the Python part of the relay's cost, without
the syscalls and the event loop (bench/run.py measures the whole).

    python bench/pipeline.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fake_vllm import TOKENS
from proxy.clock import Clock
from proxy.encoder import Encoder
from proxy.http1 import ChunkedDecoder
from proxy.translate.chat import ChatStreamTranslator

HEAD = b'{"id":"chatcmpl-0000000000000000000000000000abcd","object":"chat.completion.chunk","created":1764000000,"model":"bench"'
PREFIX = HEAD + b',"choices":[{"index":0,"delta":{"content":"'
SUFFIX = b'"},"logprobs":null,"finish_reason":null,"token_ids":null}],"usage":null}'


def reads() -> list[bytes]:
    """One read per fake token, framed as bench/fake_vllm.py writes them."""
    out = []
    for token in TOKENS:
        event = b"data: " + PREFIX + token + b"@%d" % time.monotonic_ns() + SUFFIX + b"\n\n"
        out.append(b"%x\r\n%b\r\n" % (len(event), event))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--events", type=int, default=30_000)
    p.add_argument("--repeats", type=int, default=15)
    a = p.parse_args(argv)
    data, n = reads(), a.events
    chunks, encoder = ChunkedDecoder(), Encoder(ChatStreamTranslator("bench", 0), Clock().created_at)
    best = float("inf")
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        for i in range(n):
            line = encoder.feed(chunks.feed(data[i % len(data)]), i)
            b"%x\r\n%b\r\n" % (len(line), line)
        best = min(best, time.perf_counter() - t0)
    print(f"{best / n * 1e6:.2f} µs/event (best of {a.repeats} × {n:,} events)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
