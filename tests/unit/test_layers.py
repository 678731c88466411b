"""Who may open upstream connections: the part of the layering import-linter cannot express.

The import contracts in pyproject.toml (run by scripts/test.sh as `lint-imports`) keep the
translation core free of I/O and every module above the layers it may import. They see
external packages whole, so they cannot tell `aiohttp.web` (every adapter) from
`aiohttp.ClientSession` (the backend seam only); this test can, by reading the syntax tree.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

PROXY = Path(__file__).resolve().parents[2] / "proxy"

# The names that open a connection or a process, and the modules allowed to use them.
OPENERS = {"ClientSession", "TCPConnector", "UnixConnector", "create_connection", "open_connection",
           "create_subprocess_exec", "create_subprocess_shell", "Popen", "socket"}  # fmt: skip
# backend.py (the runtime Backend) and h1client.py (its client) talk to vLLM; managed/launcher and managed/shim start it;
# workers.py starts and supervises the proxy's own worker processes.
SEAM = {"backend.py", "h1client.py", "workers.py", "notify.py"}  # notify: the datagram to systemd


def is_seam(path: Path) -> bool:
    rel = path.relative_to(PROXY)
    in_managed = rel.parts[:1] == ("managed",) and rel.name.startswith(("launcher", "shim"))
    return rel.name in SEAM and len(rel.parts) == 1 or in_managed


def openers_used(source: str) -> set[str]:
    """Every opener named as an attribute (`aiohttp.ClientSession`), a bare name or an import."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in OPENERS:
            found.add(node.attr)
        elif isinstance(node, ast.Name) and node.id in OPENERS:
            found.add(node.id)
        elif isinstance(node, ast.ImportFrom):
            found |= {a.name for a in node.names if a.name in OPENERS}
    return found


@pytest.mark.parametrize(
    "source, expected",
    [
        pytest.param("import aiohttp\ns = aiohttp.ClientSession()", {"ClientSession"}, id="attribute"),
        pytest.param("from aiohttp import ClientSession as C\nC()", {"ClientSession"}, id="aliased import"),
        pytest.param("await loop.create_connection(f, h, p)", {"create_connection"}, id="loop connection"),
        pytest.param("import httpx\nhttpx.AsyncClient().get(u)", set(), id="other clients are the import contract's job"),
        pytest.param("from aiohttp import web\nweb.Response()", set(), id="the server side is fine"),
    ],
)
def test_openers_are_recognised(source: str, expected: set[str]) -> None:
    assert openers_used(source) == expected


def test_only_the_backend_seam_opens_upstream_connections() -> None:
    users = {str(p.relative_to(PROXY)): openers_used(p.read_text()) for p in sorted(PROXY.rglob("*.py")) if not is_seam(p)}
    assert {name: used for name, used in users.items() if used} == {}


def test_the_seam_is_where_connections_are_opened() -> None:
    assert "create_connection" in openers_used((PROXY / "h1client.py").read_text())


def stream_openers(source: str) -> bool:
    """Whether the module calls ``h1client.open_stream`` (or imports it)."""
    for node in ast.walk(ast.parse(source)):
        called = isinstance(node, ast.Attribute) and node.attr == "open_stream"
        if called and isinstance(node.value, ast.Name) and node.value.id == "h1client":  # type: ignore[attr-defined]
            return True
        imported = isinstance(node, ast.ImportFrom) and node.module == "proxy.h1client"
        if imported and any(a.name == "open_stream" for a in node.names):  # type: ignore[attr-defined]
            return True
    return False


def test_only_a_backend_opens_upstream_requests() -> None:
    users = [str(p.relative_to(PROXY)) for p in sorted(PROXY.rglob("*.py")) if stream_openers(p.read_text())]
    assert users == ["backend.py"]


def test_the_architecture_doc_draws_the_layers_pyproject_enforces() -> None:
    """docs/ARCHITECTURE.md copies the layers contract; a layer added in one place only fails here."""
    root = PROXY.parent
    contracts = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    [layers] = [c["layers"] for c in contracts if c["type"] == "layers"]
    drawn = (root / "docs" / "ARCHITECTURE.md").read_text().split("\n## Layers\n", 1)[1].split("```")[1]
    assert drawn.strip().splitlines() == layers
