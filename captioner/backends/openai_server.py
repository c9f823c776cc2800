"""Backend 2: any OpenAI-compatible chat endpoint (typically a vLLM server the user runs).

Requests go out concurrently (at most `server.concurrency` in flight), each with a timeout. A
connection error, timeout, 429 or 5xx is retried with exponential backoff and full jitter. When
retries run out on connection errors or timeouts the server is gone: the batch raises
ServerUnavailable and the run stops without recording anything for the batch (a rerun resumes);
an HTTP error that persists for one request becomes that image's failure reason instead.
"""

from __future__ import annotations

import asyncio
import logging
import random

import openai

from ..answers import Answer, Request
from ..config import SamplingConfig, ServerConfig
from ..images import data_url
from ..prompts import PromptSet

log = logging.getLogger(__name__)
GUIDED_VIA = ("vllm", "response_format", "none")


class ServerUnavailable(RuntimeError):
    """The endpoint did not answer after every retry: stop the run (a rerun resumes)."""


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
        return {"extra_body": {"structured_outputs": so}}

    def __call__(self, requests: list[Request], images: list) -> list[Answer]:
        return asyncio.run(self._all(requests, images))

    async def _all(self, requests: list[Request], images: list) -> list[Answer]:
        urls: dict[int, str] = {}
        for r in requests:  # each image is encoded once, however many levels ask about it
            if r.index not in urls:
                urls[r.index] = data_url(images[r.index], self.server.image_format)
        gate = asyncio.Semaphore(self.server.concurrency)
        async with openai.AsyncOpenAI(base_url=self.server.base_url, api_key=self.server.api_key,
                                      timeout=self.server.timeout_s, max_retries=0) as client:
            tasks = [asyncio.ensure_future(self._one(client, gate, r, urls[r.index])) for r in requests]
            try:
                return await asyncio.gather(*tasks)
            except BaseException:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise

    async def _one(self, client, gate: asyncio.Semaphore, req: Request, url: str) -> Answer:
        messages = []
        if self.prompts.system:
            messages.append({"role": "system", "content": self.prompts.system})
        messages.append({"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                     {"type": "text", "text": self.texts[req.slot]}]})
        s = self.sampling
        kwargs = dict(model=self.model, messages=messages, max_tokens=s.max_tokens, temperature=s.temperature,
                      top_p=s.top_p, **self.constraints[req.slot])
        if req.seed is not None:
            kwargs["seed"] = req.seed
        attempt = 0
        while True:
            try:
                async with gate:
                    resp = await client.chat.completions.create(**kwargs)
                choice = resp.choices[0]
                usage = resp.usage
                return Answer(text=choice.message.content or "", finish_reason=choice.finish_reason or "stop",
                              prompt_tokens=usage.prompt_tokens if usage else 0,
                              completion_tokens=usage.completion_tokens if usage else 0)
            except (openai.APIConnectionError, openai.APITimeoutError) as e:  # the server is not answering
                if attempt >= self.server.retries:
                    raise ServerUnavailable(f"{self.server.base_url}: {type(e).__name__} after {attempt + 1} "
                                            f"attempt(s): {e}") from e
                failure = e
            except (openai.RateLimitError, openai.InternalServerError) as e:  # busy or broken: try again
                if attempt >= self.server.retries:
                    return Answer("", "error", error=f"http_{e.status_code}: {str(e)[:200]}")
                failure = e
            except openai.APIStatusError as e:  # 4xx: this request will not get better by asking again
                return Answer("", "error", error=f"http_{e.status_code}: {str(e)[:200]}")
            delay = random.uniform(0, min(self.server.max_backoff_s, self.server.backoff_s * 2**attempt))
            log.warning("request %s/%s failed (%s); retry %d in %.1f s", req.index, req.slot,
                        type(failure).__name__, attempt + 1, delay)
            attempt += 1
            await asyncio.sleep(delay)
