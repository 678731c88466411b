"""The fake vLLM as a program that takes vLLM's server flags, so a managed model can be
launched as a real child process in tests: ``python -m tests.fakes.vllm_server --model M
--served-model-name S --port P [other vLLM flags, ignored]``. It prints a few log lines
like vLLM does and serves until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys

from tests.fakes.vllm import FakeVLLM, Model


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--served-model-name", nargs="+")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--fail", action="store_true", help="exit with an error instead of serving")
    parser.add_argument("--never-ready", action="store_true", help="print, but never serve")
    parser.add_argument("--grandchild", action="store_true",
                        help="start a process that ignores SIGTERM, as vLLM's engine core outlives its server")  # fmt: skip
    args, _ = parser.parse_known_args(argv)
    print(f"INFO fake vLLM loading {args.model}", flush=True)
    if args.fail:
        print("ERROR torch.OutOfMemoryError: CUDA out of memory", flush=True)
        return 1
    if args.grandchild:
        code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"
        subprocess.Popen([sys.executable, "-c", code, *argv])  # inherits stdout, as vLLM's workers do
    if args.never_ready:
        await asyncio.sleep(3600)
    server = FakeVLLM({name: Model() for name in args.served_model_name or [args.model]})
    await server.start(args.port)
    print(f"INFO Uvicorn running on http://{args.host}:{args.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
