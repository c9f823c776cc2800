"""The statistics job: exact counts against the synthetic dataset's truth, incremental reruns."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq

from datapipe.contract import CaptionSet, Storage
from jobs.statistics import load_stats_config, run_stats
from jobs.statistics.aggregate import GALLERY, SUMMARY
from scenes.stats_dataset import make_dataset, write_captions, write_shard
from conftest import ROOT, deepfusion_cmd


def truth(root) -> dict:
    """Counts read straight from the dataset files, independently of the statistics code."""
    stages, samples, widths = {}, 0, []
    for f in sorted((root / "rejects").glob("*.parquet")):
        for r in pq.read_table(f).to_pylist():
            stages[r["stage"], r["reason"]] = stages.get((r["stage"], r["reason"]), 0) + 1
    for f in sorted((root / "shards").glob("*.parquet")):
        t = pq.read_table(f, columns=["original_width", "original_height"])
        samples += t.num_rows
        widths += [max(w, h) for w, h in zip(t.column(0).to_pylist(), t.column(1).to_pylist())]
    return {"reasons": stages, "samples": samples, "max_side": widths}


def stats(root, **overrides) -> dict:
    return run_stats(load_stats_config(None, [f"root={root}", *(f"{k}={v}" for k, v in overrides.items())]),
                     progress=False)


def test_stats_match_the_dataset_and_rerun_reads_only_new_shards(tmp_path):
    root = tmp_path / "ds"
    keys = make_dataset(str(root), shards=3, rows_per_shard=40)
    run = stats(root)
    assert run["shards_read"] == 3 and run["caption_shards_read"] == {"v1": 3, "v1-fix": 3}
    summary = json.loads((root / SUMMARY).read_text())
    want = truth(root)
    n_rejects = sum(want["reasons"].values())
    assert summary["headline"] == {"shards": 3, "inputs": 120, "samples": want["samples"], "rejects": n_rejects,
                                   "pass_rate": round(want["samples"] / 120, 4),
                                   "duplicates": sum(n for (s, _), n in want["reasons"].items() if s == "dedup"),
                                   "caption_versions": 2}
    assert {(r["stage"], r["reason"]): r["count"] for r in summary["rejects_by_reason"]} == want["reasons"]
    # the funnel: each stage's entering rows are the previous stage's minus its rejects
    entering = 120
    for f in summary["funnel"]:
        assert f["entering"] == entering
        entering -= f["rejected"]
    assert entering == want["samples"]
    assert sum(summary["resolution"]["y"]) == want["samples"]
    assert summary["resolution"]["x"][0] - summary["resolution"]["width"] / 2 == min(want["max_side"])
    for score in ("clip_score", "aesthetic", "nsfw", "watermark"):
        assert sum(summary["scores"][score]["y"]) == want["samples"], score

    # caption versions: v1 has failed rows; v1-fix overlays half the keys; coverage is of the resolved view
    by_version = {v["version"]: v for v in summary["captions"]}
    for version in ("v1", "v1-fix"):
        resolved = CaptionSet(Storage(str(root)), version)
        rows = [r for sid in resolved.shard_ids() for r in resolved.shard(sid).to_pylist()]
        ok = sum(r["status"] == "ok" for r in rows)
        assert by_version[version]["ok"] == ok and by_version[version]["failed"] == len(rows) - ok
        assert by_version[version]["coverage"] == round(ok / want["samples"], 4)
        words6 = [len(r["level_6"].split()) for r in rows if r["status"] == "ok"]
        assert by_version[version]["words"][5]["mean"] == round(sum(words6) / len(words6), 2)
    assert by_version["v1-fix"]["ok"] > by_version["v1"]["ok"]  # the overlay fixed failed rows
    assert by_version["v1-fix"]["chain"] == ["v1-fix", "v1"]

    # the gallery: the first rows of each shard, newest shard first, then each version's own tiles
    # (the first rows it captioned ok per shard), all with resolved six-level captions
    gallery = json.loads((root / GALLERY).read_text())
    first_rows = [k for sid in sorted(keys, reverse=True) for k in keys[sid][:2]]
    assert [g["key"] for g in gallery][: len(first_rows)] == first_rows
    assert all(g["thumb"].startswith("data:image/jpeg;base64,") for g in gallery)
    assert all(len(g["captions"]["v1-fix"]["levels"]) == 6 for g in gallery)
    tiles = summary["gallery"]["by_version"]
    for version in ("v1", "v1-fix"):
        own = {sid: [r["key"] for r in pq.read_table(root / "captions" / version / f"{sid}.parquet").to_pylist()
                     if r["status"] == "ok"] for sid in keys}
        assert tiles[version]["keys"] == [k for sid in sorted(keys, reverse=True) for k in sorted(own[sid])[:2]]
        assert tiles[version]["covered"] == by_version[version]["ok"]
    assert summary["gallery"]["default_version"] == "v1-fix"  # the most complete one
    # rejects explorer: every stage/reason with its count and a few examples, newest shard first
    rejects_by_key = {r["key"]: (r["stage"], r["reason"]) for f in sorted((root / "rejects").glob("*.parquet"))
                      for r in pq.read_table(f).to_pylist()}
    explorer = {(r["stage"], r["reason"]): r for r in summary["rejects_explorer"]}
    assert {k: r["count"] for k, r in explorer.items()} == want["reasons"]
    for (stage, reason), r in explorer.items():
        assert 1 <= len(r["examples"]) <= 5 and all(set(e) == {"key", "url", "detail"} for e in r["examples"])
        assert all(rejects_by_key[e["key"]] == (stage, reason) for e in r["examples"])

    # a rerun reads nothing; one new shard and one new caption shard are all the next run reads
    assert stats(root)["shards_read"] == 0
    new_keys = write_shard(Storage(str(root)), 3, 40, seed=9)
    write_captions(Storage(str(root)), "v1", {"000003": new_keys}, seed=3)
    run = stats(root)
    assert run["shards_read"] == 1 and run["caption_shards_read"] == {"v1": 1}
    assert run["headline"]["inputs"] == 160 and run["headline"]["samples"] == truth(root)["samples"]
    assert json.loads((root / GALLERY).read_text())[0]["key"] == new_keys[0]


def test_stats_cli_and_job_entrypoint_agree(tmp_path):
    root = tmp_path / "ds"
    make_dataset(str(root), shards=2, rows_per_shard=20, captions=False)
    cli = subprocess.run([*deepfusion_cmd(), "stats", str(root), "bins=10", "--summary-json", str(tmp_path / "a.json")],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert "stats: 2 shard(s), 40 input rows" in cli.stdout and "read 2 shard(s)" in cli.stdout
    assert len(json.loads((root / SUMMARY).read_text())["resolution"]["x"]) <= 10
    job = subprocess.run([sys.executable, "-m", "jobs.stats", "--config", "production", f"root={root}"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert job.returncode == 0, job.stderr[-2000:]
    assert "read 0 shard(s)" in job.stdout  # the cache is shared: nothing new to read
    bad = subprocess.run([*deepfusion_cmd(), "stats", str(tmp_path / "missing")], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert bad.returncode == 1 and "is not a deepfusion dataset" in bad.stderr
