"""Our training step vs a bare torch loop on the same model and batch; loader throughput vs consumption.

- ours: `trainer.train.train()` as users run it (streaming loader, frozen LLM + codec, DeepSpeed
  engine, spike guard, EMA, logging), images/s from its own metrics after warm-up.
- bare: the same text encoder, codec, DiT config and EDM loss with torch.optim.AdamW, on the same
  batches (same captions, so the same text lengths) already in memory: no loader, no DeepSpeed, no guard, no EMA. The upper bound.
- loader: ShardLoader alone (read + decode + bucket), images/s, against what the step consumes.

  python benchmarks/trainer_overhead.py                       # small preset (SmolLM2 + 38M DiT), 64 px
  python benchmarks/trainer_overhead.py --config tiny --llm /path/to/tiny-llama --steps 60
  python benchmarks/trainer_overhead.py --images 32 --steps 40 --text-cache-mb 1024   # many epochs, cached LLM states

With --text-cache-mb, ours caches each caption's LLM states (trainer `text_cache_mb`) while the
bare loop still runs the LLM on every batch: what the cache buys when a small dataset is seen for
many epochs (its hit rate is printed).
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

import torch

from scenes import CorpusConfig, make_corpus
from scenes.dataset import ingest_corpus
from model import EDM, DeepFusionDiT, FrozenTextEncoder, build_codec
from trainer.config import load_config
from trainer.data import ShardLoader
from trainer.metrics import read_metrics
from trainer.train import model_configs, train

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="small", help="a bundled train config name")
    p.add_argument("--llm", default="", help="text encoder source override (default: the config's)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--text-cache-mb", type=float, default=0.0, help="ours only: the trainer's text_cache_mb")
    p.add_argument("--out", default="benchmarks/out/trainer_overhead.json")
    a = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="trainer-bench-"))
    overrides = [f"run_dir={work / 'run'}", f"steps={a.steps}", "log.every_steps=1", f"checkpoint.every_steps={10**9}",
                 "sample.prompts=[]", "sample.from_dataset=0", "log.tensorboard=false", f"text_cache_mb={a.text_cache_mb}"]
    if a.llm:
        overrides.append(f"model.text_encoder.source={a.llm}")
    cfg = load_config(ROOT / "jobs" / "configs" / "train" / f"{a.config}.yaml", overrides)
    side = cfg.data.resolution
    make_corpus(work / "corpus", CorpusConfig(n=a.images, sizes=[(side, side)], max_groups=2), progress=False)
    ingest_corpus(work / "corpus", str(work / "dataset"), shard_size=64)
    cfg.data.root = str(work / "dataset")

    # ours, end to end
    train(cfg)
    metrics = read_metrics(cfg.run_dir)[a.warmup:]
    ours = sum(m["images_per_s"] for m in metrics) / len(metrics)
    data_wait = sum(m["data_wait_fraction"] for m in metrics) / len(metrics)
    hit_rate = metrics[-1].get("text_cache_hit_rate")

    # bare torch on the same model and one batch
    dit_cfg, text_cfg, codec_cfg, edm_cfg = model_configs(cfg)
    encoder, codec, edm = FrozenTextEncoder(text_cfg), build_codec(codec_cfg), EDM(edm_cfg)
    dit_cfg.text_dims, dit_cfg.llm_layers = [encoder.hidden_size], [encoder.num_layers]
    torch.manual_seed(0)
    dit = DeepFusionDiT(dit=dit_cfg.to_dict()).train()
    opt = torch.optim.AdamW(dit.parameters(), lr=cfg.optim.lr)
    # the very batches the trainer consumed (same seed, same plan), decoded into memory up front
    batches = list(itertools.islice(iter(ShardLoader(cfg.data, cfg.seed, cfg.global_batch, 1)), a.steps))
    times = []
    for batch in batches:
        t0 = time.perf_counter()
        with torch.no_grad():
            text = encoder(batch.captions)
            x0 = codec.encode(batch.images.float() / 127.5 - 1)
        loss, _ = edm.loss(dit, x0, [text.hidden], [text.mask])
        opt.zero_grad(set_to_none=True)
        loss.mean().backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    bare = cfg.global_batch / (sum(times[a.warmup:]) / len(times[a.warmup:]))

    # the loader alone
    loader = ShardLoader(cfg.data, cfg.seed + 1, cfg.global_batch, 1)
    n = max(10, a.steps)
    t0 = time.perf_counter()
    for mb in itertools.islice(iter(loader), n):
        pass
    loader_rate = n * cfg.global_batch / (time.perf_counter() - t0)

    result = {"config": a.config, "global_batch": cfg.global_batch, "resolution": side, "threads": torch.get_num_threads(),
              "ours_images_per_s": ours, "bare_images_per_s": bare, "ratio": ours / bare,
              "data_wait_fraction": data_wait, "loader_images_per_s": loader_rate,
              "loader_over_step": loader_rate / ours, "text_cache_mb": a.text_cache_mb, "text_cache_hit_rate": hit_rate}
    print(f"{a.config}: batch {cfg.global_batch} at {side}px, {torch.get_num_threads()} threads")
    print(f"  ours (DeepSpeed step + loader + guard + EMA): {ours:8.2f} img/s   (data wait {100 * data_wait:.1f}%)")
    if hit_rate is not None:
        print(f"  ... with the text-state cache: {100 * hit_rate:.0f}% of captions served from it over the run")
    print(f"  bare torch loop, batch in memory:           {bare:8.2f} img/s")
    print(f"  ratio ours/bare: {ours / bare:.3f}x")
    print(f"  loader alone: {loader_rate:.1f} img/s = {loader_rate / ours:.1f}x what the step consumes")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
