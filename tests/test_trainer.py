"""The trainer end to end, as users run it: `deepfusion train` / `deepfusion sample` processes,
DeepSpeed on gloo with one and two ranks, kill -9 and resume, and a learning test."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, deepfusion_cmd, scenes_dataset
from PIL import Image
from safetensors.torch import load_file

from trainer.config import load_config
from trainer.deepspeed_config import deepspeed_config
from trainer.guard import GuardedAdamW, SpikeGuardAbort, SpikeGuardConfig
from trainer.metrics import read_metrics

TINY = str(ROOT / "jobs" / "configs" / "train" / "tiny.yaml")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return scenes_dataset(tmp_path_factory.mktemp("train-data"), 48, sizes="32x32,48x24", shard_size=12)


def train_cmd(run_dir, dataset, tiny_llm, *overrides, nproc=1) -> list[str]:
    return deepfusion_cmd() + ["train", "--config", TINY, "--nproc", str(nproc), f"run_dir={run_dir}",
                               f"data.root={dataset}", f"model.text_encoder.source={tiny_llm}", *overrides]


def run(cmd, timeout=600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def model_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint / "mp_rank_00_model_states.pt", weights_only=False, map_location="cpu")["module"]


def test_deepspeed_config_follows_the_typed_config():
    cfg = load_config(TINY, ["global_batch=16", "micro_batch=2", "deepspeed.zero_stage=2", "deepspeed.bf16=true"])
    ds = deepspeed_config(cfg, world=2)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (16, 2, 4)
    assert ds["zero_optimization"]["stage"] == 2 and ds["bf16"]["enabled"]
    with pytest.raises(ValueError, match="not divisible"):
        deepspeed_config(load_config(TINY, ["global_batch=10", "micro_batch=4"]), world=2)
    with pytest.raises(ValueError, match=r"unknown key\(s\) optim.learning_rate"):
        load_config(TINY, ["optim.learning_rate=1"])


def test_spike_guard_rules():
    def optimizer(**kw):
        p = torch.nn.Parameter(torch.zeros(100))
        return p, GuardedAdamW([p], SpikeGuardConfig(**kw), lr=0.1)

    p, opt = optimizer(value_threshold=1.0, max_count=5, norm_factor=0)
    p.grad = torch.full((100,), 0.5)
    opt.step()
    assert not opt.last["skipped"] and p.abs().sum() > 0
    before = p.detach().clone()
    p.grad = torch.cat([torch.full((6,), 2.0), torch.zeros(94)])  # 6 values above 1.0 > 5 allowed
    opt.step()
    assert opt.last["skipped"] and "6 gradient values above 1.0" in opt.last["reason"] and torch.equal(p, before)
    p.grad = torch.full((100,), float("nan"))
    opt.step()
    assert opt.last["skipped"] and "non-finite" in opt.last["reason"] and opt.skipped == 2

    p, opt = optimizer(max_count=10**6, norm_factor=5.0, min_history=3)
    for _ in range(3):
        p.grad = torch.full((100,), 0.01)
        opt.step()
    p.grad = torch.full((100,), 0.2)  # norm 2.0 > 5 x 0.1
    opt.step()
    assert opt.last["skipped"] and "running median" in opt.last["reason"]

    p, opt = optimizer(value_threshold=0.0, max_count=0, max_consecutive=3)
    p.grad = torch.ones(100)
    opt.step(), opt.step()
    with pytest.raises(SpikeGuardAbort, match="3 consecutive steps skipped"):
        opt.step()


def test_train_writes_its_outputs_resumes_and_refuses_another_config(tmp_path, dataset, tiny_llm):
    run_dir = tmp_path / "run"
    first = run(train_cmd(run_dir, dataset, tiny_llm, "steps=6", "checkpoint.every_steps=2"))
    assert first.returncode == 0, first.stderr[-3000:]
    assert "trained 6 steps (48 images" in first.stdout
    metrics = read_metrics(run_dir)
    assert [m["step"] for m in metrics] == list(range(1, 7))
    last = metrics[-1]
    for key in ("loss", "images_per_s", "data_wait_fraction", "skipped_steps", "peak_memory_mb", "lr", "grad_norm"):
        assert key in last
    assert any(k.startswith("loss/level_") for k in last) and any(k.startswith("loss/sigma_") for k in last)
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))
    assert checkpoints == ["step_00000004", "step_00000006"]  # keep_last: 2
    export = run_dir / "checkpoints" / "step_00000006" / "ema"
    assert (export / "config.json").exists() and load_file(str(export / "diffusion_pytorch_model.safetensors"))
    grid = Image.open(run_dir / "samples" / "step_00000006.png")
    rows = json.loads((run_dir / "samples" / "prompts.json").read_text())["rows"]
    # 2 prompts + 1 sample x 2 levels, 2 seeds; 32-px images shown 4x, each row's prompt under it
    assert len(rows) == 4 and grid.size[0] == 2 * (128 + 2) + 2 and grid.size[1] > 4 * (128 + 2)

    again = run(train_cmd(run_dir, dataset, tiny_llm, "steps=6", "checkpoint.every_steps=2"))
    assert again.returncode == 0 and "trained 6 steps" in again.stdout
    assert len(read_metrics(run_dir)) == 6

    longer = run(train_cmd(run_dir, dataset, tiny_llm, "steps=8", "checkpoint.every_steps=2"))
    assert longer.returncode == 0 and "resumed from step 6" in longer.stderr
    assert [m["step"] for m in read_metrics(run_dir)] == list(range(1, 9))

    other = run(train_cmd(run_dir, dataset, tiny_llm, "steps=10", "optim.lr=0.5"))
    assert other.returncode == 1
    assert "another training configuration" in other.stderr and "optim.lr" in other.stderr

    # the same seed in two separate processes gives the same image; another seed another image
    a = tmp_path / "a"
    for folder, seed in (("first", 0), ("second", 0), ("other", 1)):
        out = run(deepfusion_cmd() + ["sample", str(run_dir), "prompts=[a red circle]", f"seeds=[{seed}]",
                                      "steps=4", f"out={a / folder}"])
        assert out.returncode == 0, out.stderr[-2000:]
    first, second = (a / "first" / "000_seed0.png").read_bytes(), (a / "second" / "000_seed0.png").read_bytes()
    assert first == second
    assert first != (a / "other" / "000_seed1.png").read_bytes()


def test_captions_over_their_level_budget_are_counted_and_warned_about_once_per_level(tmp_path, dataset, tiny_llm):
    """No silent truncation: a caption longer than data.level_tokens for its level is cut, every
    cut is counted in the metrics per level, and the log says so once per level with the length."""
    run_dir = tmp_path / "run"
    out = run(train_cmd(run_dir, dataset, tiny_llm, "steps=4", "data.level_weights={'1': 1, '6': 1}",
                        "data.level_tokens={'1': 64, '6': 6}", "checkpoint.every_steps=100", "sample.every_steps=0"))
    assert out.returncode == 0, out.stderr[-3000:]
    warnings = [line for line in out.stderr.splitlines() if "was cut to its budget" in line]
    assert len(warnings) == 1 and "level-6 caption of" in warnings[0] and "budget of 6 (data.level_tokens.6)" in warnings[0]
    last = read_metrics(run_dir)[-1]
    assert last["truncated/level_6"] > 0 and "truncated/level_1" not in last
    assert last["truncated_captions"] == last["truncated/level_6"]
    # the defaults hold every level of the reference captions: nothing is cut
    fits = run(train_cmd(tmp_path / "fits", dataset, tiny_llm, "steps=2", "data.level_weights={'6': 1}",
                         "checkpoint.every_steps=100", "sample.every_steps=0"))
    assert fits.returncode == 0, fits.stderr[-3000:]
    assert "was cut" not in fits.stderr and read_metrics(tmp_path / "fits")[-1]["truncated_captions"] == 0


def test_spike_guard_aborts_a_diverging_run_with_a_clear_message(tmp_path, dataset, tiny_llm):
    out = run(train_cmd(tmp_path / "run", dataset, tiny_llm, "steps=10", "spike_guard.value_threshold=0",
                        "spike_guard.max_count=0", "spike_guard.max_consecutive=3"))
    assert out.returncode == 1
    assert "spike guard: 3 consecutive steps skipped" in out.stderr and "Traceback" not in out.stderr


def test_resume_after_kill_9_equals_an_uninterrupted_run(tmp_path, dataset, tiny_llm):
    # with the text-state cache on: a resumed run starts with an empty cache and must refill it
    # with exactly the states the uninterrupted run used
    args = ["steps=40", "checkpoint.every_steps=10", "checkpoint.keep_last=5", "sample.prompts=[]", "sample.from_dataset=0",
            "text_cache_mb=64"]
    straight = run(train_cmd(tmp_path / "straight", dataset, tiny_llm, *args))
    assert straight.returncode == 0, straight.stderr[-3000:]

    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(killed_dir, dataset, tiny_llm, *args), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    latest = killed_dir / "checkpoints" / "latest"
    deadline = time.monotonic() + 300
    while not latest.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    at_kill = latest.read_text().strip()
    assert at_kill < "step_00000040"

    resumed = run(train_cmd(killed_dir, dataset, tiny_llm, *args))
    assert resumed.returncode == 0 and "resumed from step" in resumed.stderr, resumed.stderr[-3000:]

    # Same losses at every step and the same weights (model and EMA), to float32 round-off.
    a, b = read_metrics(tmp_path / "straight"), read_metrics(killed_dir)
    assert [m["step"] for m in a] == [m["step"] for m in b] == list(range(1, 41))
    assert a[-1]["text_cache_hit_rate"] > 0.3  # 320 captions drawn from 48 images x 6 levels: many repeat
    for x, y in zip(a, b):
        assert abs(x["loss"] - y["loss"]) <= 1e-6 * max(1.0, abs(x["loss"])), (x["step"], x["loss"], y["loss"])
    final = "checkpoints/step_00000040"
    wa, wb = model_weights(tmp_path / "straight" / final), model_weights(killed_dir / final)
    ea = load_file(str(tmp_path / "straight" / final / "ema" / "diffusion_pytorch_model.safetensors"))
    eb = load_file(str(killed_dir / final / "ema" / "diffusion_pytorch_model.safetensors"))
    for x, y in ((wa, wb), (ea, eb)):
        assert x.keys() == y.keys()
        assert max((x[k].float() - y[k].float()).abs().max().item() for k in x) <= 1e-6


def test_two_processes_on_gloo(tmp_path, dataset, tiny_llm):
    run_dir = tmp_path / "run"
    args = ["global_batch=8", "checkpoint.every_steps=2", "deepspeed.zero_stage=2", "data.log_keys=true",
            "sample.prompts=[]", "sample.from_dataset=0"]
    out = run(train_cmd(run_dir, dataset, tiny_llm, "steps=4", *args, nproc=2))
    assert out.returncode == 0, out.stderr[-4000:]
    ckpt = run_dir / "checkpoints" / "step_00000004"
    assert (ckpt / "zero_pp_rank_0_mp_rank_00_optim_states.pt").exists()
    assert (ckpt / "zero_pp_rank_1_mp_rank_00_optim_states.pt").exists()

    def keys(rank):
        rows = [line.split("\t") for line in (run_dir / "keys" / f"rank{rank}.tsv").read_text().splitlines()]
        return {(int(e), int(b)): set(k.strip().split(",")) for e, b, _, k in rows}

    k0, k1 = keys(0), keys(1)
    assert k0.keys() == k1.keys() and len(k0) == 4
    for step in k0:
        assert len(k0[step]) == len(k1[step]) == 4 and not k0[step] & k1[step]  # disjoint halves

    def checksums():
        return [json.loads((run_dir / "ranks" / f"rank{r}.json").read_text())["param_sha256"] for r in (0, 1)]

    c0, c1 = checksums()
    assert c0 == c1  # data-parallel ranks hold identical weights

    more = run(train_cmd(run_dir, dataset, tiny_llm, "steps=6", *args, nproc=2))
    assert more.returncode == 0 and "resumed from step 4" in more.stderr, more.stderr[-4000:]
    assert len(read_metrics(run_dir)) == 6
    c0b, c1b = checksums()
    assert c0b == c1b and c0b != c0


def keys_per_step(run_dir: Path) -> dict[tuple[int, int], list[str]]:
    """(epoch, global batch) -> every key the loader yielded for it, over all ranks' logs."""
    out: dict[tuple[int, int], list[str]] = {}
    for log in sorted((run_dir / "keys").glob("rank*.tsv")):
        for line in log.read_text().splitlines():
            epoch, index, _, keys = line.split("\t")
            out.setdefault((int(epoch), int(index)), []).extend(keys.split(","))
    return {k: sorted(v) for k, v in out.items()}


def test_elastic_resume_2_to_1_and_1_to_2_ranks(tmp_path, dataset, tiny_llm):
    """A ZeRO-2 run checkpointed on N ranks resumes on M: every step sees exactly the samples of an
    uninterrupted run (none skipped or repeated), and the re-partitioned optimizer state gives the
    uninterrupted run's losses and weights to float round-off (a fresh optimizer would not).
    One run shrinks and then grows: steps 1-3 on 2 ranks, 4-6 on 1, 7-9 on 2 again."""
    import shutil

    args = ["global_batch=8", "checkpoint.every_steps=3", "checkpoint.keep_last=5", "deepspeed.zero_stage=2",
            "data.log_keys=true", "sample.prompts=[]", "sample.from_dataset=0", "log.every_steps=1"]
    straight = tmp_path / "straight"
    out = run(train_cmd(straight, dataset, tiny_llm, "steps=9", *args))
    assert out.returncode == 0, out.stderr[-4000:]
    want_keys = keys_per_step(straight)
    assert len(want_keys) == 9 and all(len(v) == len(set(v)) == 8 for v in want_keys.values())
    want_loss = [m["loss"] for m in read_metrics(straight)]
    want_w = model_weights(straight / "checkpoints" / "step_00000009")
    d = tmp_path / "elastic"
    a = run(train_cmd(d, dataset, tiny_llm, "steps=3", *args, nproc=2))
    assert a.returncode == 0, a.stderr[-4000:]
    assert (d / "checkpoints" / "step_00000003" / "optimizer_full.pt").exists()
    shutil.copytree(d, tmp_path / "fresh-optimizer")
    for steps, written, now in ((6, 2, 1), (9, 1, 2)):
        b = run(train_cmd(d, dataset, tiny_llm, f"steps={steps}", *args, nproc=now))
        assert b.returncode == 0, b.stderr[-4000:]
        assert f"written by {written} rank(s), on {now}: ZeRO-2 optimizer state re-partitioned" in b.stderr
    assert keys_per_step(d) == want_keys  # the global order continued exactly
    losses = [m["loss"] for m in read_metrics(d)]
    assert len(losses) == 9
    for step, (x, y) in enumerate(zip(want_loss, losses), start=1):
        assert abs(x - y) <= 1e-4 * max(1.0, abs(x)), (step, x, y)
    w = model_weights(d / "checkpoints" / "step_00000009")
    assert max((want_w[k].float() - w[k].float()).abs().max().item() for k in want_w) <= 1e-5
    # resuming with the optimizer state thrown away is visibly different: the check above can fail
    fresh = tmp_path / "fresh-optimizer"
    (fresh / "checkpoints" / "step_00000003" / "optimizer_full.pt").unlink()
    refused = run(train_cmd(fresh, dataset, tiny_llm, "steps=6", *args))
    assert refused.returncode == 1 and "resume it on the rank count that wrote it" in refused.stderr


def test_init_from_starts_a_new_run_at_a_new_resolution_from_another_runs_weights(tmp_path, dataset, tiny_llm):
    base = tmp_path / "base"
    out = run(train_cmd(base, dataset, tiny_llm, "steps=4", "checkpoint.every_steps=4", "sample.prompts=[]",
                        "sample.from_dataset=0"))
    assert out.returncode == 0, out.stderr[-3000:]
    # lr 0: the new run's weights stay the ones it started from, so they must be the base run's
    warm = tmp_path / "warm"
    args = [f"init_from={base}", "data.resolution=48", "steps=2", "optim.lr=0", "checkpoint.every_steps=2",
            "sample.prompts=[]", "sample.from_dataset=0"]
    out = run(train_cmd(warm, dataset, tiny_llm, *args))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "initialised from" in out.stderr and "resumed" not in out.stderr
    ckpt = warm / "checkpoints" / "step_00000002"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    lineage = state["init_from"]
    assert lineage["step"] == 4 and lineage["checkpoint"].endswith("step_00000004") and lineage["weights"] == "model"
    assert json.loads((ckpt / "inference.json").read_text())["init_from"] == lineage
    assert json.loads((ckpt / "inference.json").read_text())["resolution"] == [48, 48]
    assert state["step"] == 2 and state["position"]["epoch"] == 0 and state["position"]["batches"] == 2  # fresh data
    start, now = model_weights(base / "checkpoints" / "step_00000004"), model_weights(ckpt)
    assert all(torch.equal(start[k], now[k]) for k in start)
    # re-running the same command resumes the warm run itself (its lineage kept)
    again = run(train_cmd(warm, dataset, tiny_llm, *args[:-3], "steps=3", "checkpoint.every_steps=2",
                          "sample.prompts=[]", "sample.from_dataset=0"))
    assert again.returncode == 0 and "resumed from step 2" in again.stderr, again.stderr[-3000:]
    assert json.loads((warm / "checkpoints" / "step_00000003" / "trainer_state.json").read_text())["init_from"] == lineage
    # another model shape is refused, naming the tensors
    bad = run(train_cmd(tmp_path / "bad", dataset, tiny_llm, f"init_from={base}", "model.dit.width=96", "steps=1"))
    assert bad.returncode == 1 and "does not fit" in bad.stderr and "shape mismatches" in bad.stderr, bad.stderr[-2000:]


def test_a_tiny_model_learns_the_named_colour(tmp_path, tiny_llm, artifacts_dir):
    """Single-colour scenes with their level-1 reference captions: the loss falls clearly, and images
    generated for "a <colour> <shape>" show that colour (by pixel analysis) far above chance (1/9)."""
    from scenes import CorpusConfig, make_corpus
    from scenes.analyse import dominant_color
    from scenes.dataset import ingest_corpus
    from scenes.graph import COLORS, SHAPES
    from trainer.sampling import load_pipeline, save_grid, to_pil

    make_corpus(tmp_path / "corpus", CorpusConfig(n=400, sizes=[(32, 32)], max_groups=1, text_probability=0.0,
                                                  object_sizes=["large"]), progress=False)
    ingest_corpus(tmp_path / "corpus", str(tmp_path / "dataset"), shard_size=100)
    run_dir = tmp_path / "run"
    out = run(train_cmd(run_dir, tmp_path / "dataset", tiny_llm, "steps=800", "global_batch=16",
                        "data.level_weights={'1': 1}", "model.dit.width=128", "model.dit.heads=4", "model.dit.depth=3",
                        "model.codec.scale=1.333", "model.edm={sigma_data: 1.0, p_mean: 0.5, p_std: 1.5}",
                        "optim.lr=2e-3", "log.every_steps=10", "checkpoint.every_steps=800", "sample.from_dataset=0"))
    assert out.returncode == 0, out.stderr[-3000:]
    losses = [m["loss"] for m in read_metrics(run_dir)]
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, (losses[:5], losses[-5:])

    pipe = load_pipeline(run_dir)
    prompts, wanted = [], []
    for color in COLORS:
        for shape in SHAPES:
            prompts.append(f"{'an' if color[0] in 'aeiou' else 'a'} {color} {shape}")
            wanted.append(color)
    images = pipe.generate(prompts, list(range(len(prompts))), steps=16, guidance=3.0)
    save_grid(images, len(COLORS), len(SHAPES), artifacts_dir / "trainer_colour_following.png")
    found = [dominant_color(to_pil(image)) for image in images]
    accuracy = sum(f == w for f, w in zip(found, wanted)) / len(wanted)
    assert accuracy >= 0.4, list(zip(wanted, found))  # chance is 1/9; P(>= 11 of 27 by chance) < 1e-4

    # the same checkpoint through the benchmark CLI: held-out prompts, colour clearly above chance
    ev = run([*deepfusion_cmd(), "eval", "scenes", "--out", str(tmp_path / "eval"), str(run_dir),
              "categories=[colour,shape]", "per_category=27", "seeds=[0]", "steps=16"])
    assert ev.returncode == 0, ev.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["resolution"] == [32, 32] and report["ground_truth"]["colour"]["accuracy"] >= 0.97
    assert report["model"]["colour"]["ci95"][0] > report["chance"]["colour"]["ci95"][1], report["model"]
    assert (tmp_path / "eval" / "grid_colour.png").exists() and "eval scenes:" in ev.stdout
    # text use: the denoiser reads the colour word (the wrong colour costs loss, beyond its interval)
    assert report["text_use"]["colour"]["ci95"][0] > 0, report["text_use"]["colour"]
    assert "text use:" in ev.stdout


def test_zero3_bf16_with_activation_checkpointing_trains_and_resumes(tmp_path, dataset, tiny_llm):
    run_dir = tmp_path / "run"
    args = ["checkpoint.every_steps=2", "deepspeed.zero_stage=3", "deepspeed.bf16=true",
            "deepspeed.activation_checkpointing=true", "sample.from_dataset=0"]
    first = run(train_cmd(run_dir, dataset, tiny_llm, "steps=3", *args))
    assert first.returncode == 0, first.stderr[-3000:]
    second = run(train_cmd(run_dir, dataset, tiny_llm, "steps=4", *args))
    assert second.returncode == 0 and "resumed from step 3" in second.stderr, second.stderr[-3000:]
    losses = [m["loss"] for m in read_metrics(run_dir)]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    ema = load_file(str(run_dir / "checkpoints" / "step_00000004" / "ema" / "diffusion_pytorch_model.safetensors"))
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in ema.values())


def test_bit_rot_in_committed_shards_is_skipped_counted_and_named_by_verify(tmp_path, tiny_llm):
    """Damage two committed tars on storage (an image member's bytes flipped in place; a tar cut
    short): training skips those samples and counts them, `dataset verify` names them."""
    import shutil
    import tarfile

    from datapipe.contract import Dataset, verify_dataset

    root = tmp_path / "ds"
    shutil.copytree(scenes_dataset(tmp_path / "src", 24, sizes="32x32", shard_size=8), root)
    ds = Dataset(str(root))
    first, second = ds.shards[0], ds.shards[1]
    with tarfile.open(root / first.tar) as tf:
        member = next(m for m in tf.getmembers() if m.name.endswith(".png"))
    data = bytearray((root / first.tar).read_bytes())
    for i in range(member.offset_data + 20, member.offset_data + 60):
        data[i] ^= 0xFF  # bit rot inside one image: same size, the tar structure intact
    (root / first.tar).write_bytes(bytes(data))
    tail = (root / second.tar).read_bytes()
    (root / second.tar).write_bytes(tail[: len(tail) // 2])  # the second half of a tar lost
    damaged_key = member.name.rsplit(".", 1)[0]

    report = verify_dataset(str(root))
    text = "\n".join(str(p) for p in report.problems)
    assert not report.ok and damaged_key in text and "no longer match" in text
    assert f"shard {second.id}: tar has 5 samples, the manifest says 8; missing from the tar" in text, text

    proc = run(train_cmd(tmp_path / "run", root, tiny_llm, "steps=6", "global_batch=8", "log.every_steps=1",
                         "checkpoint.every_steps=6"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = read_metrics(tmp_path / "run")
    assert metrics[-1]["corrupt_samples"] >= 2 and all(math.isfinite(m["loss"]) for m in metrics)
    assert "unreadable or undecodable image, skipped" in proc.stderr
