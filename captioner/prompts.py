"""The prompt set: six caption levels as versioned data (captioner/prompts/*.yaml).

A prompt set is identified by `id@hash` (the hash covers its parsed content), recorded with every
caption row and in the version manifest, so a caption can always be traced to the exact words
that asked for it. From the set come the chat messages of both strategies and the JSON schema
that guided decoding enforces: every level a non-empty string of at most its word budget (and at
least its floor), so even a model that writes noise returns parseable, budget-respecting JSON.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from datapipe.contract import LEVEL_COLUMNS

PROMPTS_DIR = Path(__file__).parent / "prompts"
DEFAULT_PROMPT_SET = "six-levels-v1"
STRATEGIES = ("joint", "per_level")


@dataclass(frozen=True)
class Level:
    level: int
    name: str
    budget: int  # at most this many words
    min_words: int  # at least this many words
    instruction: str

    @property
    def column(self) -> str:
        return f"level_{self.level}"


@dataclass(frozen=True)
class PromptSet:
    id: str
    hash: str
    system: str
    levels: tuple[Level, ...]
    joint_template: str
    per_level_template: str
    level_line: str

    @property
    def ref(self) -> str:
        """What every caption row records: id@hash."""
        return f"{self.id}@{self.hash}"

    def as_manifest(self) -> dict[str, str]:
        return {"id": self.id, "hash": self.hash}

    def joint_prompt(self) -> str:
        lines = "\n".join(
            self.level_line.format(level=lv.level, name=lv.name, min_words=lv.min_words, budget=lv.budget,
                                   instruction=lv.instruction)
            for lv in self.levels
        )
        return self.joint_template.format(levels=lines).strip()

    def level_prompt(self, level: Level) -> str:
        return self.per_level_template.format(instruction=level.instruction, min_words=level.min_words,
                                             budget=level.budget).strip()

    def prompts(self, strategy: str) -> list[tuple[str, str]]:
        """(what the answer fills, user text) per request of one image: one for joint, six for per_level."""
        if strategy == "joint":
            return [("joint", self.joint_prompt())]
        if strategy == "per_level":
            return [(lv.column, self.level_prompt(lv)) for lv in self.levels]
        raise ValueError(f"unknown caption strategy {strategy!r}; use one of {STRATEGIES}")

    def level_pattern(self, level: Level) -> str:
        """A regex for one level's text: min_words..budget words separated by single spaces."""
        # a word: no control characters and nothing Python's str.split() treats as a space (so the
        # grammar and the validator count the same words); bounded, so noise cannot write one endless word
        word = r"[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]{1,32}"
        # xgrammar fails to compile one counted repetition above ~128: chain chunks of <= 64
        lo, hi, parts = level.min_words - 1, level.budget - 1, []
        while hi > 0:
            step = min(hi, 64)
            parts.append(f"( {word}){{{min(lo, step)},{step}}}")
            lo, hi = max(0, lo - step), hi - step
        return f"^{word}{''.join(parts)}$"

    def json_schema(self) -> dict[str, Any]:
        """The joint answer's schema: all six levels, each within its word range."""
        props = {lv.column: {"type": "string", "pattern": self.level_pattern(lv)} for lv in self.levels}
        return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}

    def json_grammar(self) -> str:
        """The joint schema as the EBNF grammar xgrammar compiles it to, without blanks between JSON
        tokens: what a vLLM engine or server is given (structured outputs `grammar`).

        vLLM's front end checks each request's constraint before queueing it by converting it: a
        JSON schema with these word-count patterns costs ~2 s of CPU per request, serially, ahead
        of the engine; a grammar is checked by parsing it (under a millisecond). The engine
        compiles, and caches, the same grammar either way. Converted once per process.
        """
        return _schema_grammar(json.dumps(self.json_schema(), sort_keys=True))


# No blanks around JSON separators: what vLLM's `disable_any_whitespace` makes its xgrammar backend
# compile a JSON schema with (vllm/v1/structured_output/backend_xgrammar.py).
JSON_SEPARATORS = (",", ":")


@functools.lru_cache(maxsize=8)
def _schema_grammar(schema: str) -> str:
    import xgrammar as xgr  # vLLM's structured-output backend; only the VLM paths need it

    return str(xgr.Grammar.from_json_schema(schema, any_whitespace=False, separators=JSON_SEPARATORS))


def prompt_set_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    bundled = PROMPTS_DIR / f"{name_or_path}.yaml"
    if bundled.exists():
        return bundled
    known = sorted(p.stem for p in PROMPTS_DIR.glob("*.yaml"))
    raise FileNotFoundError(f"prompt set {name_or_path!r}: no such file, and not a bundled set ({known})")


def load_prompt_set(name_or_path: str = DEFAULT_PROMPT_SET) -> PromptSet:
    path = prompt_set_path(name_or_path)
    raw = yaml.safe_load(path.read_text())
    digest = hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:12]
    try:
        levels = tuple(
            Level(int(n), str(spec["name"]), int(spec["budget"]), int(spec.get("min_words", 1)), str(spec["instruction"]))
            for n, spec in sorted(raw["levels"].items(), key=lambda kv: int(kv[0]))
        )
        prompt_set = PromptSet(
            id=str(raw["id"]), hash=digest, system=str(raw.get("system", "")).strip(), levels=levels,
            joint_template=str(raw["joint"]), per_level_template=str(raw["per_level"]), level_line=str(raw["level_line"]),
        )
    except KeyError as e:
        raise ValueError(f"{path}: prompt set lacks {e}") from None
    if tuple(lv.column for lv in levels) != LEVEL_COLUMNS:
        raise ValueError(f"{path}: a prompt set defines exactly the levels 1..{len(LEVEL_COLUMNS)}")
    for lv in levels:
        if not 1 <= lv.min_words <= lv.budget:
            raise ValueError(f"{path}: level {lv.level} needs 1 <= min_words <= budget")
    return prompt_set
