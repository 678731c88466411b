"""The systemd unit and the command line it runs stay in step."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

from proxy.__main__ import build_parser

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "ollama-vllm-proxy.service"


def unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def test_unit_runs_the_cli_with_a_config_file() -> None:
    argv = shlex.split(unit()["Service"]["ExecStart"])
    assert argv[0].endswith("/ollama-vllm-proxy")
    args = build_parser().parse_args(argv[1:])
    assert args.command == "serve" and args.config == "/etc/ollama-vllm-proxy/config.yaml"


def test_unit_restarts_on_failure_as_a_non_root_user() -> None:
    service = unit()["Service"]
    assert service["Restart"] == "on-failure"
    assert service["User"] not in ("", "root")
    assert service["StandardOutput"] == "journal"


def test_public_flags_exist() -> None:
    """--backend, --listen and --config are a contract scripts and units depend on."""
    args = build_parser().parse_args(
        ["serve", "--backend", "http://a:1", "--backend", "http://b:2", "--listen", "0.0.0.0:11434", "--config", "c.yaml"]
    )
    assert args.backend == ["http://a:1", "http://b:2"] and args.listen == "0.0.0.0:11434" and args.config == "c.yaml"
