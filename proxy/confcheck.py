"""Validation helpers for configuration values: each failure is a ``ConfigError`` whose
text names the key, so start-up stops with one clear line."""

from __future__ import annotations

from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration problem, already phrased for the operator."""


def read_yaml(path: str) -> Any:
    """A YAML file's content (None when empty); a ``ConfigError`` naming the file, and the
    line of a syntax error, when it cannot be read or parsed."""
    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} invalid YAML: {getattr(exc, 'problem', exc)}") from None


def require_mapping(data: Any, where: str, allowed: set[str] | None) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    for key in data:
        if allowed is not None and key not in allowed:
            prefix = "" if where == "top level" else f"{where}."
            raise ConfigError(f"{prefix}{key}: unknown key")


def text(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: expected a non-empty string, got {value!r}")
    return value


def optional_text(data: dict[str, Any], key: str, where: str) -> str:
    return text(data[key], f"{where}.{key}") if key in data else ""


def boolean(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    return value


def listing(value: Any, key: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
    return value


def positive(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{key}: expected a positive number of seconds, got {value!r}")
    return float(value)


def count(value: Any, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}: expected a whole number >= {minimum}, got {value!r}")
    return value


def choice(value: Any, key: str, allowed: tuple[Any, ...]) -> Any:
    if value not in allowed or isinstance(value, bool):
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, allowed))}")
    return value
