"""Command line: ``ollama-vllm-proxy serve --backend URL --listen HOST:PORT --config PATH``.

The flags and the default port 11434 are a public contract scripts and systemd units
depend on: add options, never rename or remove one.
"""

from __future__ import annotations

import argparse
import os
import sys

from proxy import __version__
from proxy.config import Config, ConfigError, load, split_listen


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ollama-vllm-proxy", description="The Ollama API, served by vLLM.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--backend", action="append", default=[], metavar="URL",
                       help="a vLLM server's base URL (repeatable); its models are discovered from /v1/models")  # fmt: skip
    serve.add_argument("--listen", metavar="HOST:PORT",
                       help="address to listen on (default: $OLLAMA_HOST, else config, else 127.0.0.1:11434)")  # fmt: skip
    serve.add_argument("--config", metavar="PATH", help="YAML configuration file (see config.yaml)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load(args.config) if args.config else Config()
        config = config.with_cli(args.backend, args.listen, dict(os.environ))
        if not config.backends:
            raise ConfigError("no backend: pass --backend URL or list backends in the config file")
    except ConfigError as exc:
        print(f"ollama-vllm-proxy: configuration error: {exc}", file=sys.stderr)
        return 2
    return serve(config)


def serve(config: Config) -> int:
    from aiohttp import web  # noqa: PLC0415 - keep `--help` and config errors fast

    from proxy import logs  # noqa: PLC0415
    from proxy.app import create_app  # noqa: PLC0415

    logs.configure(config.log_level, config.log_format)
    host, port = split_listen(config.listen)
    try:
        web.run_app(
            create_app(config),
            host=host,
            port=port,
            handler_cancellation=True,  # a client that hangs up cancels its handler → upstream closed
            backlog=4096,  # aiohttp's 128 drops bursts of new streams (performance.md #6)
            access_log=None,  # the canonical line per request replaces the access log
            print=lambda *_: None,
            shutdown_timeout=30.0,
        )
    except OSError as exc:
        print(f"ollama-vllm-proxy: cannot listen on {config.listen}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
