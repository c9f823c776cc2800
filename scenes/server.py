"""`deepfusion scenes serve`: an HTTP image server on loopback with faults injected per URL.

Routes (the URL says what happens, so a URL list fixes the faults of a run):
    /images/<scene>.png           the scene, 200, image/png
    /dup/<row>/<scene>.png        the same bytes under another URL (exact duplicate)
    /near/<row>/<scene>.jpg       a JPEG re-encode of the scene (near duplicate)
    /fault/<name>/<scene>.<ext>   the fault <name> of faults.FAULTS
    /health, /stats               liveness; request counts per route (for tests)

`ScenesServer.hold()` makes the image routes wait until `release()` (health and stats still
answer): a test can stop a job at "requests sent, nothing answered yet" without racing it.

Built on aiohttp: one event loop serves thousands of requests a second and holds slow or hung
connections without a thread each, so the server is not what limits a download benchmark. Run
several processes on one port with `workers` (SO_REUSEPORT) when one core is not enough.
"""

from __future__ import annotations

import asyncio
import collections
import io
import multiprocessing as mp
import threading
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

from aiohttp import web
from PIL import Image

from .corpus import load_corpus_info
from .faults import FAULTS
from .variants import ENCODINGS

GATE = web.AppKey("gate", asyncio.Event)
STATS = web.AppKey("stats", collections.Counter)
HTML_PAGE = b"<!doctype html><html><body><h1>Sign in to see this image</h1></body></html>"


class SceneImages:
    """Base renders from the corpus folder and their encodings, cached in memory."""

    def __init__(self, folder: Path):
        self.folder = folder

    @lru_cache(maxsize=65536)
    def base_png(self, scene_id: str) -> bytes:
        path = self.folder / "images" / f"{scene_id}.png"
        if not path.is_file() or path.parent != self.folder / "images":
            raise web.HTTPNotFound(text=f"no scene {scene_id}")
        return path.read_bytes()

    @lru_cache(maxsize=4096)
    def encoded(self, scene_id: str, encoding: str) -> tuple[bytes, str]:
        encoder, content_type = ENCODINGS[encoding]
        if encoding == "png":
            return self.base_png(scene_id), content_type
        with Image.open(io.BytesIO(self.base_png(scene_id))) as img:
            return encoder(img.convert("RGB")), content_type


def _scene_id(name: str) -> str:
    stem = name.rsplit(".", 1)[0]
    if not stem or "/" in stem or stem.startswith("."):
        raise web.HTTPNotFound()
    return stem


def make_app(folder: str | Path, hang_seconds: float = 30.0, drip_interval: float = 0.5) -> web.Application:
    folder = Path(folder).resolve()
    images = SceneImages(folder)
    stats: collections.Counter = collections.Counter()
    gate = asyncio.Event()
    gate.set()

    @web.middleware
    async def held(request: web.Request, handler):
        if request.path not in ("/health", "/stats"):
            stats["arrived"] += 1
            await gate.wait()
        return await handler(request)

    async def image(request: web.Request) -> web.Response:
        stats["images"] += 1
        return web.Response(body=images.base_png(_scene_id(request.match_info["name"])), content_type="image/png")

    async def dup(request: web.Request) -> web.Response:
        stats["dup"] += 1
        return web.Response(body=images.base_png(_scene_id(request.match_info["name"])), content_type="image/png")

    async def near(request: web.Request) -> web.Response:
        stats["near"] += 1
        body, ctype = images.encoded(_scene_id(request.match_info["name"]), "near_duplicate")
        return web.Response(body=body, content_type=ctype)

    async def fault(request: web.Request) -> web.StreamResponse:
        name = request.match_info["fault"]
        sid = _scene_id(request.match_info["name"])
        stats[f"fault/{name}"] += 1
        if name not in FAULTS:
            raise web.HTTPNotFound(text=f"unknown fault {name}")
        f = FAULTS[name]
        if name == "http_404":
            raise web.HTTPNotFound(text="not found")
        if name == "http_500":
            raise web.HTTPInternalServerError(text="server error")
        if name == "timeout":
            await asyncio.sleep(hang_seconds)
            return web.Response(body=images.base_png(sid), content_type="image/png")
        if name == "redirect":
            raise web.HTTPFound(location=f"/images/{sid}.png")
        if name == "redirect_loop":
            raise web.HTTPFound(location=str(request.rel_url))
        if name == "html":
            return web.Response(body=HTML_PAGE, content_type="text/html")
        if name in ("slow_body", "truncated"):
            body = images.base_png(sid)
            resp = web.StreamResponse(headers={"Content-Type": "image/png"})
            resp.content_length = len(body)
            await resp.prepare(request)
            try:
                if name == "truncated":
                    await resp.write(body[: len(body) // 2])
                    request.transport.close()  # hang up mid-body
                    return resp
                for i in range(0, len(body), 64):  # 64 bytes per interval: minutes per image
                    await resp.write(body[i : i + 64])
                    await asyncio.sleep(drip_interval)
                await resp.write_eof()
            except (ConnectionResetError, RuntimeError, AttributeError):
                pass  # the client gave up, as it should
            return resp
        body, ctype = images.encoded(sid, f.encoding)
        headers = {"X-Robots-Tag": "noai, noimageai"} if name == "noai" else {}
        return web.Response(body=body, headers={"Content-Type": f.content_type or ctype, **headers})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "corpus": str(folder)})

    async def get_stats(request: web.Request) -> web.Response:
        return web.json_response(dict(stats))

    app = web.Application(middlewares=[held])
    app[GATE] = gate
    app[STATS] = stats
    app.add_routes(
        [
            web.get("/images/{name}", image),
            web.get("/dup/{row}/{name}", dup),
            web.get("/near/{row}/{name}", near),
            web.get("/fault/{fault}/{name}", fault),
            web.get("/health", health),
            web.get("/stats", get_stats),
        ]
    )
    return app


def base_url_of(folder: str | Path) -> tuple[str, int]:
    parsed = urlparse(load_corpus_info(folder)["config"]["base_url"])
    return parsed.hostname or "127.0.0.1", parsed.port or 80


class ScenesServer:
    """The server on a background thread of this process (for tests and the demo).

    >>> with ScenesServer(folder) as server:
    ...     requests.get(server.url + "/health")
    """

    def __init__(self, folder: str | Path, host: str | None = None, port: int | None = None, **app_kw):
        default_host, default_port = base_url_of(folder)
        self.host = host or default_host
        self.port = default_port if port is None else port
        self.app = make_app(folder, **app_kw)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scenes-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # resolves port 0
        self._runner = runner
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    def start(self) -> "ScenesServer":
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the scenes server did not start within 30 s")
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)

    def hold(self) -> None:
        """Image requests wait (unanswered) from now until `release()`."""
        self._loop.call_soon_threadsafe(self.app[GATE].clear)

    def release(self) -> None:
        self._loop.call_soon_threadsafe(self.app[GATE].set)

    def requests_arrived(self) -> int:
        """Image requests received so far, answered or held."""
        return self.app[STATS]["arrived"]

    def __enter__(self) -> "ScenesServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _serve_process(folder: str, host: str, port: int, reuse_port: bool) -> None:
    web.run_app(make_app(folder), host=host, port=port, reuse_port=reuse_port, print=None, access_log=None)


def serve_forever(folder: str | Path, host: str | None = None, port: int | None = None, workers: int = 1) -> None:
    default_host, default_port = base_url_of(folder)
    host, port = host or default_host, default_port if port is None else port
    print(f"serving {folder} on http://{host}:{port} with {workers} process(es); Ctrl-C stops", flush=True)
    if workers <= 1:
        _serve_process(str(folder), host, port, False)
        return
    procs = [mp.get_context("spawn").Process(target=_serve_process, args=(str(folder), host, port, True)) for _ in range(workers)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
