"""Command line: ``ollama-vllm-proxy serve --backend URL --listen HOST:PORT --config PATH``.

The flags and the default port 11434 are a public contract scripts and systemd units
depend on: add options, never rename or remove one.
"""

from __future__ import annotations

import argparse
import os
import sys

from proxy import __version__
from proxy.auth_config import open_warning
from proxy.config import Config, ConfigError, load


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
    serve.add_argument("--workers", type=int, metavar="N",
                       help="worker processes sharing the port (default: config, else one per CPU core)")  # fmt: skip
    serve.add_argument("--model", action="append", default=[], metavar="[NAME=]MODEL",
                       help="run vLLM for this Hugging Face id or local path on demand (repeatable); "
                       "NAME is its Ollama name")  # fmt: skip
    serve.add_argument(
        "--vllm-python",
        metavar="PATH",
        help="the Python that has vLLM installed, for --model and launch: entries (default: this one)",
    )
    serve.add_argument("--vllm-args", default="", metavar='"ARGS"',
                       help='extra vLLM arguments for every --model, e.g. "--dtype float32 --enforce-eager"')  # fmt: skip
    migrate = sub.add_parser("migrate", help="write a proxy config from an Ollama install")
    migrate.add_argument("--from", dest="source", required=True, metavar="URL|PATH",
                         help="a running Ollama (http://127.0.0.1:11434) or its model store (~/.ollama/models)")  # fmt: skip
    migrate.add_argument("--out", metavar="PATH", help="where to write the config (default: standard output)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "migrate":
        from proxy import migrate  # noqa: PLC0415 - only for this command

        return migrate.main(args.source, args.out)
    try:
        config = load(args.config) if args.config else Config()
        config = config.with_cli(args.backend, args.listen, dict(os.environ), args.workers,
                                 args.model, args.vllm_python, args.vllm_args)  # fmt: skip
        if not config.backends and not config.managed and config.library.catalog is None:
            raise ConfigError("no backend: pass --backend URL or --model MODEL, or list backends or launch: models in the config")
    except ConfigError as exc:
        print(f"ollama-vllm-proxy: configuration error: {exc}", file=sys.stderr)
        return 2
    if warning := open_warning(config.listen, config.auth):
        print(f"ollama-vllm-proxy: {warning}", file=sys.stderr)
    from proxy import workers  # noqa: PLC0415 - keep `--help` and config errors fast

    return workers.run(config)


if __name__ == "__main__":
    sys.exit(main())
