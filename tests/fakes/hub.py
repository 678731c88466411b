"""A stand-in Hugging Face Hub: the few endpoints huggingface_hub's ``model_info`` and
``hf_hub_download`` use, serving small in-memory repositories, so pulls are tested with
no network (point ``HF_ENDPOINT`` at ``url``).

- ``GET /api/models/{repo}[/revision/{rev}]``: the model info with ``siblings`` (``?blobs=true``: sizes, LFS sha256)
- ``HEAD|GET /{repo}/resolve/{rev}/{path}``: the file, with ``X-Repo-Commit``, ``ETag`` and ``Content-Length``

A repository in ``gated`` answers 403 with ``X-Error-Code: GatedRepo`` unless the request
carries ``Authorization: Bearer <token>``; unknown ones 404 with ``X-Error-Code: RepoNotFound``.
"""

from __future__ import annotations

import asyncio
import hashlib

from aiohttp import web

COMMIT = "c0ffee" + "0" * 34


class FakeHub:
    def __init__(self, repos: dict[str, dict[str, bytes]], gated: set[str] | None = None, token: str = "hf_good") -> None:
        self.repos = repos
        self.gated = gated or set()
        self.token = token
        self.chunk_delay = 0.0  # seconds per 1 KiB chunk of a GET (for hang-up tests)
        self.requests: list[str] = []
        self.sent: dict[str, int] = {}  # path → bytes sent by GETs
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(r"/api/models/{org}/{name}/revision/{rev}", self._info)
        app.router.add_get(r"/api/models/{org}/{name}", self._info)
        app.router.add_route("*", r"/{org}/{name}/resolve/{rev}/{path:.+}", self._file)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _check(self, request: web.Request) -> tuple[str, dict[str, bytes]]:
        repo = f"{request.match_info['org']}/{request.match_info['name']}"
        self.requests.append(f"{request.method} {request.path}")
        if repo not in self.repos:
            raise web.HTTPNotFound(headers={"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})
        if repo in self.gated and request.headers.get("Authorization") != f"Bearer {self.token}":
            raise web.HTTPForbidden(headers={"X-Error-Code": "GatedRepo", "X-Error-Message": "Access to model is restricted"})
        return repo, self.repos[repo]

    async def _info(self, request: web.Request) -> web.Response:
        repo, files = self._check(request)
        siblings = []
        for path, data in sorted(files.items()):
            sibling: dict[str, object] = {"rfilename": path, "size": len(data), "blobId": _git_sha(data)}
            if is_lfs(path):
                sibling["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
            siblings.append(sibling)
        return web.json_response({"id": repo, "modelId": repo, "sha": COMMIT, "private": False, "siblings": siblings})

    async def _file(self, request: web.Request) -> web.StreamResponse:
        _, files = self._check(request)
        path = request.match_info["path"]
        if path not in files:
            raise web.HTTPNotFound(headers={"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found"})
        data = files[path]
        etag = hashlib.sha256(data).hexdigest() if is_lfs(path) else _git_sha(data)
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"', "Content-Length": str(len(data)),
                   "Accept-Ranges": "bytes"}  # fmt: skip
        if request.method == "HEAD":
            return web.Response(headers=headers)
        start = 0
        if request.headers.get("Range", "").startswith("bytes="):
            start = int(request.headers["Range"][6:].split("-")[0])
            headers["Content-Length"] = str(len(data) - start)
        response = web.StreamResponse(status=206 if start else 200, headers=headers)
        await response.prepare(request)
        for offset in range(start, len(data), 1024):
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
            await response.write(data[offset : offset + 1024])
            self.sent[path] = self.sent.get(path, 0) + len(data[offset : offset + 1024])
        await response.write_eof()
        return response


def is_lfs(path: str) -> bool:
    return path.endswith((".safetensors", ".bin"))


def _git_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324 - git's object id


def tiny_repo() -> dict[str, bytes]:
    """A tiny model's files (what scripts/make_tiny_model.py writes, with stand-in
    bytes): config, tokenizer, 40 KiB of "weights", and files vLLM does not load."""
    return {
        "config.json": b'{"architectures": ["LlamaForCausalLM"], "hidden_size": 128}',
        "tokenizer.json": b'{"version": "1.0"}',
        "tokenizer_config.json": b'{"eos_token": "<|im_end|>"}',
        "model.safetensors": bytes(range(256)) * 160,
        "pytorch_model.bin": b"\x80" * 2048,  # left out: the repository has safetensors
        "original/consolidated.00.pth": b"\x80" * 2048,  # left out: not a Hugging Face checkpoint
    }
