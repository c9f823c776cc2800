"""Checking a VLM's answer before it becomes a caption row.

Guided decoding makes the joint answer parse, but a server may ignore the schema, a per-level
answer is free text, and a model can echo the prompt or write six copies of one sentence. An
answer passes when every level is present, non-empty, inside its word range, the levels grow
longer from 1 to 6 (never shorter than the level before, level 6 longer than level 1), and no
level repeats the prompt's own words. A failed check names its reason; the caller retries a
bounded number of times and then records the row as failed with that reason and the raw text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .prompts import PromptSet

_SPACE = re.compile(r"\s+")


def words(text: str) -> int:
    return len(text.split())


def normalise(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


@dataclass(frozen=True)
class Verdict:
    levels: dict[str, str] | None  # level_1..level_6 when ok
    error: str | None  # machine-friendly reason when not ok, e.g. not_json, level_3_over_budget

    @property
    def ok(self) -> bool:
        return self.error is None


def parse_joint(raw: str) -> dict | None:
    """The JSON object in a joint answer (tolerating a ```json fence around it), or None."""
    text = raw.strip()
    if text.startswith("```"):
        text = text.strip("`")
        text = text[4:] if text.startswith("json") else text
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        start, end = text.find("{"), text.rfind("}")
        if start < 0 or end <= start:
            return None
        try:
            value = json.loads(text[start : end + 1])
        except (json.JSONDecodeError, ValueError):
            return None
    return value if isinstance(value, dict) else None


def check_levels(levels: dict, prompts: PromptSet) -> Verdict:
    out: dict[str, str] = {}
    for lv in prompts.levels:
        value = levels.get(lv.column)
        if not isinstance(value, str) or not normalise(value):
            return Verdict(None, f"{lv.column}_missing")
        text = normalise(value)
        n = words(text)
        if n > lv.budget:
            return Verdict(None, f"{lv.column}_over_budget")
        if n < lv.min_words:
            return Verdict(None, f"{lv.column}_under_minimum")
        if _echoes(text, prompts):
            return Verdict(None, f"{lv.column}_echoes_prompt")
        out[lv.column] = text
    counts = [words(out[lv.column]) for lv in prompts.levels]
    if any(b < a for a, b in zip(counts, counts[1:])) or counts[-1] <= counts[0]:
        return Verdict(None, "levels_not_increasing")
    return Verdict(out, None)


def _echoes(text: str, prompts: PromptSet) -> bool:
    """True when the text contains a long verbatim run (8+ words) of the prompt set's own words."""
    t = text.lower().split()
    if len(t) < 8:
        return False
    grams = _prompt_grams(prompts)
    return any(" ".join(t[i : i + 8]) in grams for i in range(len(t) - 7))


_GRAMS: dict[str, set[str]] = {}


def _prompt_grams(prompts: PromptSet) -> set[str]:
    if prompts.ref not in _GRAMS:
        source = " ".join([prompts.system, prompts.joint_prompt()] + [prompts.level_prompt(lv) for lv in prompts.levels])
        t = normalise(source).lower().split()
        _GRAMS[prompts.ref] = {" ".join(t[i : i + 8]) for i in range(max(0, len(t) - 7))}
    return _GRAMS[prompts.ref]


def validate_joint(raw: str, prompts: PromptSet) -> Verdict:
    value = parse_joint(raw)
    if value is None:
        return Verdict(None, "not_json")
    return check_levels(value, prompts)


def validate_per_level(answers: dict[str, str], prompts: PromptSet) -> Verdict:
    return check_levels(answers, prompts)
