"""Caption QA (CapsBench-style) for synthetic scenes, and caption statistics for any version.

For every captioned sample whose scene graph is known (the scenes corpus, matched by the
`scene_id` carried into the sidecar), questions are generated from the graph, one kind of fact
each: colour, shape, count, position, visible text, background. Each caption level is then
asked every question by a judge:

- `matcher`: deterministic. The answer is a word or two; a caption answers correctly when it
  states that word bound to the right object (the colour just before the shape noun, the number
  before "<colour> <shape>s", the place phrase just after the object, ...). Transparent and free.
- `llm`: an LLM served by vLLM (default: the embedded SmolLM2-135M-Instruct) reads the caption
  and the question and must pick one of the category's answers or "unknown" (guided choice).

Results: accuracy per judge x category x level (`summary.json`) and per key (`per_key.parquet`,
whose `qa_accuracy` -- level-6 accuracy under the matcher -- is what `recaption
select.qa_below=...` reads), under `<root>/stats/caption_qa/<version>/`.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from datapipe.contract import LEVEL_COLUMNS, Dataset, Storage, utc_now
from datapipe.contract.shards import table_to_parquet_bytes
from scenes.describe import NUMBER_WORDS, ORDINALS
from scenes.graph import BACKGROUNDS, COLORS, SHAPES, WORDS, Scene, position_phrase

from captioner.select import QA_DIR

log = logging.getLogger(__name__)

CATEGORIES = ("colour", "shape", "count", "position", "text", "background")
POSITIONS = ("top left", "top center", "top right", "left", "center", "right", "bottom left", "bottom center",
             "bottom right")
CHOICES = {
    "colour": list(COLORS), "shape": list(SHAPES), "count": [NUMBER_WORDS[n] for n in range(1, 7)],
    "position": list(POSITIONS), "text": [w.lower() for w in WORDS], "background": list(BACKGROUNDS),
}
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Question:
    category: str
    text: str
    answer: str
    color: str | None = None  # the object the question is about
    shape: str | None = None


def questions(scene: Scene) -> list[Question]:
    """Questions whose answer the scene graph fixes unambiguously."""
    out = []
    groups = scene.groups()
    shape_groups = defaultdict(list)
    for g in groups:
        shape_groups[g[0].shape].append(g)
    for g in groups:
        o, n = g[0], len(g)
        noun = o.shape + ("s" if n > 1 else "")
        if len(shape_groups[o.shape]) == 1:  # colour is asked by shape only when one group has that shape
            out.append(Question("colour", f"What colour {'are' if n > 1 else 'is'} the {noun}?", o.color, None, o.shape))
        out.append(Question("shape", f"What shape {'are' if n > 1 else 'is'} the {o.color} object{'s' * (n > 1)}?",
                            o.shape, o.color, None))
        out.append(Question("count", f"How many {o.color} {o.shape}s are there?", NUMBER_WORDS[n], o.color, o.shape))
        if n == 1:
            out.append(Question("position", f"Where in the image is the {o.color} {o.shape}?",
                                position_phrase(o.cx, o.cy), o.color, o.shape))
    if scene.text:
        out.append(Question("text", "What word is written in the image?", scene.text.text.lower()))
    out.append(Question("background", "What colour is the background?", scene.background))
    return out


# -- the deterministic matcher -------------------------------------------------------------------
_TOKEN = re.compile(r"[a-z0-9]+")
_SIZES = {"small", "medium", "large"}
_NUMBER = {**{w: n for n, w in NUMBER_WORDS.items()}, **{str(n): n for n in NUMBER_WORDS}, "a": 1, "an": 1}
_ORDINAL = {w: n for n, w in ORDINALS.items()}


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def _phrase_at(tokens: list[str], i: int, phrase: str) -> bool:
    words = phrase.split()
    return tokens[i : i + len(words)] == words


def _mentions(tokens: list[str], color: str, shape: str) -> list[int]:
    """Indices where "<colour> [size] <shape>[s]" or "<size> <colour> <shape>" starts (at the colour)."""
    cw, hits = color.split(), []
    for i in range(len(tokens)):
        if not _phrase_at(tokens, i, color):
            continue
        j = i + len(cw)
        if j < len(tokens) and tokens[j] in _SIZES:
            j += 1
        if j < len(tokens) and tokens[j] in (shape, shape + "s"):
            hits.append(i)
    return hits


def match(question: Question, caption: str) -> bool:
    t = _tokens(caption)
    q = question
    if q.category == "colour":
        nouns = [i for i, w in enumerate(t) if w in (q.shape, q.shape + "s")]
        return any(_phrase_at(t, k, q.answer) for i in nouns for k in range(max(0, i - 4), i))
    if q.category == "shape":
        return bool(_mentions(t, q.color, q.answer))
    if q.category == "count":
        n = [k for k, v in NUMBER_WORDS.items() if v == q.answer][0]
        before = [t[k] for i in _mentions(t, q.color, q.shape) for k in range(max(0, i - 2), i)]
        numbers = {_NUMBER[w] for w in before if w in _NUMBER}  # "two small pink squares", "a red circle"
        ordinals = [_ORDINAL[w] for w in before if w in _ORDINAL]  # "the first ... the second pink square"
        return n in numbers or (bool(ordinals) and max(ordinals) == n)
    if q.category == "position":
        return any(_phrase_at(t, k, q.answer) for i in _mentions(t, q.color, q.shape)
                   for k in range(i, min(len(t), i + 12)))
    if q.category == "text":
        return q.answer in t
    if q.category == "background":
        return any(_phrase_at(t, k, q.answer) for i, w in enumerate(t) if w == "background"
                   for k in range(max(0, i - 4), i))
    raise ValueError(q.category)


# -- the LLM judge -------------------------------------------------------------------------------
class LlmJudge:
    """An LLM (vLLM offline engine) answering each question from a caption by guided choice."""

    def __init__(self, model: str, kv_cache_gib: int = 1, max_num_seqs: int = 64):
        from vllm import LLM

        from captioner.backends.vllm_engine import engine_env
        from captioner.config import EngineConfig

        engine_env(EngineConfig(kv_cache_gib=kv_cache_gib, num_gpus=0))

        self.model = model
        self.llm = LLM(model=model, max_model_len=2048, max_num_seqs=max_num_seqs, enforce_eager=True, seed=0,
                       enable_chunked_prefill=False, max_num_batched_tokens=2048,
                       structured_outputs_config={"backend": "xgrammar"})

    def prompt(self, caption: str, q: Question) -> str:
        options = ", ".join(CHOICES[q.category])
        text = (f"Read the image description and answer the question with one of: {options}, or {UNKNOWN} "
                f"if the description does not say.\nDescription: {caption}\nQuestion: {q.text}")
        tokenizer = self.llm.get_tokenizer()
        if getattr(tokenizer, "chat_template", None):  # an instruct model answers in its own format
            return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)
        return text + "\nAnswer: "

    def answer(self, items: list[tuple[str, Question]]) -> list[str]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        params = [SamplingParams(max_tokens=8, temperature=0.0, structured_outputs=StructuredOutputsParams(
            choice=[*CHOICES[q.category], UNKNOWN])) for _, q in items]
        outs = self.llm.generate([self.prompt(c, q) for c, q in items], params, use_tqdm=False)
        return [o.outputs[0].text.strip() for o in outs]

    def close(self) -> None:
        """Stop the engine's processes now: dropping the object leaves them running (and polling)
        until the interpreter exits, which a long-lived caller (a test session, a notebook) notices."""
        self.llm.llm_engine.engine_core.shutdown()
        del self.llm


# -- the job -------------------------------------------------------------------------------------
def _scenes(corpus: str | Path) -> dict[str, Scene]:
    path = Path(corpus) / "ground_truth.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: caption QA needs the scenes corpus the dataset was made from")
    table = pq.read_table(path, columns=["scene_id", "scene"])
    return {sid: Scene.from_json(blob) for sid, blob in zip(*table.to_pydict().values())}


def caption_qa(root: str, version: str, corpus: str, llm: str | None = None, max_keys: int | None = None,
               llm_levels: tuple[int, ...] = (1, 2, 3, 4, 5, 6)) -> dict:
    """Ask every level of every captioned scene its questions; write and return the results.

    The matcher answers every (question, level); the LLM judge (if `llm` names a local model
    folder) only `llm_levels`, since on a CPU it costs about a second per question and level.
    """
    dataset = Dataset(root)
    captions = dataset.captions(version)
    scenes = _scenes(corpus)
    items: list[tuple[str, int, Question, str]] = []  # key, level, question, caption
    for sid in captions.shard_ids():
        ids = dict(zip(*dataset.sidecar(sid, ["key", "scene_id"]).to_pydict().values()))
        for row in captions.shard(sid).to_pylist():
            scene = scenes.get(ids.get(row["key"]))
            if scene is None or row["status"] != "ok":
                continue
            for q in questions(scene):
                for lv, col in enumerate(LEVEL_COLUMNS, 1):
                    items.append((row["key"], lv, q, row[col] or ""))
        if max_keys and len({k for k, *_ in items}) >= max_keys:
            break
    if not items:
        raise ValueError(f"no captioned sample of {version!r} has a scene graph in {corpus} (is scene_id in the sidecar?)")
    verdicts = {"matcher": [match(q, cap) for _, _, q, cap in items]}
    summary = _aggregate(items, verdicts)
    if llm:
        asked = [it for it in items if it[1] in llm_levels]
        judge = LlmJudge(llm)
        try:
            answers = judge.answer([(cap, q) for _, _, q, cap in asked])
        finally:
            judge.close()
        summary["accuracy"].update(_aggregate(asked, {"llm": [a == q.answer for a, (_, _, q, _) in zip(answers, asked)]})["accuracy"])
        summary["llm_answers"] = {a: answers.count(a) for a in sorted(set(answers))}
    summary.update(version=version, corpus=str(corpus), judges={"matcher": "deterministic", "llm": llm},
                   keys=len({k for k, *_ in items}), questions=len(items) // len(LEVEL_COLUMNS), created_at=utc_now())
    storage = Storage(root)
    per_key = _per_key(items, verdicts["matcher"])
    storage.write_atomic(f"{QA_DIR}/{version}/per_key.parquet", table_to_parquet_bytes(per_key))
    storage.write_atomic(f"{QA_DIR}/{version}/summary.json", (json.dumps(summary, indent=1) + "\n").encode())
    return summary


def _aggregate(items, verdicts: dict[str, list[bool]]) -> dict:
    acc: dict = {}
    for judge, ok in verdicts.items():
        cells: dict = defaultdict(lambda: [0, 0])
        for (_, lv, q, _), good in zip(items, ok):
            for cat in (q.category, "all"):
                cells[(cat, lv)][0] += good
                cells[(cat, lv)][1] += 1
        acc[judge] = {cat: {f"level_{lv}": round(cells[(cat, lv)][0] / cells[(cat, lv)][1], 4)
                            for lv in range(1, 7) if cells[(cat, lv)][1]}
                      for cat in (*CATEGORIES, "all") if any(cells[(cat, lv)][1] for lv in range(1, 7))}
    return {"accuracy": acc}


def _per_key(items, ok: list[bool]) -> pa.Table:
    cells: dict = defaultdict(lambda: [0, 0])
    for (key, lv, _, _), good in zip(items, ok):
        if lv == 6:
            cells[key][0] += good
            cells[key][1] += 1
    keys = sorted(cells)
    return pa.table({"key": keys, "qa_accuracy": [cells[k][0] / cells[k][1] for k in keys],
                     "questions": [cells[k][1] for k in keys]})


def format_qa(summary: dict) -> str:
    lines = [f"caption QA of {summary['version']}: {summary['keys']} images, {summary['questions']} questions per level"]
    for judge, table in summary["accuracy"].items():
        lines.append(f"  judge {judge}: accuracy per category and level")
        lines.append("    " + f"{'category':<11}" + "".join(f"{'L' + str(i):>7}" for i in range(1, 7)))
        for cat, row in table.items():
            lines.append("    " + f"{cat:<11}" + "".join(f"{row.get(f'level_{i}', float('nan')):>7.2f}" for i in range(1, 7)))
    return "\n".join(lines)
