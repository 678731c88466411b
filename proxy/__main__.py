"""Command line: ``ollama-vllm-proxy serve --backend URL --listen HOST:PORT --config PATH``,
and ``ollama-vllm-proxy check`` with the same options (proxy/check.py).

The flags and the default port 11434 are a public contract scripts and systemd units
depend on: add options, never rename or remove one.
"""

from __future__ import annotations

import argparse
import os
import sys

from proxy import __version__
from proxy.auth_config import open_warning
from proxy.config import ConfigError
from proxy.reconfig import Recipe


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ollama-vllm-proxy", description="The Ollama API, served by vLLM.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the proxy")
    check = sub.add_parser("check", help="validate the configuration, reach every backend, list the models; "
                           "exit non-zero on a problem (for systemd ExecStartPre=)")  # fmt: skip
    for command in (serve, check):
        _options(command)
    migrate = sub.add_parser("migrate", help="write a proxy config from an Ollama install")
    migrate.add_argument("--from", dest="source", required=True, metavar="URL|PATH",
                         help="a running Ollama (http://127.0.0.1:11434) or its model store (~/.ollama/models)")  # fmt: skip
    migrate.add_argument("--out", metavar="PATH", help="where to write the config (default: standard output)")
    return parser


def _options(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--backend", action="append", default=[], metavar="URL",
                       help="a vLLM server's base URL (repeatable); its models are discovered from /v1/models")  # fmt: skip
    serve.add_argument("--listen", metavar="HOST:PORT",
                       help="address to listen on (default: $OLLAMA_HOST, else config, else 127.0.0.1:11434)")  # fmt: skip
    serve.add_argument("--config", metavar="PATH", help="YAML configuration file (see config.yaml)")
    serve.add_argument("--workers", type=int, metavar="N",
                       help="worker processes sharing the port (default: config, else 1)")  # fmt: skip
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "migrate":
        from proxy import migrate  # noqa: PLC0415 - only for this command

        return migrate.main(args.source, args.out)
    recipe = Recipe(args.config, tuple(args.backend), args.listen, args.workers, tuple(args.model),
                    args.vllm_python, args.vllm_args)  # fmt: skip
    try:
        config = recipe.build(os.environ)
    except ConfigError as exc:
        print(f"ollama-vllm-proxy: configuration error: {exc}", file=sys.stderr)
        return 2
    if warning := open_warning(config.listen, config.auth):
        print(f"ollama-vllm-proxy: {warning}", file=sys.stderr)
    if args.command == "check":
        from proxy import check  # noqa: PLC0415

        return check.run(config)
    from proxy import workers  # noqa: PLC0415 - keep `--help` and config errors fast

    return workers.run(config, recipe)


if __name__ == "__main__":
    sys.exit(main())
