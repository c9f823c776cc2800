"""The captioner without a VLM engine: prompt set, validation, retries, source backends, overlays, follow.

The engine and server paths are in test_captioner_vllm.py (real vLLM on the CPU).
"""

from __future__ import annotations

import json
import threading
import time

import pyarrow as pa
import pytest
import yaml
from conftest import scenes_dataset

from captioner.answers import Answer, caption_images
from captioner.config import load_caption_config
from captioner.prompts import load_prompt_set, prompt_set_path
from captioner.run import caption
from captioner.validate import validate_joint
from datapipe.contract import (
    LEVEL_COLUMNS,
    LEVEL_WORD_BUDGETS,
    CaptionSet,
    ContractError,
    Dataset,
    ShardWriter,
    Storage,
    commit_shards,
)


def _answer(counts: list[int], word: str = "red") -> str:
    return json.dumps({f"level_{i + 1}": " ".join([word] * n) for i, n in enumerate(counts)})


GOOD = [3, 10, 20, 40, 80, 150]


def test_prompt_set_is_versioned_data_and_matches_the_contract(tmp_path):
    ps = load_prompt_set()
    assert ps.ref.startswith("six-levels-v1@") and len(ps.hash) == 12
    assert {lv.level: lv.budget for lv in ps.levels} == LEVEL_WORD_BUDGETS
    ranges = [(lv.min_words, lv.budget) for lv in ps.levels]
    assert all(hi < lo2 for (_, hi), (lo2, _) in zip(ranges, ranges[1:])), "ranges must not overlap"
    # one word changed anywhere -> another hash; the id alone does not identify the words
    raw = yaml.safe_load(prompt_set_path("six-levels-v1").read_text())
    raw["levels"][3]["instruction"] += " Be precise."
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(raw))
    assert load_prompt_set(str(edited)).hash != ps.hash
    assert len(ps.prompts("joint")) == 1 and [s for s, _ in ps.prompts("per_level")] == list(LEVEL_COLUMNS)
    raw["levels"][2]["min_words"] = 99
    edited.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="min_words"):
        load_prompt_set(str(edited))


def test_schema_compiles_for_guided_decoding_and_patterns_hold_the_word_ranges(tiny_vlm):
    import re

    import xgrammar
    from transformers import AutoTokenizer

    from captioner.prompts import JSON_SEPARATORS

    ps = load_prompt_set()
    compiler = xgrammar.GrammarCompiler(xgrammar.TokenizerInfo.from_huggingface(AutoTokenizer.from_pretrained(tiny_vlm)))
    # what the engine gets: the schema's grammar (raises if xgrammar cannot build it)
    compiled = compiler.compile_grammar(ps.json_grammar())

    def accepts(counts, separators=JSON_SEPARATORS):
        answer = json.dumps({lv.column: " ".join(["w"] * n) for lv, n in zip(ps.levels, counts)}, separators=separators)
        return xgrammar.GrammarMatcher(compiled).accept_string(answer)

    shortest = [lv.min_words for lv in ps.levels]
    assert accepts(shortest) and accepts([lv.budget for lv in ps.levels])
    assert not accepts(shortest[:5] + [ps.levels[5].budget + 1]), "over a level's budget"
    assert not accepts(shortest[:5] + [ps.levels[5].min_words - 1]), "under a level's minimum"
    assert not accepts(shortest, separators=(", ", ": ")), "no blanks between JSON tokens"
    six = ps.levels[5]
    pattern = re.compile(ps.level_pattern(six))
    assert pattern.match(" ".join(["w"] * 101)) and pattern.match(" ".join(["w"] * 200))
    assert not pattern.match(" ".join(["w"] * 100)) and not pattern.match(" ".join(["w"] * 201))
    assert not pattern.match("two  spaces " * 60)


@pytest.mark.parametrize("raw,error", [
    (_answer(GOOD), None),
    ("```json\n" + _answer(GOOD) + "\n```", None),
    ("the model rambled", "not_json"),
    (_answer(GOOD[:5] + [0]), "level_6_missing"),
    (_answer([3, 10, 20, 40, 80, 201]), "level_6_over_budget"),
    (_answer([3, 10, 20, 40, 50, 150]), "level_5_under_minimum"),
    (json.dumps({**json.loads(_answer(GOOD)), "level_4": "Describe this image at six levels of detail, from shortest "
                 "to longest. Answer with one JSON object " + "x " * 20}), "level_4_echoes_prompt"),
])
def test_validator_names_what_is_wrong(raw, error):
    verdict = validate_joint(raw, load_prompt_set())
    assert verdict.error == error
    if error is None:
        assert verdict.levels["level_1"] == "red red red"


def test_levels_must_grow(tmp_path):
    raw = yaml.safe_load(prompt_set_path("six-levels-v1").read_text())
    for level in range(1, 7):
        raw["levels"][level]["min_words"] = 1
    path = tmp_path / "loose.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert validate_joint(_answer([3, 10, 5, 40, 80, 150]), load_prompt_set(str(path))).error == "levels_not_increasing"


def test_invalid_answers_are_retried_then_recorded_with_reason_and_raw():
    """A backend that answers garbage for one key every time and garbage-then-good for another."""
    ps = load_prompt_set()
    calls = []

    def generate(requests, images):
        calls.append([r.index for r in requests])
        out = []
        for r in requests:
            if images[r.index] == "bad":
                out.append(Answer("not json at all", "stop", 10, 5))
            elif images[r.index] == "late" and len(calls) < 2:
                out.append(Answer(_answer([3, 10, 20, 40, 80, 150])[:-30], "length", 10, 50))
            else:
                out.append(Answer(_answer(GOOD), "stop", 10, 300))
        return out

    rows = caption_images(generate, ["good", "bad", "late"], ["k0", "k1", "k2"], ps, "joint", 3, seed=0, model="m")
    assert [r["key"] for r in rows] == ["k0", "k1", "k2"]
    assert calls == [[0, 1, 2], [1, 2], [1]]  # only the failures are asked again
    assert rows[0]["status"] == "ok" and rows[0]["attempts"] == 1 and rows[0]["prompt_id"] == ps.ref
    assert rows[1]["status"] == "failed" and rows[1]["attempts"] == 3
    assert rows[1]["error"] == "not_json" and rows[1]["raw"] == "not json at all" and rows[1].get("level_1") is None
    assert rows[2]["status"] == "ok" and rows[2]["attempts"] == 2


def test_alt_and_reference_backends_write_the_caption_contract(tmp_path):
    root = scenes_dataset(tmp_path, n=20, shard_size=8)  # writes `alt` and `reference` by direct ingestion
    corpus = tmp_path / "corpus"
    for backend, version in (("alt", "alt-run"), ("reference", "ref-run")):
        cfg = load_caption_config(None, [f"root={root}", f"version={version}", f"backend={backend}",
                                         f"corpus={corpus}", "progress=false"])
        summary = caption(cfg)
        assert summary["this_run"] == {**summary["this_run"], "rows": 20, "ok": 20, "shards": 3}
        assert caption(cfg)["this_run"]["rows"] == 0, "a finished version is a no-op"
    ds = Dataset(str(root))
    for sid in ds.manifest.shard_ids:
        truth = ds.captions("reference").shard(sid)
        ours = ds.captions("ref-run").shard(sid)
        assert ours.select(["key", *LEVEL_COLUMNS]).equals(truth.select(["key", *LEVEL_COLUMNS]))
        alt = ds.captions("alt-run").shard(sid).to_pylist()
        caps = dict(zip(*ds.sidecar(sid, ["key", "caption"]).to_pydict().values()))
        assert all(r["level_1"] == r["level_6"] == caps[r["key"]] for r in alt)
    # the version named `reference` written by ingestion is resumed, not refused, by the reference backend
    cfg = load_caption_config(None, [f"root={root}", "version=reference", "backend=reference", f"corpus={corpus}"])
    assert caption(cfg)["this_run"]["rows"] == 0
    with pytest.raises(ContractError, match="other settings"):
        caption(load_caption_config(None, [f"root={root}", "version=alt-run", "backend=reference", f"corpus={corpus}"]))


def test_regeneration_over_a_predicate_replaces_exactly_the_selected_rows(tmp_path):
    root = scenes_dataset(tmp_path, n=24, shard_size=8)
    corpus = tmp_path / "corpus"
    ds = Dataset(str(root))
    parent = {r["key"]: r for sid in ds.manifest.shard_ids for r in ds.captions("alt").shard(sid).to_pylist()}
    ref = {r["key"]: r for sid in ds.manifest.shard_ids for r in ds.captions("reference").shard(sid).to_pylist()}
    # the predicate: alt texts shorter than 9 words, outside shard 000001
    where = "words_1 < 9 AND shard <> '000001'"
    expected = {k for k, r in parent.items() if len(r["level_1"].split()) < 9 and not k.startswith("000001")}
    assert 0 < len(expected) < len(parent)
    cfg = load_caption_config(None, [f"root={root}", "version=fix", "backend=reference", f"corpus={corpus}",
                                     "parent=alt", f"select.where={where}", "progress=false"])
    summary = caption(cfg)
    assert summary["selected"] == len(expected) == summary["this_run"]["rows"]
    child = CaptionSet(Storage(str(root)), "fix")
    seen = set()
    for sid in ds.manifest.shard_ids:
        for r in child.shard(sid).to_pylist():
            seen.add(r["key"])
            source = ref if r["key"] in expected else parent
            assert r["version"] == ("fix" if r["key"] in expected else "alt")
            assert [r[c] for c in LEVEL_COLUMNS] == [source[r["key"]][c] for c in LEVEL_COLUMNS]
    assert seen == set(parent), "the reader still sees every key once"
    bad = load_caption_config(None, [f"root={root}", "version=fix2", "backend=alt", "parent=alt",
                                     "select.where=no_such_column > 1"])
    with pytest.raises(ValueError, match="not a valid condition"):
        caption(bad)
    with pytest.raises(ValueError, match="caption-QA run"):
        caption(load_caption_config(None, [f"root={root}", "version=fix3", "backend=alt", "parent=alt",
                                           "select.qa_below=0.5"]))


def test_follow_picks_up_shards_committed_while_it_runs(tmp_path):
    root = scenes_dataset(tmp_path, n=8, shard_size=8)
    storage = Storage(str(root))

    def curate_more():  # a curation job committing two more shards while captioning runs
        for number in (1, 2):
            time.sleep(1.0)
            with ShardWriter(storage, f"{number:06d}", inputs=1) as w:
                w.add(f"{number:06d}000000000", b"\x89PNG fake", "png", {"url": "u", "caption": f"late shard {number}",
                      "width": 1, "height": 1, "original_width": 1, "original_height": 1, "sha256": "0"})
            commit_shards(storage, [w.entry])

    thread = threading.Thread(target=curate_more)
    thread.start()
    cfg = load_caption_config(None, [f"root={root}", "version=live", "backend=alt", "follow.enabled=true",
                                     "follow.poll_s=0.2", "follow.idle_exit_s=3", "progress=false"])
    summary = caption(cfg)
    thread.join()
    assert summary["this_run"]["shards"] == 3 and summary["this_run"]["rows"] == 10
    rows = pa.concat_tables([CaptionSet(storage, "live").shard(s) for s in ("000001", "000002")]).to_pylist()
    assert [r["level_3"] for r in rows] == ["late shard 1", "late shard 2"]


def test_caption_qa_scores_reference_captions_by_level_and_feeds_regeneration(tmp_path):
    from jobs.caption_qa import Question, caption_qa, match
    from captioner.stats import caption_stats

    from scenes import CorpusConfig, make_corpus
    from scenes.dataset import ingest_corpus

    corpus, root = tmp_path / "corpus", tmp_path / "dataset"  # scenes with up to 3 groups and text
    make_corpus(corpus, CorpusConfig(n=16, seed=3, sizes=[(96, 96)]), progress=False)
    ingest_corpus(corpus, str(root), shard_size=8)
    ref = caption_qa(str(root), "reference", str(corpus))
    acc = ref["accuracy"]["matcher"]
    # the ground truth's densest level states every fact; the one-line subject does not
    assert acc["all"]["level_6"] == 1.0 and acc["all"]["level_1"] < acc["all"]["level_4"]
    assert acc["position"]["level_1"] == 0.0 and acc["position"]["level_4"] == 1.0
    alt = caption_qa(str(root), "alt", str(corpus))["accuracy"]["matcher"]
    assert alt["all"]["level_6"] < 0.5, "web-like alt text states few facts: it must score far below the reference"
    # the matcher binds the answer to its object, it does not just find the word
    q = Question("colour", "What colour is the circle?", "red", None, "circle")
    assert match(q, "a red circle") and not match(q, "a blue circle next to a red square")
    q = Question("count", "How many pink squares are there?", "three", "pink", "square")
    assert match(q, "three small pink squares") and match(q, "the first pink square ... the third pink square")
    assert not match(q, "two pink squares and three blue circles")
    # per-key scores drive a regeneration run: alt rows whose level 6 misses facts are selected
    import pyarrow.parquet as pq

    from captioner.select import qa_scores_path

    scores = pq.read_table(Storage(str(root)).path(qa_scores_path("alt"))).to_pylist()
    threshold = 0.5  # web alt text ("IMG_3150.png", "circle") rarely states the facts of level 6
    below = {r["key"] for r in scores if r["qa_accuracy"] < threshold}
    assert len(below) > 0
    cfg = load_caption_config(None, [f"root={root}", "version=alt-qa", "backend=reference", f"corpus={corpus}",
                                     "parent=alt", f"select.qa_below={threshold}", "progress=false"])
    summary = caption(cfg)
    assert summary["selected"] == len(below)
    stats = caption_stats(str(root), "alt-qa")
    assert stats["rows_by_version"] == {k: v for k, v in {"alt": 16 - len(below), "alt-qa": len(below)}.items() if v}
    assert stats["levels"]["level_6"]["words_mean"] > stats["levels"]["level_1"]["words_mean"]
    assert stats["levels"]["level_1"]["repeated_rate"] >= 0
    assert Storage(str(root)).exists("stats/captions/alt-qa.json")


def test_llm_judge_answers_by_guided_choice_with_the_embedded_smollm2(tmp_path):
    """The real SmolLM2-135M through vLLM on the CPU; one image, its level-1 caption (a level-6 caption
    is ~10x the prompt tokens: ~1 s per question on a CPU)."""
    from jobs.caption_qa import CHOICES, UNKNOWN, caption_qa
    from model.text_encoder import resolve_source

    root = scenes_dataset(tmp_path, n=4, sizes="96x96", shard_size=4)
    summary = caption_qa(str(root), "reference", str(tmp_path / "corpus"), llm=str(resolve_source("smollm2")),
                         max_keys=1, llm_levels=(1,))
    llm = summary["accuracy"]["llm"]
    assert set(llm["all"]) == {"level_1"} and 0.0 <= llm["all"]["level_1"] <= 1.0
    allowed = {c for cs in CHOICES.values() for c in cs} | {UNKNOWN}
    assert set(summary["llm_answers"]) <= allowed and sum(summary["llm_answers"].values()) == summary["questions"]
