"""The import layers of aesthetics.md §5, enforced: the translation core does no I/O."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PROXY = Path(__file__).resolve().parents[2] / "proxy"
PURE = sorted([*(PROXY / "translate").glob("*.py"), *(PROXY / "wire").glob("*.py"), PROXY / "sse.py", PROXY / "encoder.py", PROXY / "http1.py",
               PROXY / "errors.py",
               PROXY / "names.py"])  # fmt: skip
FORBIDDEN = {"aiohttp", "asyncio", "structlog", "time", "uuid", "random", "socket", "proxy.config", "proxy.backend",
             "proxy.app", "proxy.routes", "proxy.streaming", "proxy.registry"}  # fmt: skip


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("path", PURE, ids=lambda p: str(p.relative_to(PROXY)))
def test_pure_modules_import_no_io(path: Path) -> None:
    bad = {m for m in imports(path) if m in FORBIDDEN or m.split(".")[0] in FORBIDDEN - {"proxy"}}
    assert bad == set()


def test_only_backend_touches_the_http_client() -> None:
    users = {p.name for p in PROXY.rglob("*.py") if "ClientSession" in p.read_text()}
    # The launcher polls its own vLLM child's /health until it is ready: process
    # management, not an upstream request; everything else goes through backend.py.
    assert users == {"backend.py", "launcher.py"}
