"""``/api/pull`` and ``/api/delete``: weights of library and managed models in the Hugging
Face cache (proxy/managed/hub.py downloads, proxy/managed/weights.py finds and removes).

Pull answers as Ollama's server/routes.go PullHandler does: a stream of progress objects
ending in ``{"status":"success"}``, or with ``stream: false`` only that object. An unknown
name is Ollama's ``pull model manifest: file does not exist``: an error line after
``pulling manifest`` when streaming, a 500 otherwise.
"""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web

from proxy import errors, names
from proxy.handlers import model_name, read_json, stream_flag, unknown
from proxy.managed import hub, weights
from proxy.state import CONTEXT, MANAGED, live
from proxy.streaming import NDJSON, json_response
from proxy.translate import fields

routes = web.RouteTableDef()
UNKNOWN_PULL = "pull model manifest: file does not exist"


@routes.post("/api/pull")
async def pull(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, "PullRequest")
    fields.check(body, fields.PULL, "PullRequest")  # `insecure` is accepted: Hugging Face is always https
    name = model_name(body, "PullRequest")
    if not name:
        raise errors.BadRequest("model is required")
    if names.parse(name) is None:
        raise errors.BadRequest("invalid model name")
    stream = stream_flag(body, "PullRequest")
    request[CONTEXT].log["model"] = name
    registry = live(request).registry
    repo = registry.library_repo(name)
    route = registry.resolve(name)
    if repo is None and route is None:
        await live(request).discovery.refresh_if_stale()
        route = registry.resolve(name)
    if route is not None and not route.managed:
        repo = None  # a backend serves the name, even if the catalog knows it too
    if repo is None or weights.is_path(repo):
        if route is not None:  # served already (a backend, or a managed model on a local path): nothing to download
            return _lines(request, [{"status": "pulling manifest"}, {"status": "success"}], stream)
        if registry.unreachable():
            raise unknown(registry, "pull", name)
        if not stream:
            raise errors.ProxyError(UNKNOWN_PULL)
        request[CONTEXT].log["error"] = UNKNOWN_PULL  # the stream's last line: the log line says so too
        return _lines(request, [{"status": "pulling manifest"}, {"error": UNKNOWN_PULL}], stream)
    request[CONTEXT].log["repo"] = repo
    progress = hub.pull(repo)
    if not stream:
        async for _ in progress:
            pass
        return json_response({"status": "success"})
    response = web.StreamResponse(headers={"Content-Type": NDJSON})
    await response.prepare(request)
    request[CONTEXT].response = response  # from here on an error ends the stream with one {"error"} line
    try:
        async for line in progress:
            await response.write(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))
    finally:
        await progress.aclose()  # a client hang-up stops the download
    await response.write_eof()
    return response


@routes.delete("/api/delete")
async def delete(request: web.Request) -> web.Response:
    """A managed or library model: stop it, then remove its weights from the Hugging Face
    cache when ``delete_weights: true``. Ollama answers 200 with an empty body, 404 for
    a name it does not have."""
    body = await read_json(request, "DeleteRequest")
    fields.check(body, fields.PULL, "DeleteRequest")
    name = model_name(body, "DeleteRequest")
    if not name:
        raise errors.BadRequest("model is required")
    request[CONTEXT].log["model"] = name
    registry = live(request).registry
    route = registry.resolve(name)
    repo = registry.library_repo(name)
    if route is None:
        raise errors.not_found("delete", name)
    if not route.managed or repo is None:
        raise errors.NotSupported("deleting models is not supported: stop the vLLM server that serves it, or remove "
                                  "its alias from the proxy's config.yaml")  # fmt: skip
    if not live(request).config.library.delete_weights:
        raise errors.NotSupported(f"deleting the weights of {name} ({repo}) is off: set delete_weights: true in "
                                  "the proxy's config.yaml, or remove them with `hf cache delete`")  # fmt: skip
    if weights.is_path(repo):
        raise errors.NotSupported(f"{name} runs from the local path {repo}: the proxy does not delete it")
    await request.app[MANAGED].unload(route.facts.name)
    await asyncio.to_thread(weights.remove, repo)
    return web.Response(status=200)


def _lines(request: web.Request, lines: list[dict[str, str]], stream: bool) -> web.Response:
    if not stream:
        return json_response(lines[-1])
    return web.Response(body=b"".join(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE) for line in lines),
                        content_type=NDJSON)  # fmt: skip
