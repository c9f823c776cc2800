"""`deepfusion trace`: one row's journey on a curated, captioned and trained dataset, checked
against what the files say, and the training steps against the keys the trainer's loader yielded."""

from __future__ import annotations

import json
import subprocess

import pyarrow.parquet as pq
import pytest

from conftest import ROOT, deepfusion_cmd, free_port
from datapipe.contract import Dataset
from jobs.trace import TraceConfig, format_trace, trace
from scenes import CorpusConfig, ScenesServer, make_corpus

pytestmark = pytest.mark.slow

SHARD = 20


@pytest.fixture(scope="module")
def traced(tmp_path_factory, tiny_llm):
    tmp = tmp_path_factory.mktemp("trace")
    port = free_port()
    corpus = tmp / "corpus"
    make_corpus(corpus, CorpusConfig(n=60, seed=4, base_url=f"http://127.0.0.1:{port}", faults=0.2, duplicates=0.1,
                                     fault_names=["http_404", "tiny", "cmyk"], sizes=[(64, 64)]), progress=False)
    root = tmp / "ds"
    with ScenesServer(corpus, port=port, hang_seconds=5):
        cmd = [*deepfusion_cmd(), "curate", f"input.paths=[{corpus / 'urls.parquet'}]", f"output={root}",
               f"shard_size={SHARD}", "progress=false", "download.retries=0", "decode.min_side=32",
               f"download.url_policy.allow=[127.0.0.1:{port}]"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert out.returncode == 0, out.stderr[-3000:]
    for args in (["version=reference", "backend=reference", f"corpus={corpus}"],):
        out = subprocess.run([*deepfusion_cmd(), "caption", f"root={root}", *args], capture_output=True, text=True,
                             timeout=300, cwd=ROOT)
        assert out.returncode == 0, out.stderr[-3000:]
    run = tmp / "run"
    out = subprocess.run([*deepfusion_cmd(), "train", "--config", str(ROOT / "jobs/configs/train/tiny.yaml"),
                          f"run_dir={run}", f"data.root={root}", f"model.text_encoder.source={tiny_llm}",
                          "data.resolution=32", "steps=5", "global_batch=8", "micro_batch=4", "data.log_keys=true",
                          "sample.prompts=[]", "sample.from_dataset=0", "checkpoint.every_steps=5"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    truth = {f"{t['row'] // SHARD:06d}{t['row'] % SHARD:06d}": t for t in pq.read_table(corpus / "ground_truth.parquet").to_pylist()}
    return root, run, corpus, truth


def test_a_kept_sample_its_duplicates_captions_and_training_steps(traced):
    root, run, corpus, truth = traced
    ds = Dataset(str(root))
    logged = {}
    for line in (run / "keys" / "rank0.tsv").read_text().splitlines():
        epoch, index, micro_step, keys = line.split("\t")
        for k in keys.split(","):
            logged.setdefault(k, []).append((int(index), int(micro_step)))
    assert sum(len(v) for v in logged.values()) == 5 * 8
    # a kept sample with a duplicate, preferably one the run drew
    originals = [f"{t['duplicate_of'] // SHARD:06d}{t['duplicate_of'] % SHARD:06d}" for t in truth.values()
                 if t["kind"] == "duplicate"]
    kept = next((k for k in originals if k in logged), originals[0])
    dup = next(k for k, t in truth.items() if t["kind"] == "duplicate"
               and f"{t['duplicate_of'] // SHARD:06d}{t['duplicate_of'] % SHARD:06d}" == kept)
    result = trace(str(root), kept, TraceConfig(run=str(run)))
    (r,) = result["rows"]
    side = {row["key"]: row for row in ds.sidecar(kept[:6]).to_pylist()}[kept]
    assert r["outcome"] == "sample" and r["url"] == side["url"] == truth[kept]["url"]
    assert r["input"] == {"shard": kept[:6], "row_in_shard": int(kept[6:]), "input_row": truth[kept]["row"],
                          "file": str(corpus / "urls.parquet"), "row_in_file": truth[kept]["row"]}
    assert r["sample"]["sha256"] == side["sha256"] and r["sample"]["nsfw"] == pytest.approx(side["nsfw"])
    assert {f["check"] for f in r["filters"]} >= {"decode.min_side", "decode.max_aspect", "nsfw (open_nsfw)"}
    assert all(f["passed"] for f in r["filters"])
    assert dup in {d["key"] for d in r["dedup"]["duplicates"]} and r["dedup"]["duplicates_dropped"] >= 1
    (ref,) = [c for c in r["captions"] if c["version"] == "reference"]
    row = {x["key"]: x for x in ds.captions("reference").shard(kept[:6]).to_pylist()}[kept]
    assert ref["status"] == "ok" and ref["levels"]["6"] == row["level_6"] and ref["levels"]["1"] == row["level_1"]

    # the steps: exactly the (step, micro-step) whose logged keys hold it
    assert all(int(line.split("\t")[0]) == 0 for line in (run / "keys" / "rank0.tsv").read_text().splitlines())
    # every key the loader yielded is found by the replay at the same step and micro-step
    every = trace(str(root), kept, TraceConfig(run=str(run)))["rows"][0]["training"]
    assert every["steps"] == 5 and every["steps_done"] == 5 and every["global_batch"] == 8
    from jobs.trace import training_steps

    replay = training_steps(str(run), set(logged), 10_000)
    assert sorted((h["key"], h["step"], h["micro_step"]) for h in replay["listed"] if h["step"] < 5) == \
        sorted((k, i, m) for k, hits in logged.items() for i, m in hits)
    assert all(h["trained"] for h in replay["listed"] if h["step"] < 5)
    hits = r["training"]["listed"]
    assert [(h["step"], h["micro_step"]) for h in hits if h["step"] < 5] == sorted(logged.get(kept, []))
    assert r["training"]["draws"] == len(hits)
    for h in hits:  # the caption it got: one of its reference levels, or the empty prompt
        assert h["caption"] in {row[f"level_{i}"] for i in range(1, 7)} | {""}
        assert h["version"] in ("reference", "")
    assert "training" in format_trace(result)


def test_a_duplicate_a_download_failure_and_a_filtered_row(traced):
    root, _, _, truth = traced
    ds = Dataset(str(root))
    rejects = {row["key"]: row for e in ds.shards for row in ds.rejects(e.id).to_pylist()}
    dup = next(k for k, t in truth.items() if t["kind"] == "duplicate")
    (r,) = trace(str(root), dup)["rows"]
    kept = f"{truth[dup]['duplicate_of'] // SHARD:06d}{truth[dup]['duplicate_of'] % SHARD:06d}"
    assert r["outcome"] == "reject" and r["reject"] == {k: rejects[dup][k] for k in ("stage", "reason", "detail")}
    assert r["dedup"]["duplicate_of"] == kept and r["dedup"]["duplicate_of_url"] == truth[kept]["url"]

    missing = next(k for k, t in truth.items() if t["fault"] == "http_404")
    (r,) = trace(str(root), truth[missing]["url"])["rows"]  # found by its URL
    assert r["key"] == missing and r["download"]["result"] == "failed" and r["download"]["reason"] == "http_404"
    assert "filters" not in r and "captions" not in r

    tiny = next(k for k, t in truth.items() if t["fault"] == "tiny")
    (r,) = trace(str(root), tiny)["rows"]
    assert r["download"]["result"] == "ok" and r["reject"]["stage"] == "filter" and r["reject"]["reason"] == "too_small"
    assert r["filters"] == [{"check": "filter/too_small", "passed": False, "detail": rejects[tiny]["detail"]}]

    # the command line: text and JSON, a URL with "=" in it, an unknown row
    cli = subprocess.run([*deepfusion_cmd(), "trace", str(root), tiny, "--json"], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert cli.returncode == 0 and json.loads(cli.stdout)["rows"][0]["reject"]["reason"] == "too_small"
    text = subprocess.run([*deepfusion_cmd(), "trace", str(root), "http://127.0.0.1:1/none.png?a=b"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert text.returncode == 1 and "no committed row has this URL" in text.stdout
    later = trace(str(root), "000099000000")["rows"][0]
    assert later["outcome"] == "not committed"
