"""A model entry's ``launch:`` block: how the proxy starts vLLM for that model.

::

    models:
      - name: qwen3:8b
        launch:
          model: Qwen/Qwen3-8B          # required: Hugging Face id or local path
          args: --max-model-len 8192    # a string (shell-split) or a list
          env: {CUDA_VISIBLE_DEVICES: "1"}
          command: [docker, run, ...]   # replaces "<vllm_python> -m vllm.entrypoints.openai.api_server"
          gpu_share: 0.45               # → --gpu-memory-utilization; capacity per device
          keep_alive: 10m               # this model's default keep_alive
          pinned: false                 # never stopped to make room, nor by its idle timer
          preload: false                # start when the proxy starts
          family_defaults: true         # add the parser flags of proxy/managed/families.py
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.confcheck import ConfigError, boolean, listing, require_mapping, text
from proxy.errors import BadRequest
from proxy.managed import families
from proxy.managed.process import VLLM_MODULE, LaunchSpec
from proxy.translate.common import keep_alive_seconds

_KEYS = {"model", "args", "env", "command", "gpu_share", "keep_alive", "pinned", "preload", "family_defaults"}


@dataclass(frozen=True)
class LaunchSettings:
    model: str  # vLLM --model: a Hugging Face id or a local path
    args: tuple[str, ...] = ()  # the user's vLLM arguments (config args, or --vllm-args)
    env: Mapping[str, str] = field(default_factory=dict)
    command: tuple[str, ...] = ()  # empty: the vLLM Python's `-m vllm.entrypoints.openai.api_server`
    gpu_share: float | None = None  # None: the model takes its whole device
    keep_alive: float | None = None  # None: the top-level keep_alive
    pinned: bool = False
    preload: bool = False
    family_defaults: bool = True

    @property
    def device(self) -> str:
        """Capacity is counted per device: the model's CUDA_VISIBLE_DEVICES, else "0"."""
        return self.env.get("CUDA_VISIBLE_DEVICES") or "0"

    @property
    def share(self) -> float:
        return 1.0 if self.gpu_share is None else self.gpu_share

    def full_args(self) -> tuple[str, ...]:
        family = families.lookup(self.model) if self.family_defaults else None
        return families.merge(family.args if family else (), self.args)

    def max_model_len(self) -> int | None:
        """``--max-model-len N`` when the arguments fix it, so listings know the context
        before vLLM runs (vLLM serves exactly that length when it is given)."""
        return _whole(flag(self.full_args(), "--max-model-len"))

    def max_num_seqs(self) -> int | None:
        """The batch the vLLM it starts runs at once, when the arguments fix it: its
        ``--max-num-seqs`` per data-parallel rank, times ``--data-parallel-size``."""
        args = self.full_args()
        seqs = _whole(flag(args, "--max-num-seqs"))
        ranks = _whole(flag(args, "--data-parallel-size")) or _whole(flag(args, "-dp")) or 1
        return seqs * ranks if seqs else None

    def scheduling_policy(self) -> str:
        """vLLM's ``--scheduling-policy`` as the arguments set it (vLLM's default: fcfs)."""
        return flag(self.full_args(), "--scheduling-policy") or "fcfs"

    def capabilities(self) -> tuple[str, ...]:
        return families.capabilities(self.full_args())

    def spec(self, name: str, served: str, vllm_python: str) -> LaunchSpec:
        command = self.command or (vllm_python or sys.executable, "-m", VLLM_MODULE)
        return LaunchSpec(name=name, model=self.model, served=served, command=command, args=self.full_args(),
                          env=dict(self.env), gpu_share=self.gpu_share, device=self.device)  # fmt: skip


def flag(args: tuple[str, ...], name: str) -> str | None:
    """The value of vLLM flag ``name`` in ``args`` (``--flag V`` or ``--flag=V``; vLLM's
    parser takes ``_`` for ``-`` in flag names too); the last one wins, as in argparse."""
    value = None
    for i, arg in enumerate(args):
        key, sep, rest = arg.partition("=")
        if key.replace("_", "-") != name:
            continue
        if sep:
            value = rest
        elif i + 1 < len(args):
            value = args[i + 1]
    return value


def _whole(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() and int(value) > 0 else None


def parse(data: Any, where: str) -> LaunchSettings:
    if isinstance(data, str):
        data = {"model": data}
    require_mapping(data, where, _KEYS)
    if "model" not in data:
        raise ConfigError(f"{where}.model: missing (a Hugging Face id or a local path)")
    env = data.get("env", {})
    require_mapping(env, f"{where}.env", None)
    for key, value in env.items():
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ConfigError(f"{where}.env.{key}: expected a string, got {value!r}")
    share = data.get("gpu_share")
    if share is not None and (isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1):
        raise ConfigError(f"{where}.gpu_share: expected a fraction of one device, 0 < share <= 1, got {share!r}")
    keep_alive = None
    if "keep_alive" in data:
        try:
            keep_alive = keep_alive_seconds(data["keep_alive"])
        except BadRequest as exc:
            raise ConfigError(f"{where}.keep_alive: {exc.message}") from None
    return LaunchSettings(
        model=text(data["model"], f"{where}.model"),
        args=arguments(data.get("args", []), f"{where}.args"),
        env={str(k): str(v) for k, v in env.items()},
        command=tuple(text(c, f"{where}.command") for c in listing(data.get("command", []), f"{where}.command")),
        gpu_share=None if share is None else float(share),
        keep_alive=keep_alive,
        pinned=boolean(data.get("pinned", False), f"{where}.pinned"),
        preload=boolean(data.get("preload", False), f"{where}.preload"),
        family_defaults=boolean(data.get("family_defaults", True), f"{where}.family_defaults"),
    )


def arguments(value: Any, key: str) -> tuple[str, ...]:
    """vLLM arguments as a list, or one string split like a shell would."""
    if isinstance(value, str):
        try:
            return tuple(shlex.split(value))
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}") from None
    items = listing(value, key)
    for item in items:
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise ConfigError(f"{key}: expected strings, got {item!r}")
    return tuple(str(i) for i in items)


def from_cli(value: str, vllm_args: tuple[str, ...]) -> tuple[str, LaunchSettings]:
    """``--model [NAME=]MODEL``: the Ollama name ("" = derived from MODEL) and settings."""
    name, sep, model = value.partition("=")
    if not sep:
        name, model = "", value
    if not model.strip():
        raise ConfigError(f"--model: expected [NAME=]MODEL, got {value!r}")
    return name.strip(), LaunchSettings(model=model.strip(), args=vllm_args)
