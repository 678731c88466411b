"""Model weights in the Hugging Face cache, the layout huggingface_hub writes
(``<cache>/models--<org>--<name>/{refs,snapshots,blobs}``; huggingface_hub's
file_download.py): whether a repository's weights are there, and removing them.

The cache is found at call time as huggingface_hub finds it: ``HF_HUB_CACHE``, else
``HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "huggingface" / "hub"


def repo_dir(repo: str) -> Path:
    return cache_dir() / ("models--" + repo.replace("/", "--"))


def is_path(model: str) -> bool:
    """vLLM's --model is a local directory rather than a Hugging Face id."""
    return model.startswith(("/", ".", "~")) or os.path.isdir(model)


def present(repo: str) -> bool:
    """A snapshot of ``repo`` with at least one weights file (a local path: it exists)."""
    if is_path(repo):
        return Path(repo).expanduser().exists()
    snapshots = repo_dir(repo) / "snapshots"
    try:
        for snapshot in snapshots.iterdir():
            if any(f.name.endswith(WEIGHT_SUFFIXES) for f in snapshot.rglob("*")):
                return True
    except OSError:
        return False
    return False


def remove(repo: str) -> bool:
    """Delete ``repo`` from the cache; False when it was not there."""
    path = repo_dir(repo)
    if not path.is_dir():
        return False
    shutil.rmtree(path)
    return True
