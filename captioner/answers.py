"""From images to caption rows with any backend: requests per strategy, validation, bounded retries.

A backend only turns requests into raw answers (`Generate`). This module decides what to ask
(one joint request per image, or one per level), checks every answer, asks again for the images
whose answer failed (with a new seed, so a deterministic sampler does not repeat itself), and
after `max_attempts` records a failed row with the last reason and raw text. Every image handed
in comes back as exactly one row, ok or failed: nothing is dropped.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from datapipe.contract import CAPTION_STATUS_FAILED, CAPTION_STATUS_OK

from .prompts import PromptSet
from .validate import Verdict, validate_joint, validate_per_level


@dataclass(frozen=True)
class Request:
    index: int  # which image of the batch
    slot: str  # "joint" or the level column it fills
    prompt: str  # the user text (the system prompt comes from the prompt set)
    seed: int | None


@dataclass(frozen=True)
class Answer:
    text: str
    finish_reason: str = "stop"  # stop | length | error
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None  # a transport failure the backend gave up on (after its own retries)


# A backend's whole job: answer these requests about these images, one Answer per request, in order.
Generate = Callable[[list[Request], list], list[Answer]]


def request_seed(base: int | None, key: str, slot: str, attempt: int) -> int | None:
    """A seed per (key, level, attempt): reproducible, independent of batching, new on retry."""
    if base is None:
        return None
    h = hashlib.blake2b(f"{base}/{key}/{slot}/{attempt}".encode(), digest_size=4).digest()
    return int.from_bytes(h, "little") & 0x7FFFFFFF


def caption_images(generate: Generate, images: list, keys: list[str], prompts: PromptSet, strategy: str,
                   max_attempts: int, seed: int | None, model: str) -> list[dict]:
    """One caption row per (key, image); asks again for invalid answers up to `max_attempts` in all."""
    slots = prompts.prompts(strategy)
    rows: dict[int, dict] = {}
    last: dict[int, tuple[Verdict, str, list[Answer]]] = {}
    pending = list(range(len(keys)))
    for attempt in range(1, max_attempts + 1):
        if not pending:
            break
        requests = [Request(i, slot, text, request_seed(seed, keys[i], slot, attempt)) for i in pending for slot, text in slots]
        answers = generate(requests, images)
        by_image: dict[int, list[tuple[Request, Answer]]] = {}
        for req, ans in zip(requests, answers, strict=True):
            by_image.setdefault(req.index, []).append((req, ans))
        still = []
        for i in pending:
            pairs = by_image[i]
            verdict, raw = _judge(pairs, prompts, strategy)
            answers_i = [a for _, a in pairs]
            if verdict.ok:
                rows[i] = _row(keys[i], verdict.levels, answers_i, attempt, model, prompts, None, None)
            else:
                last[i] = (verdict, raw, answers_i)
                still.append(i)
        pending = still
    for i in pending:
        verdict, raw, answers_i = last[i]
        rows[i] = _row(keys[i], None, answers_i, max_attempts, model, prompts, verdict.error, raw)
    return [rows[i] for i in range(len(keys))]


def _judge(pairs: list[tuple[Request, Answer]], prompts: PromptSet, strategy: str) -> tuple[Verdict, str]:
    errors = [a.error for _, a in pairs if a.error]
    if errors:
        return Verdict(None, errors[0]), ""  # the backend's own "reason: detail"
    if strategy == "joint":
        raw = pairs[0][1].text
        verdict = validate_joint(raw, prompts)
        if not verdict.ok and pairs[0][1].finish_reason == "length":
            verdict = Verdict(None, f"{verdict.error} (answer cut at max_tokens)")
        return verdict, raw
    answers = {req.slot: ans.text for req, ans in pairs}
    return validate_per_level(answers, prompts), json.dumps(answers)


def _row(key: str, levels: dict | None, answers: list[Answer], attempts: int, model: str, prompts: PromptSet,
         error: str | None, raw: str | None) -> dict:
    row = {
        "key": key,
        "status": CAPTION_STATUS_OK if levels else CAPTION_STATUS_FAILED,
        "model": model,
        "prompt_id": prompts.ref,
        "finish_reason": "length" if any(a.finish_reason == "length" for a in answers) else answers[0].finish_reason,
        "prompt_tokens": sum(a.prompt_tokens for a in answers),
        "completion_tokens": sum(a.completion_tokens for a in answers),
        "attempts": attempts,
        "error": error,
        "raw": raw,
        "created_at": datetime.now(timezone.utc),
    }
    row.update(levels or {})
    return row
