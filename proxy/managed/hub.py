"""``/api/pull`` for library and managed models: download a Hugging Face repository into
the normal Hugging Face cache with ``huggingface_hub`` (on a thread: it is synchronous),
reported as Ollama's pull progress (server/download.go and server/images.go in
ollama/ollama): ``pulling manifest``, then per file ``pulling <digest12>`` with
``digest``/``total``/``completed``, then ``verifying sha256 digest``, ``writing manifest``,
``removing unused layers``, ``success``.

A file's ``digest`` is its LFS sha256 when the Hub has one (weights), else the sha256 of
``repo/path@git-blob-id`` (small files in git have no sha256 on the Hub): stable per
version, which is what clients use it for (one progress bar per digest).

When the client hangs up the download stops before the next file, or within a file at its
next 10 MB chunk (huggingface_hub reads that much between progress updates); the partial
file stays in the cache (``.incomplete``) and the next pull resumes it.

``HF_ENDPOINT``, ``HF_TOKEN`` and the cache location are read at each pull.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import os
import threading
from collections.abc import AsyncGenerator, Callable
from typing import Any

from proxy.errors import ProxyError
from proxy.managed import weights

# What vLLM does not load: the original (non-HF) checkpoints and other runtimes' formats.
_SKIP = ("original/*", "onnx/*", "openvino/*", "coreml/*", "*.gguf", "*.onnx", "*.h5", "*.msgpack", "*.ot", "*.tflite",
         "*.mlmodel", ".gitattributes")  # fmt: skip
_PICKLED = ("*.bin", "*.pt", "*.pth")  # left out when the repository has safetensors


class PullFailed(ProxyError):
    """The download could not be done; the text is phrased for the operator."""


class Cancelled(BaseException):
    """Raised inside huggingface_hub's download loop when the client is gone."""


def files(siblings: list[tuple[str, int, str]]) -> list[tuple[str, int, str]]:
    """The (path, size, digest) rows of a repository that vLLM needs."""
    kept = [s for s in siblings if not any(fnmatch.fnmatch(s[0], p) for p in _SKIP)]
    if any(s[0].endswith(".safetensors") for s in kept):
        kept = [s for s in kept if not any(fnmatch.fnmatch(s[0], p) for p in _PICKLED)]
    return kept


async def pull(repo: str) -> AsyncGenerator[dict[str, Any], None]:
    """Ollama's progress objects while ``repo`` downloads; raises ``PullFailed`` (after
    ``pulling manifest``) when it cannot be done. Closing the iterator stops the download."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[dict[str, Any] | BaseException | None] = asyncio.Queue()
    stop = threading.Event()

    def emit(item: dict[str, Any] | BaseException | None) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is closed (the proxy stopped): nobody reads on
            stop.set()

    def work() -> None:
        try:
            _download(repo, emit, stop)
            emit(None)
        except Cancelled:
            emit(None)
        except Exception as exc:  # noqa: BLE001 - every failure becomes the client's error line
            emit(exc)

    yield {"status": "pulling manifest"}
    thread = threading.Thread(target=work, name=f"pull {repo}", daemon=True)
    thread.start()
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                raise _failure(repo, item)
            yield item
    finally:
        stop.set()
    for status in ("verifying sha256 digest", "writing manifest", "removing unused layers", "success"):
        yield {"status": status}


def _download(repo: str, emit: Callable[[dict[str, Any]], None], stop: threading.Event) -> None:
    from huggingface_hub import HfApi, hf_hub_download  # noqa: PLC0415 - loaded on the first pull only

    endpoint = os.environ.get("HF_ENDPOINT") or None
    token = os.environ.get("HF_TOKEN") or None
    info = HfApi(endpoint=endpoint).model_info(repo, files_metadata=True, token=token)
    rows = []
    for sibling in info.siblings or []:
        lfs = getattr(sibling, "lfs", None)
        blob = f"{repo}/{sibling.rfilename}@{sibling.blob_id}"
        sha = lfs.sha256 if lfs is not None else hashlib.sha256(blob.encode()).hexdigest()
        rows.append((sibling.rfilename, int(sibling.size or 0), f"sha256:{sha}"))
    for path, size, digest in files(rows):
        if stop.is_set():
            raise Cancelled
        line = {"status": f"pulling {digest[7:19]}", "digest": digest, "total": size}
        emit({**line, "completed": 0})

        class Progress:  # the tqdm stand-in huggingface_hub's http_get drives
            def __init__(self, total: int | None = None, initial: int = 0, **_: Any) -> None:
                self.done = initial

            def __enter__(self) -> Progress:
                return self

            def __exit__(self, *_: object) -> None:
                return None

            def update(self, n: float | None = 1) -> None:
                if stop.is_set():
                    raise Cancelled
                self.done += int(n or 0)
                emit({**line, "completed": min(self.done, size)})  # noqa: B023 - used within this iteration

            def close(self) -> None:
                return None

        hf_hub_download(repo, path, cache_dir=weights.cache_dir(), endpoint=endpoint, token=token,
                        tqdm_class=Progress)  # fmt: skip
        emit({**line, "completed": size})


def _failure(repo: str, exc: BaseException) -> PullFailed:
    from huggingface_hub import errors  # noqa: PLC0415

    page = f"https://huggingface.co/{repo}"
    if isinstance(exc, errors.GatedRepoError):
        return PullFailed(f"pull model manifest: {repo} is gated on Hugging Face: accept its terms at {page} "
                          "and set HF_TOKEN to a token of that account")  # fmt: skip
    if isinstance(exc, errors.RepositoryNotFoundError):
        return PullFailed(f"pull model manifest: Hugging Face has no repository {repo} (if it is private, set HF_TOKEN)")
    if isinstance(exc, errors.RevisionNotFoundError | errors.EntryNotFoundError):
        return PullFailed(f"pull model manifest: {repo}: {exc}")
    return PullFailed(f"pull model manifest: downloading {repo} failed: {type(exc).__name__}: {exc}")
