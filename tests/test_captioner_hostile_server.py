"""The OpenAI backend against a hostile OpenAI-compatible server on 127.0.0.1.

The server (started by the test, stops itself after a bounded time) answers by image: "good"
images get a valid answer, "flaky" images get a malformed answer first and a good one after,
"broken" images never get a good answer, each kind of malformation in turn: an empty `choices`
list, a body that is not JSON, wrong types, no usage, an oversize body, invalid UTF-8, a
connection reset, a timeout, a 500. The caption run must complete, every row ok or failed with
the reason, and the run must not stop as "server unavailable" while the server answers.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import io
import json
import threading
import time

import pytest
from aiohttp import web
from conftest import free_port, scenes_dataset

from captioner.config import ImageConfig, load_caption_config
from captioner.images import prepare
from captioner.run import caption
from datapipe.contract import CaptionSet, Dataset

MALFORMED = ["empty_choices", "not_json", "wrong_types", "no_usage", "oversize", "invalid_utf8", "reset", "timeout",
             "http_500", "html_200", "choices_not_list", "truncated_json"]
EXPECTED_REASON = {"empty_choices": "bad_response", "not_json": "not_json", "wrong_types": "bad_response",
                   "no_usage": "bad_response", "oversize": "oversize_body", "invalid_utf8": "invalid_utf8",
                   "reset": "connection_error", "timeout": "timeout", "http_500": "http_500", "html_200": "not_json",
                   "choices_not_list": "bad_response", "truncated_json": "not_json"}


def _good_answer() -> str:
    words = ["red", "circle", "on", "white", "plain", "background", "flat", "shape", "simple", "centre", "picture", "one"]
    return json.dumps({f"level_{i}": " ".join(words[: 2 * i]) for i in range(1, 7)})  # 2, 4, ... 12 words


class HostileServer:
    def __init__(self, port: int, classes: dict[str, str], lifetime_s: float = 300):
        self.port, self.classes, self.lifetime_s = port, classes, lifetime_s
        self.requests = collections.Counter()  # image hash -> requests seen
        self.served = collections.Counter()  # behaviour -> times
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.ready = threading.Event()

    def behaviour(self, image: str) -> str:
        kind = self.classes.get(image, "good")
        n = self.requests[image]
        self.requests[image] += 1
        if kind == "good":
            return "good"
        if kind == "flaky":
            return MALFORMED[(int(image[6:12], 16) + n) % len(MALFORMED)] if n < 2 else "good"
        return MALFORMED[(int(image[:6], 16) + n) % len(MALFORMED)]  # broken: never good

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        url = body["messages"][-1]["content"][0]["image_url"]["url"]
        image = hashlib.sha256(base64.b64decode(url.split(",", 1)[1])).hexdigest()
        what = self.behaviour(image)
        self.served[what] += 1
        good = {"id": "x", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": _good_answer()},
                             "finish_reason": "stop"}], "usage": {"prompt_tokens": 10, "completion_tokens": 20}}
        if what == "good":
            return web.json_response(good)
        if what == "empty_choices":
            return web.json_response({**good, "choices": []})
        if what == "not_json":
            return web.Response(body=b"upstream hiccup SECRETBODY", content_type="application/json")
        if what == "html_200":
            return web.Response(body=b"<html>SECRETBODY</html>", content_type="text/html")
        if what == "truncated_json":
            return web.Response(body=json.dumps(good).encode()[:40], content_type="application/json")
        if what == "wrong_types":
            return web.json_response({**good, "choices": [{"message": {"content": 12345}, "finish_reason": 7}]})
        if what == "choices_not_list":
            return web.json_response({**good, "choices": {"0": "SECRETBODY"}})
        if what == "no_usage":
            return web.json_response({k: v for k, v in good.items() if k != "usage"})
        if what == "oversize":
            return web.json_response({**good, "padding": "x" * 300_000})
        if what == "invalid_utf8":
            return web.Response(body=b'{"choices": "\xff\xfe\xfa SECRETBODY"}', content_type="application/json")
        if what == "reset":
            request.transport.close()
            return web.Response(status=200)
        if what == "timeout":
            await asyncio.sleep(5)
            return web.json_response(good)
        if what == "http_500":
            return web.Response(status=500, text="SECRETBODY stack trace")
        raise AssertionError(what)

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "hostile"}]})

    def _run(self):
        asyncio.set_event_loop(self.loop)
        app = web.Application(client_max_size=64 << 20)
        app.add_routes([web.post("/v1/chat/completions", self.chat), web.get("/v1/models", self.models)])
        runner = web.AppRunner(app, access_log=None)
        self.loop.run_until_complete(runner.setup())
        self.loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self.ready.set()
        self.loop.call_later(self.lifetime_s, self.loop.stop)  # bounded: stops itself
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())

    def __enter__(self):
        self.thread.start()
        assert self.ready.wait(30)
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


def test_malformed_answers_fail_attempts_not_the_run(tmp_path, tiny_prompt_set):
    root = scenes_dataset(tmp_path, n=24, sizes="64x64", shard_size=8)
    ds = Dataset(str(root))
    # which image is which: the hash of the JPEG the client sends (the backend's own encoding)
    classes, by_key = {}, {}
    for shard in ds.shards:
        for i, sample in enumerate(ds.samples(shard.id)):
            buf = io.BytesIO()
            prepare(sample.image, ImageConfig()).save(buf, format="JPEG", quality=92)
            h = hashlib.sha256(buf.getvalue()).hexdigest()
            kind = ("good", "flaky", "broken")[i % 3]
            classes[h], by_key[sample.key] = kind, kind
    port = free_port()
    args = [f"root={root}", "version=hostile", "backend=openai", "model=hostile", f"prompt_set={tiny_prompt_set}",
            f"server.base_url=http://127.0.0.1:{port}/v1", "server.concurrency=4", "server.retries=1",
            "server.backoff_s=0.05", "server.max_backoff_s=0.1", "server.timeout_s=1.5",
            "server.max_response_bytes=100000", "server.unavailable_after=3", "max_attempts=3", "progress=false"]
    t0 = time.time()
    with HostileServer(port, classes) as server:
        summary = caption(load_caption_config(None, args))
    assert time.time() - t0 < 240
    run = summary["this_run"]
    assert run["rows"] == 24 and run["ok"] + sum(run["failed"].values()) == 24
    rows = {r["key"]: r for s in ds.shards for r in CaptionSet(ds.storage, "hostile").shard(s.id).to_pylist()}
    assert set(rows) == set(by_key)
    for key, row in rows.items():
        if by_key[key] == "broken":
            assert row["status"] == "failed", row
            reason = row["error"].split(":")[0]
            assert reason in set(EXPECTED_REASON.values()), row["error"]
            assert "SECRETBODY" not in (row["error"] or "") + (row["raw"] or "")
        else:
            assert row["status"] == "ok", (by_key[key], row["error"])
    served = set(server.served)
    assert set(MALFORMED) <= served, f"not every malformed kind was served: {set(MALFORMED) - served}"


def test_a_server_that_stops_answering_is_unavailable(tmp_path, tiny_prompt_set):
    from captioner.backends.openai_server import ServerUnavailable

    root = scenes_dataset(tmp_path, n=4, sizes="64x64", shard_size=4)
    args = [f"root={root}", "version=gone", "backend=openai", "model=x", f"prompt_set={tiny_prompt_set}",
            f"server.base_url=http://127.0.0.1:{free_port()}/v1", "server.retries=1", "server.backoff_s=0.01",
            "server.unavailable_after=2", "progress=false"]
    with pytest.raises(ServerUnavailable, match="connection refused"):
        caption(load_caption_config(None, args))
