"""Backend 2: any OpenAI-compatible chat endpoint (typically a vLLM server the user runs).

Requests go out concurrently (at most `server.concurrency` in flight), each with a timeout, over
aiohttp, so every byte of an answer is checked before it is believed. An answer is one of:
- good: HTTP 200, a body within `max_response_bytes`, valid UTF-8, a JSON object with a non-empty
  `choices` list whose first `message.content` is a string, a string (or null) `finish_reason`,
  and integer `usage` token counts (unless `require_usage` is off);
- a failed attempt, with a reason: `connection_error`, `timeout`, `http_<code>`, `oversize_body`,
  `invalid_utf8`, `not_json`, `bad_response` (the part that was wrong). Connection errors,
  timeouts, 429, 5xx and malformed bodies are retried with exponential backoff and full jitter up
  to `retries` times; then the request's image gets the reason, and the caption step asks again
  up to `max_attempts` before recording a failed row. A 4xx other than 429 is not retried.
Nothing a server sends is copied into errors or logs: reasons and details are ours.

"Server unavailable" (the run stops with exit code 1, committed shards kept, a rerun resumes)
means the server as a whole stopped answering, not that one request failed: after
`unavailable_after` consecutive connection errors or timeouts across all requests (any answer
in between resets the count), a health probe (GET <base_url>/models) decides; if the probe gets
an HTTP answer, the run goes on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random

import aiohttp

from ..answers import Answer, Request
from ..config import SamplingConfig, ServerConfig
from ..images import data_url
from ..prompts import PromptSet

log = logging.getLogger(__name__)
GUIDED_VIA = ("vllm", "response_format", "none")


class ServerUnavailable(RuntimeError):
    """The endpoint stopped answering altogether: stop the run (a rerun resumes)."""


class Failure(Exception):
    """One failed attempt: `reason` (machine-friendly), `detail` (ours), whether to retry, and
    whether it says the server is not answering at all (connection error, timeout)."""

    def __init__(self, reason: str, detail: str, retry: bool = True, silent: bool = False):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.retry, self.silent = reason, detail, retry, silent


def parse_completion(status: int, body: bytes, require_usage: bool) -> Answer:
    """An HTTP answer to a /chat/completions request -> Answer, or Failure naming what was wrong."""
    if status != 200:
        raise Failure(f"http_{status}", f"status {status}", retry=status == 429 or status >= 500)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Failure("invalid_utf8", f"{len(body)}-byte body is not valid UTF-8") from None
    try:
        value = json.loads(text)
    except ValueError:
        raise Failure("not_json", f"{len(body)}-byte body is not JSON") from None
    if not isinstance(value, dict):
        raise Failure("bad_response", f"body is a JSON {type(value).__name__}, not an object")
    choices = value.get("choices")
    if not isinstance(choices, list) or not choices:
        raise Failure("bad_response", "empty or missing choices")
    choice = choices[0]
    message = choice.get("message") if isinstance(choice, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise Failure("bad_response", f"choices[0].message.content is {type(content).__name__}, not a string")
    finish = choice.get("finish_reason")
    if finish is not None and not isinstance(finish, str):
        raise Failure("bad_response", f"finish_reason is {type(finish).__name__}")
    usage = value.get("usage")
    tokens = {}
    if usage is None:
        if require_usage:
            raise Failure("bad_response", "no usage")
    elif isinstance(usage, dict):
        for name in ("prompt_tokens", "completion_tokens"):
            n = usage.get(name, 0)
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise Failure("bad_response", f"usage.{name} is not a non-negative integer")
            tokens[name] = n
    else:
        raise Failure("bad_response", "usage is not an object")
    return Answer(text=content, finish_reason=(finish or "stop")[:32], prompt_tokens=tokens.get("prompt_tokens", 0),
                  completion_tokens=tokens.get("completion_tokens", 0))


class Health:
    """Consecutive silent failures across requests; at the threshold a probe decides whether the
    server is gone (ServerUnavailable) or only those requests failed."""

    def __init__(self, server: ServerConfig):
        self.server = server
        self.silent = 0
        self._probe: asyncio.Lock | None = None

    def answered(self) -> None:
        self.silent = 0

    async def failed_silently(self, session: aiohttp.ClientSession, failure: Failure) -> None:
        self.silent += 1
        if self.silent < self.server.unavailable_after:
            return
        self._probe = self._probe or asyncio.Lock()
        async with self._probe:
            if self.silent < self.server.unavailable_after:
                return  # another request's probe already decided, and something answered since
            url = self.server.base_url.rstrip("/") + "/models"
            try:
                async with session.get(url, headers=_auth(self.server), timeout=aiohttp.ClientTimeout(total=10)) as r:
                    await r.content.read(1024)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
                raise ServerUnavailable(
                    f"{self.server.base_url}: {self.silent} requests in a row got {failure.reason} "
                    f"({failure.detail}) and the health probe failed too ({_connection_error(e)})") from None
            log.warning("%d requests in a row failed (%s) but the server answers its health probe: going on",
                        self.silent, failure.reason)
            self.silent = 0


def _auth(server: ServerConfig) -> dict:
    return {"Authorization": f"Bearer {server.api_key}"} if server.api_key else {}


def _connection_error(e: BaseException) -> str:
    if isinstance(e, asyncio.TimeoutError):
        return "timeout"
    if isinstance(e, aiohttp.ClientConnectorError):
        return "connection refused" if isinstance(e.os_error, ConnectionRefusedError) else "cannot connect"
    return type(e).__name__


class OpenAIGenerate:
    """`Generate` over an OpenAI-compatible /chat/completions endpoint."""

    def __init__(self, server: ServerConfig, model: str, prompts: PromptSet, strategy: str, sampling: SamplingConfig):
        if server.guided_via not in GUIDED_VIA:
            raise ValueError(f"server.guided_via must be one of {GUIDED_VIA}, got {server.guided_via!r}")
        self.server, self.model, self.sampling = server, model, sampling
        self.prompts = prompts
        self.texts = dict(prompts.prompts(strategy))
        self.levels = {lv.column: lv for lv in prompts.levels}
        # built once, not per request (the joint grammar takes ~2 s to convert)
        self.constraints = {slot: self._constraint(slot) for slot in self.texts}
        self.health = Health(server)

    def _constraint(self, slot: str) -> dict:
        """Extra request fields that hold the answer to the schema (joint) or word range (a level)."""
        if not self.sampling.guided or self.server.guided_via == "none":
            return {}
        if self.server.guided_via == "response_format":
            if slot != "joint":
                return {}
            schema = {"name": "six_levels", "schema": self.prompts.json_schema(), "strict": True}
            return {"response_format": {"type": "json_schema", "json_schema": schema}}
        if slot == "joint":
            so = {"grammar": self.prompts.json_grammar()}  # the schema's grammar: see PromptSet.json_grammar
        else:
            so = {"regex": self.prompts.level_pattern(self.levels[slot])}
        return {"structured_outputs": so}

    def __call__(self, requests: list[Request], images: list) -> list[Answer]:
        return asyncio.run(self._all(requests, images))

    async def _all(self, requests: list[Request], images: list) -> list[Answer]:
        urls: dict[int, str] = {}
        for r in requests:  # each image is encoded once, however many levels ask about it
            if r.index not in urls:
                urls[r.index] = data_url(images[r.index], self.server.image_format)
        gate = asyncio.Semaphore(self.server.concurrency)
        connector = aiohttp.TCPConnector(limit=self.server.concurrency, force_close=False)
        async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
            tasks = [asyncio.ensure_future(self._one(session, gate, r, urls[r.index])) for r in requests]
            try:
                return await asyncio.gather(*tasks)
            except BaseException:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise

    def _payload(self, req: Request, url: str) -> dict:
        messages = []
        if self.prompts.system:
            messages.append({"role": "system", "content": self.prompts.system})
        messages.append({"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                     {"type": "text", "text": self.texts[req.slot]}]})
        s = self.sampling
        payload = dict(model=self.model, messages=messages, max_tokens=s.max_tokens, temperature=s.temperature,
                       top_p=s.top_p, **self.constraints[req.slot])
        if req.seed is not None:
            payload["seed"] = req.seed
        return payload

    async def _post(self, session: aiohttp.ClientSession, payload: dict) -> Answer:
        s = self.server
        try:
            async with session.post(s.base_url.rstrip("/") + "/chat/completions", json=payload, headers=_auth(s),
                                    timeout=aiohttp.ClientTimeout(total=s.timeout_s)) as r:
                body = await r.content.read(s.max_response_bytes + 1)
                if len(body) > s.max_response_bytes:
                    raise Failure("oversize_body", f"more than max_response_bytes {s.max_response_bytes}")
                return parse_completion(r.status, body, s.require_usage)
        except Failure:
            raise
        except asyncio.TimeoutError:
            raise Failure("timeout", f"no complete answer within {s.timeout_s:g} s", silent=True) from None
        except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError,
                ConnectionError) as e:
            raise Failure("connection_error", _connection_error(e), silent=True) from None
        except aiohttp.ClientPayloadError:
            raise Failure("connection_error", "the connection broke while the body was read", silent=True) from None
        except (aiohttp.ClientError, ValueError) as e:  # a malformed status line, headers, chunking ...
            raise Failure("bad_response", f"malformed HTTP response ({type(e).__name__})") from None

    async def _one(self, session, gate: asyncio.Semaphore, req: Request, url: str) -> Answer:
        payload = self._payload(req, url)
        attempt = 0
        while True:
            try:
                async with gate:
                    answer = await self._post(session, payload)
                self.health.answered()
                return answer
            except Failure as e:
                failure = e
                if failure.silent:
                    await self.health.failed_silently(session, failure)  # raises ServerUnavailable
                else:
                    self.health.answered()  # the server answered, if badly
                if not failure.retry or attempt >= self.server.retries:
                    return Answer("", "error", error=f"{failure.reason}: {failure.detail}")
            delay = random.uniform(0, min(self.server.max_backoff_s, self.server.backoff_s * 2**attempt))
            log.warning("request %s/%s failed (%s); retry %d in %.1f s", req.index, req.slot, failure.reason,
                        attempt + 1, delay)
            attempt += 1
            await asyncio.sleep(delay)
