"""What an Ollama install has, read from a running server (``/api/tags``, then
``/api/show`` per model) or from its model store on disk (the manifests under
``manifests/<host>/<namespace>/<model>/<tag>`` and the blobs they name), as one
``Found`` per model. The store layout and media types are those of Ollama's
server/manifest.go and server/images.go."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy import names

_MEDIA = "application/vnd.ollama.image."
_FROM_BLOB = re.compile(r"^FROM\s+\S*sha256[-:]([0-9a-f]{64})\s*$", re.MULTILINE)


class SourceError(Exception):
    """The install could not be read; the text says why."""


@dataclass
class Found:
    name: str  # Ollama display name, e.g. "llama3.1:8b" or "me/assistant:latest"
    weights: str = ""  # digest of the model (GGUF) blob
    template: str = ""
    system: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    adapters: bool = False  # ADAPTER (LoRA) layers


def read(source: str) -> list[Found]:
    if source.startswith(("http://", "https://")):
        return from_server(source.rstrip("/"))
    return from_store(Path(source).expanduser())


# -- a running Ollama ------------------------------------------------------------------


def from_server(url: str, timeout: float = 30.0) -> list[Found]:
    listed = _call(url, "/api/tags", None, timeout).get("models") or []
    out = []
    for model in listed:
        name = str(model.get("name") or model.get("model") or "")
        shown = _call(url, "/api/show", {"model": name}, timeout)
        modelfile = str(shown.get("modelfile") or "")
        weights = _FROM_BLOB.search(modelfile)
        out.append(Found(
            name=_display(name),
            weights=weights.group(1) if weights else "",
            template=str(shown.get("template") or ""),
            system=str(shown.get("system") or _modelfile_system(modelfile)),
            parameters=parse_parameters(str(shown.get("parameters") or "")),
            adapters=bool(re.search(r"^ADAPTER\s", modelfile, re.MULTILINE)),
        ))  # fmt: skip
    return out


def _call(url: str, path: str, body: dict[str, Any] | None, timeout: float) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:  # noqa: S310 - the operator's own URL
            answer: dict[str, Any] = json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        raise SourceError(f"{url}{path}: HTTP {exc.code}: {exc.read()[:200].decode(errors='replace')}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise SourceError(f"{url}: cannot reach Ollama: {getattr(exc, 'reason', exc)}") from None
    except ValueError:
        raise SourceError(f"{url}{path}: the answer is not JSON") from None
    return answer


def parse_parameters(text: str) -> dict[str, Any]:
    """``/api/show``'s ``parameters`` text (``key   value`` per line, Go-quoted strings,
    ``stop`` repeated) as an options mapping."""
    out: dict[str, Any] = {}
    for line in text.splitlines():
        key, _, raw = line.strip().partition(" ")
        if not key or not raw.strip():
            continue
        value = _value(raw.strip())
        if key == "stop":
            out.setdefault("stop", []).append(value)
        else:
            out[key] = value
    return out


def _value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _modelfile_system(modelfile: str) -> str:
    found = re.search(r'^SYSTEM\s+(?:"""(.*?)"""|(.+))$', modelfile, re.MULTILINE | re.DOTALL)
    return (found.group(1) or found.group(2) or "").strip() if found else ""


# -- the model store on disk -----------------------------------------------------------


def from_store(root: Path) -> list[Found]:
    """``root`` is Ollama's models directory (``~/.ollama/models``, or ``OLLAMA_MODELS``)."""
    manifests = root / "manifests"
    if not manifests.is_dir():
        raise SourceError(f"{root}: no Ollama model store here (no manifests/ directory)")
    out = []
    for path in sorted(p for p in manifests.rglob("*") if p.is_file()):
        parts = path.relative_to(manifests).parts
        if len(parts) != 4:
            continue  # host/namespace/model/tag only
        host, namespace, model, tag = parts
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SourceError(f"{path}: not a manifest: {exc}") from None
        found = Found(name=_display(f"{host}/{namespace}/{model}:{tag}"))
        for layer in manifest.get("layers") or []:
            kind = str(layer.get("mediaType", "")).removeprefix(_MEDIA)
            digest = str(layer.get("digest", "")).removeprefix("sha256:")
            if kind == "model":
                found.weights = digest
            elif kind == "adapter":
                found.adapters = True
            elif kind in ("template", "system", "params"):
                text = _blob(root, digest)
                if kind == "template":
                    found.template = text
                elif kind == "system":
                    found.system = text
                else:
                    found.parameters = _params(text, path)
        out.append(found)
    return out


def _blob(root: Path, digest: str) -> str:
    try:
        return (root / "blobs" / f"sha256-{digest}").read_text(encoding="utf-8")
    except OSError as exc:
        raise SourceError(f"{root}/blobs/sha256-{digest}: cannot read: {exc.strerror}") from None


def _params(text: str, where: Path) -> dict[str, Any]:
    try:
        params = json.loads(text)
    except ValueError:
        raise SourceError(f"{where}: its params layer is not JSON") from None
    return dict(params) if isinstance(params, dict) else {}


def _display(name: str) -> str:
    parsed = names.parse(name)
    return parsed.display() if parsed else name
