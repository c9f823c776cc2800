"""The captioner with real vLLM on the CPU: the offline engine in Ray Data actors, and the
OpenAI-compatible server (started, killed mid-run, restarted), with a tiny random Qwen2-VL.

The tiny model's words are noise; guided decoding must still make every answer valid JSON in the
prompt set's word ranges (that is what these tests check), and the run bookkeeping must hold:
every key captioned exactly once, across resumes and a server killed mid-run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, free_port, scenes_dataset

from captioner.config import load_caption_config
from captioner.run import caption
from vllm_server import VllmServer
from datapipe.contract import LEVEL_COLUMNS, CaptionSet, CaptionVersion, Dataset, Storage

ENGINE = ["engine.enforce_eager=true", "engine.enable_chunked_prefill=false", "engine.num_gpus=0", "engine.num_cpus=0.5", "engine.kv_cache_gib=1",
          "engine.batch_size=8", "engine.max_num_seqs=8", "sampling.max_tokens=1500", "ray.num_cpus=2", "progress=false"]


def _add_shard_with_a_refused_image(root) -> None:
    import hashlib
    import io

    from PIL import Image

    from datapipe.contract import ShardWriter, commit_shards

    storage = Storage(str(root))
    with ShardWriter(storage, "000003", inputs=2) as w:
        for i, size in enumerate([(10000, 28), (64, 64)]):
            buf = io.BytesIO()
            Image.new("RGB", size, (200, 40, 40)).save(buf, "PNG")
            data = buf.getvalue()
            w.add(f"000003{i:09d}", data, "png", {"url": "u", "caption": "c", "width": size[0], "height": size[1],
                                                   "original_width": size[0], "original_height": size[1],
                                                   "sha256": hashlib.sha256(data).hexdigest()})
    commit_shards(storage, [w.entry])


def _all_rows(root, version):
    ds = Dataset(str(root))
    cs = CaptionSet(ds.storage, version)
    return {sid: cs.shard(sid).to_pylist() for sid in ds.manifest.shard_ids}


def _check_exactly_once(root, version):
    ds = Dataset(str(root))
    rows = _all_rows(root, version)
    for sid in ds.manifest.shard_ids:
        keys = [r["key"] for r in rows[sid]]
        sample_keys = ds.sidecar(sid, ["key"]).column("key").to_pylist()
        assert sorted(keys) == sorted(sample_keys), f"shard {sid}: every key exactly once"
    return [r for rs in rows.values() for r in rs]


def _assert_valid(rows, prompt_set):
    from captioner.prompts import load_prompt_set

    ps = load_prompt_set(str(prompt_set))
    for r in rows:
        assert r["status"] == "ok", (r["error"], r["raw"])
        counts = [len(r[c].split()) for c in LEVEL_COLUMNS]
        assert all(lv.min_words <= n <= lv.budget for lv, n in zip(ps.levels, counts)), counts
        assert r["prompt_id"] == ps.ref and r["model"] == "tiny-qwen2-vl"


def test_engine_in_ray_data_actors_captions_every_key_once(tmp_path, tiny_vlm, tiny_prompt_set):
    """Resuming after a kill is shared code (captioner.run.plan) and is tested on the server path below.

    Shard 000003 holds an image Qwen2-VL's processor refuses (aspect ratio over 200): it fails its
    own row (engine_rejected), not the actor and not the rest of its engine call."""
    root = scenes_dataset(tmp_path, n=12, sizes="64x64,96x64", shard_size=4)
    _add_shard_with_a_refused_image(root)
    base = [f"root={root}", "version=v1", "backend=vllm", f"model={tiny_vlm}", f"prompt_set={tiny_prompt_set}", *ENGINE]
    summary = caption(load_caption_config(None, base))
    assert summary["this_run"] == {**summary["this_run"], "shards": 4, "rows": 14, "ok": 13}
    meta = CaptionVersion.load(Storage(str(root)), "v1")
    assert meta.backend == "vllm" and meta.prompt_set["id"] == "six-levels-smoke" and meta.model == "tiny-qwen2-vl"
    rows = _check_exactly_once(root, "v1")
    (refused,) = [r for r in rows if r["key"] == "000003000000000"]
    assert refused["status"] == "failed" and refused["error"].startswith("engine_rejected: ValueError"), refused
    rows = [r for r in rows if r is not refused]
    _assert_valid(rows, tiny_prompt_set)
    # (a noise model can still need a retry: byte tokens that are not whole UTF-8 characters are
    # dropped from the text after the grammar has counted them as a word)
    assert all(r["finish_reason"] == "stop" and r["completion_tokens"] > 0 for r in rows)
    assert caption(load_caption_config(None, base))["this_run"]["rows"] == 0, "a finished run is a no-op"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_vlm):
    srv = VllmServer(tiny_vlm, free_port(), tmp_path_factory.mktemp("vllm-server") / "server.log", max_num_seqs=8)
    srv.start()
    yield srv
    srv.kill()


def _server_args(root, server, version, *extra):
    return [f"root={root}", f"version={version}", "backend=openai", "model=tiny-vlm", f"server.base_url={server.base_url}",
            "server.concurrency=8", "server.retries=2", "server.backoff_s=0.2", "server.timeout_s=120",
            "sampling.max_tokens=1500", "progress=false", *extra]


def test_server_backend_strategies_malformed_answers_and_regeneration(tmp_path, server, tiny_prompt_set):
    root = scenes_dataset(tmp_path, n=8, sizes="64x64", shard_size=4)
    ps = f"prompt_set={tiny_prompt_set}"
    joint = caption(load_caption_config(None, _server_args(root, server, "srv", ps)))
    assert joint["this_run"] == {**joint["this_run"], "rows": 8, "ok": 8}
    rows = _check_exactly_once(root, "srv")
    _assert_valid([{**r, "model": "tiny-qwen2-vl"} for r in rows], tiny_prompt_set)
    assert all(r["model"] == "tiny-vlm" for r in rows)

    # one request per level: each answer held to its word range by a regex
    per = caption(load_caption_config(None, _server_args(root, server, "per", ps, "strategy=per_level", "shards=[000000]")))
    assert per["this_run"]["ok"] == 4
    _assert_valid([{**r, "model": "tiny-qwen2-vl"} for r in _all_rows(root, "per")["000000"]], tiny_prompt_set)

    # guided decoding off: the noise model's answers are malformed -> asked again, then recorded with reason + raw
    bad = caption(load_caption_config(None, _server_args(root, server, "noguide", ps, "sampling.guided=false",
                                                         "max_attempts=2", "sampling.max_tokens=40")))
    assert bad["this_run"]["ok"] == 0 and sum(bad["this_run"]["failed"].values()) == 8
    failed = _check_exactly_once(root, "noguide")
    assert all(r["status"] == "failed" and r["attempts"] == 2 and r["error"] and r["raw"] for r in failed)
    assert all(r[c] is None for r in failed for c in LEVEL_COLUMNS)

    # regeneration: the failed rows of `noguide` in shard 000001, redone with guidance, overlay their parent
    where = "select.where=status = 'failed' AND shard = '000001'"
    regen = caption(load_caption_config(None, _server_args(root, server, "noguide-fix", ps, "parent=noguide", where)))
    assert regen["selected"] == 4 and regen["this_run"]["ok"] == 4
    resolved = _all_rows(root, "noguide-fix")
    assert all(r["version"] == "noguide" and r["status"] == "failed" for r in resolved["000000"])
    assert all(r["version"] == "noguide-fix" and r["status"] == "ok" for r in resolved["000001"])
    assert CaptionVersion.load(Storage(str(root)), "noguide-fix").parent == "noguide"


def test_server_killed_mid_run_fails_cleanly_and_a_rerun_completes_exactly_once(tmp_path, server, tiny_prompt_set):
    root = scenes_dataset(tmp_path, n=24, sizes="64x64", shard_size=4)  # 6 shards
    args = _server_args(root, server, "killed", f"prompt_set={tiny_prompt_set}", "server.concurrency=2")
    cmd = [sys.executable, "-m", "jobs.caption", "--config", "embedded", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    job = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    storage = Storage(str(root))
    deadline = time.time() + 300
    while time.time() < deadline:  # wait for the first committed caption shard, then kill the server
        if storage.exists("captions/killed/manifest.json") and CaptionVersion.load(storage, "killed").shards:
            break
        time.sleep(0.2)
    server.kill(signal.SIGKILL)
    out, _ = job.communicate(timeout=300)
    assert job.returncode == 1, out
    assert "error" in out and "connection refused" in out and "health probe failed" in out, out
    done_before = {s.id: s for s in CaptionVersion.load(storage, "killed").shards}
    assert 1 <= len(done_before) < 6, "killed mid-run"

    server.start()  # the user brings the server back and runs the same command again
    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    meta = CaptionVersion.load(storage, "killed")
    assert len(meta.shards) == 6
    assert all(meta.shard(s) == entry for s, entry in done_before.items()), "committed shards untouched"
    rows = _check_exactly_once(root, "killed")
    assert len(rows) == 24 and all(r["status"] == "ok" for r in rows)
