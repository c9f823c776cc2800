"""The curation job end to end: real Ray, real img2dataset, the fault-injecting server on loopback.

Every input row is checked against the corpus's ground truth: it must end as a sample or as a
reject of the stage the fault catalogue names, exactly once, also after kill -9 and resume.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import ROOT, deepfusion_cmd, free_port
from datapipe.contract import Dataset, verify_dataset
from scenes import CorpusConfig, ScenesServer, make_corpus

pytestmark = pytest.mark.slow

# Short timeouts: the server's "timeout" fault hangs for 20 s, its slow body drips for minutes.
FAST = ["download.timeout_s=2", "download.deadline_s=3", "download.retries=0", "download.threads=16",
        "decode.max_side=512", "progress=false"]


def allow(corpus: Path) -> str:
    """The URL policy refuses loopback: open the port the corpus is served on (its base URL's)."""
    base = json.loads((corpus / "corpus.json").read_text())["config"]["base_url"]
    return f"download.url_policy.allow=[{base.split('//', 1)[1]}]"


def served_corpus(folder: Path, **cfg) -> tuple[Path, ScenesServer]:
    port = free_port()
    make_corpus(folder, CorpusConfig(base_url=f"http://127.0.0.1:{port}", **cfg), progress=False)
    return folder, ScenesServer(folder, port=port, hang_seconds=20, drip_interval=0.25).start()


def expected_outcomes(corpus: Path, shard_size: int) -> dict[str, dict]:
    truth = pq.read_table(corpus / "ground_truth.parquet").to_pylist()
    return {f"{t['row'] // shard_size:06d}{t['row'] % shard_size:06d}": t for t in truth}


def outcomes(root: Path) -> tuple[dict[str, dict], dict[str, dict]]:
    ds = Dataset(str(root))
    samples, rejects = {}, {}
    for shard in ds.shards:
        for row in ds.sidecar(shard.id).to_pylist():
            assert row["key"] not in samples, f"duplicate sample key {row['key']}"
            samples[row["key"]] = row
        for row in ds.rejects(shard.id).to_pylist():
            assert row["key"] not in rejects and row["key"] not in samples, f"key {row['key']} twice"
            rejects[row["key"]] = row
    return samples, rejects


def check_against_truth(root: Path, corpus: Path, shard_size: int) -> tuple[dict, dict]:
    expect = expected_outcomes(corpus, shard_size)
    samples, rejects = outcomes(root)
    assert set(samples) | set(rejects) == set(expect), "every input row is a sample or a reject"
    wrong = []
    for key, t in expect.items():
        got = "sample" if key in samples else rejects[key]["stage"]
        if got != t["expect"]:
            wrong.append((key, t["kind"], t["fault"], t["expect"], got, rejects.get(key, {}).get("reason")))
    assert not wrong, f"rows with the wrong outcome: {wrong}"
    return samples, rejects


def run_cli(corpus: Path, root: Path, *extra: str, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [*deepfusion_cmd(), "curate", f"input.paths=[{corpus / 'urls.parquet'}]", f"output={root}", *FAST, allow(corpus), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_every_fault_is_accounted_for_and_a_rerun_is_a_no_op(tmp_path, artifacts_dir):
    corpus, server = served_corpus(tmp_path / "corpus", n=120, seed=1, faults=0.4, duplicates=0.06,
                                   near_duplicates=0.06)
    try:
        root = tmp_path / "ds"
        proc = run_cli(corpus, root, "shard_size=30")
        assert proc.returncode == 0, proc.stderr[-3000:]
        samples, rejects = check_against_truth(root, corpus, 30)
    finally:
        server.stop()
    (artifacts_dir / "curate_summary.txt").write_text(proc.stdout)
    assert "120 input rows" in proc.stdout and "reject download/opt_out" in proc.stdout
    truth = expected_outcomes(corpus, 30)
    # reasons, not only stages
    reasons = {truth[k]["fault"]: r["reason"] for k, r in rejects.items() if truth[k]["kind"] == "fault"}
    assert reasons["http_404"] == "http_404" and reasons["noai"] == "opt_out"
    assert reasons["slow_body"] == "too_slow" and reasons["truncated"] == "truncated"
    assert reasons["bomb"] == "decompression_bomb" and reasons["tiny"] == "too_small"
    assert reasons["extreme_aspect"] == "bad_aspect" and reasons["html"] == "not_an_image"
    for key, r in rejects.items():  # a duplicate names the kept sample it duplicates
        if truth[key]["kind"] in ("duplicate", "near_duplicate"):
            original = truth[key]["duplicate_of"]
            assert r["detail"].endswith(f"{original // 30:06d}{original % 30:06d}"), r
    # carried columns, normalised images
    ds = Dataset(str(root))
    for shard in ds.shards:
        for sample in ds.samples(shard.id):
            meta = samples[sample.key]
            assert meta["scene_id"] == truth[sample.key]["scene_id"] and meta["caption"] == truth[sample.key]["alt"]
            img = Image.open(io.BytesIO(sample.image))
            assert img.mode == "RGB" and img.size == (meta["width"], meta["height"]) and max(img.size) <= 512
    report = verify_dataset(str(root))
    assert report.ok, report.problems
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["lineage"]["curate"]["inputs"] == [str(corpus / "urls.parquet")]
    # the embedded default scores every kept image with open_nsfw and says which model did it
    nsfw = manifest["lineage"]["curate"]["models"]["nsfw"]
    assert nsfw["model"] == "open_nsfw" and len(nsfw["file_sha256"]) == 64 and nsfw["threshold"] is None
    scores = [s["nsfw"] for s in samples.values()]
    assert scores and all(0.0 <= v <= 1.0 for v in scores) and len(set(scores)) > 1
    assert not (root / "_work").exists()

    # the same command again: nothing to do, nothing changes
    before = (root / "manifest.json").read_bytes()
    proc = run_cli(corpus, root, "shard_size=30")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "this run: 0 shard(s)" in proc.stdout
    assert json.loads((root / "manifest.json").read_bytes())["shards"] == json.loads(before)["shards"]
    # another shard size would put rows under other keys: refused
    proc = run_cli(corpus, root, "shard_size=20")
    assert proc.returncode == 1 and "another shard_size" in proc.stderr


def _curate_process(corpus: Path, root: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "jobs.curate", "--config", "embedded", f"input.paths=[{corpus / 'urls.parquet'}]",
           f"output={root}", *FAST, allow(corpus), *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _committed(root: Path) -> int:
    try:
        return len(json.loads((root / "manifest.json").read_text())["shards"])
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def _kill_when(proc: subprocess.Popen, condition, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"the job ended before the kill point:\n{proc.stdout.read()[-3000:]}"
        assert time.time() < deadline, "kill point never reached"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def test_kill9_at_any_point_then_resume_loses_and_duplicates_nothing(tmp_path):
    corpus, server = served_corpus(tmp_path / "corpus", n=200, seed=2, faults=0.1, duplicates=0.1,
                                   near_duplicates=0.05,
                                   fault_names=["http_404", "html", "cmyk", "exif_rotate", "tiny", "noai"])
    root = tmp_path / "ds"
    extra = ("shard_size=20",)
    try:
        # 1: killed while img2dataset downloads the first shards: the server holds its answers,
        # so nothing can be committed yet (without the hold a fast machine finished a shard
        # between two polls)
        server.hold()
        proc = _curate_process(corpus, root, *extra)
        _kill_when(proc, lambda: any((root / "_work").glob("download/*/input.arrow"))
                   and server.requests_arrived() > 0)
        assert _committed(root) == 0
        server.release()
        # 2: killed just after the first commit (later shards mid-download or mid-filter)
        proc = _curate_process(corpus, root, *extra)
        _kill_when(proc, lambda: _committed(root) >= 1)
        # 3: killed later
        first = _committed(root)
        proc = _curate_process(corpus, root, *extra)
        _kill_when(proc, lambda: _committed(root) >= first + 1)
        assert _committed(root) < 10, "the job should not have finished before the last kill"
        # 4: runs to the end
        proc = _curate_process(corpus, root, *extra)
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-3000:]
        samples, rejects = check_against_truth(root, corpus, 20)
    finally:
        server.stop()
    assert _committed(root) == 10 and len(samples) + len(rejects) == 200
    assert verify_dataset(str(root)).ok
    # and the result is the one an uninterrupted run gives
    clean = tmp_path / "clean"
    server = ScenesServer(corpus, port=int(server.port), hang_seconds=20).start()
    try:
        proc = _curate_process(corpus, clean, *extra)
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-3000:]
    finally:
        server.stop()
    clean_samples, clean_rejects = outcomes(clean)
    assert sorted(clean_samples) == sorted(samples)
    assert {k: (r["stage"], r["reason"]) for k, r in clean_rejects.items()} == \
        {k: (r["stage"], r["reason"]) for k, r in rejects.items()}
    assert {k: s["sha256"] for k, s in clean_samples.items()} == {k: s["sha256"] for k, s in samples.items()}


def test_clip_filters_and_dedup_across_shards_with_an_img2dataset_resize_mode(tmp_path):
    from helpers import tiny_clip_files

    models = tiny_clip_files(tmp_path)
    corpus, server = served_corpus(tmp_path / "corpus", n=90, seed=3, duplicates=0.3, near_duplicates=0.15,
                                   faults=0.1, fault_names=["tiny", "cmyk", "large"])
    root = tmp_path / "ds"
    clip = ["clip.enabled=true", "clip.model=tiny-clip", f"clip.model_config={models / 'tiny-clip.json'}",
            "clip.allow_random_init=true", "clip.batch_size=8",
            f"clip.aesthetic.weights={models / 'aesthetic.safetensors'}",
            f"clip.nsfw.weights={models / 'nsfw.safetensors'}", "nsfw.enabled=false",  # their own NSFW head
            f"clip.watermark.weights={models / 'watermark.safetensors'}"]
    try:
        proc = run_cli(corpus, root, "shard_size=10", "download.resize_mode=keep_ratio_largest",
                       "download.image_size=96", "download.encode_format=png", *clip)
        assert proc.returncode == 0, proc.stderr[-3000:]
        samples, rejects = check_against_truth(root, corpus, 10)
    finally:
        server.stop()
    truth = expected_outcomes(corpus, 10)
    across = [k for k, r in rejects.items() if r["stage"] == "dedup" and r["detail"][-12:-6] != k[:6]]
    assert len([r for r in rejects.values() if r["stage"] == "dedup"]) == \
        len([t for t in truth.values() if t["kind"] in ("duplicate", "near_duplicate")]) > 30
    assert len(across) >= 10, "duplicates are found in earlier shards, not only in their own"
    for key, s in samples.items():
        assert max(s["width"], s["height"]) <= 96  # img2dataset resized
        assert s["original_width"] == truth[key]["width"] or truth[key]["fault"] == "large"
        for col in ("aesthetic", "nsfw", "watermark"):
            assert s[col] is not None, col  # stored although no threshold was set
        assert (s["clip_score"] is not None) == bool(s["caption"])  # image-text score needs a text
        assert len(s["clip_embedding"]) == 32 * 2
    tiny = [r for k, r in rejects.items() if truth[k]["fault"] == "tiny"]
    assert tiny and all(r["reason"] == "too_small" for r in tiny)  # img2dataset's message, mapped


def test_shortened_demo_runs_every_stage_end_to_end_and_a_second_run_reuses_it(tmp_path):
    """The README's first command, shortened: 40 URLs, 6 training steps, 3 prompts per category."""
    cmd = [*deepfusion_cmd(), "demo", "--workdir", str(tmp_path / "demo"), "--n", "40", "--train-steps", "6",
           "--eval-prompts", "3"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "dataset verify: ok" in first.stdout and "40 input rows" in first.stdout
    report = verify_dataset(str(tmp_path / "demo" / "dataset"))
    assert report.ok and report.samples > 30
    # captions: ground truth for every sample, the tiny VLM's (noise, but valid six-level JSON) for shard 0
    from datapipe.contract import Dataset

    ds = Dataset(str(tmp_path / "demo" / "dataset"))
    assert set(ds.caption_versions()) == {"reference", "tiny-vlm"}
    vlm = ds.captions("tiny-vlm").shard("000000").to_pylist()
    assert len(vlm) == ds.shard("000000").samples and all(r["status"] == "ok" for r in vlm)
    assert "caption QA of reference" in first.stdout and "captions tiny-vlm" in first.stdout
    # training on SmolLM2, then samples and the benchmark for held-out prompts
    demo = tmp_path / "demo"
    train_summary = json.loads((demo / "train" / "summary.json").read_text())
    assert train_summary["steps"] == 6 and train_summary["images"] == 96
    evaluation = json.loads((demo / "eval" / "report.json").read_text())
    categories = {"colour", "shape", "count", "position", "binding", "rgb", "shape_colourless", "colour_long",
                  "binding_long"}
    assert set(evaluation["model"]) == categories | {"position|found", "binding|found", "binding_pairs", "overall",
                                                     "binding|first", "binding|second", "binding_long|first",
                                                     "binding_long|second"}
    assert all(evaluation["model"][c]["n"] == 3 for c in categories)
    assert set(evaluation["unconditional"]) == set(evaluation["model"])
    grid = Image.open(demo / "eval" / "samples.png")
    assert grid.size[1] > 9 * 128 and len(set(grid.convert("L").getdata())) > 10  # nine labelled rows of real pixels
    assert evaluation["quality"]["ground_truth"]["accuracy"] == 1.0  # the clean-scene check beside alignment
    for name in ("training run", "eval report", "dashboard", "statistics"):
        assert name in first.stdout, name
    # the demo ends with the eval table and the grid's path
    tail = first.stdout.rstrip().splitlines()[-32:]
    assert any(line.startswith("sample grid: ") and line.endswith("samples.png") for line in tail), tail
    assert any("unconditional" in line and "ground truth" in line for line in tail), tail
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("this run: 0 shard(s)") == 2  # curation and VLM captions reused, not redone
    # statistics and the offline dashboard: the first run read the shards, the second only the cache
    summary = json.loads((tmp_path / "demo" / "dataset" / "stats" / "summary.json").read_text())
    assert summary["headline"]["inputs"] == 40 and summary["headline"]["samples"] == report.samples
    assert {v["version"] for v in summary["captions"]} == {"reference", "tiny-vlm"}
    assert "this run read 0 shard(s) and 0 caption shard(s)" in second.stdout
    assert (tmp_path / "demo" / "dashboard.html").stat().st_size > 1_000_000  # Plotly inlined: works offline
    # training resumed from its final checkpoint: no step was trained again
    assert "step 6/6" in first.stderr and "step 6/6" not in second.stderr and "resumed from step 6" in second.stderr


def test_poison_rows_that_kill_their_worker_are_found_and_rejected(tmp_path):
    """Two files that kill whatever decodes them (SIGKILL from a decoder plugin, as a segfault
    would) among good rows: their shards are retried, split, and finish with exactly those rows
    rejected as worker_crash; every other row is what an unpoisoned run makes of it."""
    from crashing_decoder import MAGIC
    from servers import Redirector

    corpus, server = served_corpus(tmp_path / "corpus", n=30, seed=8, faults=0.1, fault_names=["http_404", "cmyk"])
    files = Redirector({"poison-a": MAGIC + b"\x00" * 64, "poison-b": MAGIC + b"\x01" * 64})
    rows = pq.read_table(corpus / "urls.parquet").to_pylist()
    poison_at = {7, 22}
    for i in sorted(poison_at):
        rows[i] = {**rows[i], "URL": f"http://127.0.0.1:{files.port}/file/poison-{'ab'[i > 10]}"}
    urls = tmp_path / "poisoned.parquet"
    pq.write_table(pa.Table.from_pylist(rows), urls)
    root = tmp_path / "ds"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}:{os.environ.get('PYTHONPATH', '')}"}
    try:
        cmd = [*deepfusion_cmd(), "curate", f"input.paths=[{urls}]", f"output={root}", *FAST, "shard_size=10",
               f"download.url_policy.allow=[127.0.0.1:{server.port},127.0.0.1:{files.port}]",
               "decode.plugins=[crashing_decoder:register]", "task_retries=1"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    finally:
        server.stop()
        files.shutdown()
    assert proc.returncode == 0, proc.stderr[-3000:]
    samples, rejects = outcomes(root)
    assert len(samples) + len(rejects) == 30
    keys = {f"{i // 10:06d}{i % 10:06d}" for i in poison_at}
    crashed = {k for k, r in rejects.items() if r["reason"] == "worker_crash"}
    assert crashed == keys, (crashed, {k: rejects.get(k, samples.get(k)) for k in keys})
    assert all(rejects[k]["stage"] == "decode" and "died" in rejects[k]["detail"] for k in keys)
    truth = expected_outcomes(corpus, 10)
    for key, t in truth.items():
        if key not in keys:
            got = "sample" if key in samples else rejects[key]["stage"]
            assert got == t["expect"], (key, t, rejects.get(key))
    assert verify_dataset(str(root)).ok
    assert "splitting it to find the row(s)" in proc.stderr


def _dedup_outcome(root: Path) -> dict:
    samples, rejects = outcomes(root)
    return {**{k: ("sample", s["sha256"]) for k, s in samples.items()},
            **{k: (r["stage"], r["reason"], r["detail"]) for k, r in rejects.items()}}


def test_dedup_verdicts_are_the_same_for_any_partition_count_and_across_a_kill(tmp_path):
    corpus, server = served_corpus(tmp_path / "corpus", n=160, seed=9, duplicates=0.2, near_duplicates=0.15)
    extra = ("shard_size=16",)
    try:
        one = tmp_path / "one"
        proc = run_cli(corpus, one, *extra, "dedup.partitions=1")
        assert proc.returncode == 0, proc.stderr[-3000:]
        # three partitions, killed after the first commits, resumed with two
        three = tmp_path / "three"
        job = _curate_process(corpus, three, *extra, "dedup.partitions=3")
        _kill_when(job, lambda: _committed(three) >= 2)
        proc = run_cli(corpus, three, *extra, "dedup.partitions=2")
        assert proc.returncode == 0, proc.stderr[-3000:]
    finally:
        server.stop()
    a, b = _dedup_outcome(one), _dedup_outcome(three)
    assert a == b
    dedup = [v for v in a.values() if v[0] == "dedup"]
    assert len(dedup) >= 40 and any(v[1] == "near_duplicate_phash" for v in dedup)
    check_against_truth(one, corpus, 16)


def test_two_node_loopback_cluster_places_tasks_on_both_and_matches_an_embedded_run(tmp_path):
    """`ray start --head` plus a second `ray start --address` node on 127.0.0.1 with its own
    resources; the curate job submitted with `ray job submit --working-dir .` (its log says it joined
    the cluster and succeeded); the committed dataset must equal an
    embedded run of the same input, and shard tasks must have run on both nodes.

    The whole scenario runs in a network namespace of its own that has nothing but a loopback
    interface (tests/two_node_cluster.py): Ray derives node addresses from the machine's routes,
    and there every one it can find is 127.0.0.1, so nothing but loopback can be contacted."""
    import shutil

    unshare = shutil.which("unshare")
    assert unshare, "util-linux's unshare is needed to give the two-node cluster a loopback-only network"
    prefix = [unshare, "--net"] if os.geteuid() == 0 else [unshare, "--net", "--map-root-user"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run([*prefix, sys.executable, str(ROOT / "tests" / "two_node_cluster.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=840, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert len(result["nodes"]) == 2, result["nodes"]
    assert result["node_addresses"] == ["127.0.0.1", "127.0.0.1"]
    assert result["joined"] and result["succeeded"] and result["nodes_stopped"] == [True, True], result
    cluster, embedded = tmp_path / "cluster", tmp_path / "embedded"
    assert _dedup_outcome(cluster) == _dedup_outcome(embedded)
    check_against_truth(cluster, tmp_path / "corpus", 8)
    assert verify_dataset(str(cluster)).ok
