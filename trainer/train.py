"""The training loop: DeepSpeed on the DiT, the frozen LLM and codec outside it. Read top to bottom.

    python -m trainer.train --config jobs/configs/train/tiny.yaml data.root=/data/ds steps=2000
    torchrun --nproc_per_node 8 -m trainer.train --config ...       # several processes / nodes

Counted in optimizer steps of `global_batch` images. Re-running the same command resumes from
the latest checkpoint in run_dir (model, optimizer, EMA, RNG, loader position), so a killed run
loses at most the steps since its last checkpoint and then sees exactly the samples it would have.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import socket
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist

from common.config import set_fields
from model import EDM, DeepFusionDiT, FrozenTextEncoder, build_codec, encode_for, get_preset, text_side, warm_for
from model.presets import layers_read
from model.config import CodecConfig, DiTConfig, EDMConfig, TextEncoderConfig

from .checkpoint import Checkpoints, warm_start
from .config import TrainConfig, load_config
from .data import LoaderPosition, ShardLoader
from .deepspeed_config import deepspeed_config
from .ema import EMA
from .guard import GuardedAdamW
from .metrics import LossBreakdown, RunLog, TruncationCount, peak_memory_mb
from .sampling import Pipeline, save_grid

log = logging.getLogger("trainer")


# -- set-up helpers -------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> tuple[int, int, torch.device]:
    """One process by default; torchrun / the deepspeed launcher set these variables themselves."""
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(free_port())
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(key, value)
    import deepspeed

    cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", verbose=False)
    local = int(os.environ["LOCAL_RANK"])
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size(), device


def from_rank0(fn):
    """Run fn on rank 0 and give every rank its value (shard listings, follow-mode decisions)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return fn()
    box = [fn() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def second_text_config(cfg: TrainConfig) -> TextEncoderConfig | None:
    """The second LLM branch's encoder settings, when model.text_encoder_2.source is set."""
    given = set_fields(cfg.model.text_encoder_2)
    return TextEncoderConfig(**given) if given.get("source") else None


def text_configs(cfg: TrainConfig) -> list[TextEncoderConfig]:
    """The encoder settings of each LLM branch: the preset's with model.text_encoder's changes, and
    the second LLM's when model.text_encoder_2.source is set."""
    text = TextEncoderConfig(**{**asdict(get_preset(cfg.model.preset).text), **set_fields(cfg.model.text_encoder)})
    return [text] + [c for c in [second_text_config(cfg)] if c is not None]


def model_configs(cfg: TrainConfig, side: dict | None = None) -> tuple[DiTConfig, TextEncoderConfig, CodecConfig, EDMConfig]:
    """The model's configs from the preset and the run's changes. `side`: the DiT fields the loaded
    LLM(s) fix (text_side(encoders, ...)); without it the preset's LLM shape stands in."""
    preset = get_preset(cfg.model.preset)
    m = cfg.model
    codec = CodecConfig(**{**asdict(preset.codec), **set_fields(m.codec)})
    dit = {**preset.dit.to_dict(), **set_fields(m.dit), **(side or {})}
    return DiTConfig.from_dict(dit), text_configs(cfg)[0], codec, EDMConfig(**set_fields(m.edm))


def lr_lambda(cfg: TrainConfig):
    o = cfg.optim

    def factor(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "cosine":
            t = min(1.0, (step - o.warmup_steps) / max(1, cfg.steps - o.warmup_steps))
            return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
        return 1.0

    if o.schedule not in ("constant", "cosine"):
        raise ValueError(f"optim.schedule must be constant or cosine, got {o.schedule!r}")
    return factor


def training_noise(edm: EDM, seed: int, step: int, first: int, shape: torch.Size, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma [m], unit noise [m, ...]) for the samples at positions first..first+m-1 of step's global
    batch, each drawn from its own generator keyed by (seed, step, position): the same draws on any
    number of ranks and any micro-batch layout, so a resumed run redraws them exactly, also on
    another world size."""
    sigmas, noises = [], []
    for j in range(shape[0]):
        g = torch.Generator(device=device).manual_seed(((seed * 1_000_003 + step) * 100_003 + first + j) % (2**63))
        sigmas.append(edm.sample_sigma(1, g, device))
        noises.append(torch.randn(shape[1:], generator=g, device=device))
    return torch.cat(sigmas), torch.stack(noises)


def sample_prompts(cfg: TrainConfig, loader: ShardLoader) -> list[str]:
    """The grid's rows: the configured prompts, then a few dataset captions at several levels."""
    prompts = list(cfg.sample.prompts)
    planner = loader.planner
    shards = planner.dataset.shards
    if cfg.sample.from_dataset and shards and planner.caption_sets:
        rows = planner.caption_sets[0].shard(shards[0].id).to_pylist()[: cfg.sample.from_dataset]
        prompts += [row[f"level_{level}"] for row in rows for level in cfg.sample.levels if row[f"level_{level}"]]
    return prompts


# -- the loop ---------------------------------------------------------------------------------------
def train(cfg: TrainConfig) -> dict:
    import deepspeed

    rank, world, device = init_distributed()
    run_dir = Path(cfg.run_dir)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    micro, accum = cfg.batch_layout(world)
    log.info("rank %d/%d on %s: global batch %d = micro %d x accumulation %d x %d rank(s)",
             rank, world, device, cfg.global_batch, micro, accum, world)

    # Frozen parts: the LLM (the hidden layers the DiT reads) and the codec, no gradients, outside DeepSpeed.
    text_cfgs = text_configs(cfg)
    encoders = [FrozenTextEncoder(c, device=device, cache_mb=cfg.text_cache_mb / len(text_cfgs)) for c in text_cfgs]
    # The DiT's text side must match the LLM(s) it reads: widths, depths, heads from the LLMs.
    conditioning = {**get_preset(cfg.model.preset).dit.to_dict(), **set_fields(cfg.model.dit)}["conditioning"]
    dit_cfg, text_cfg, codec_cfg, edm_cfg = model_configs(cfg, text_side(encoders, conditioning))
    codec = build_codec(codec_cfg, device=device)
    if dit_cfg.in_channels != codec.channels:
        raise ValueError(f"model.dit.in_channels={dit_cfg.in_channels} but the codec gives {codec.channels} channels")
    if cfg.data.bucket_multiple % (codec.factor * dit_cfg.patch_size):
        raise ValueError(f"data.bucket_multiple={cfg.data.bucket_multiple} must be a multiple of codec factor x "
                         f"patch size = {codec.factor * dit_cfg.patch_size}")
    edm = EDM(edm_cfg)

    # The trained part: identical initial weights on every rank (same seed), then DeepSpeed.
    torch.manual_seed(cfg.seed)
    dit = DeepFusionDiT(dit=dit_cfg.to_dict()).to(device)
    if cfg.deepspeed.activation_checkpointing:
        dit.enable_gradient_checkpointing()
    n_params = sum(p.numel() for p in dit.parameters())
    log.info("DiT: %s parameters; %s", f"{n_params:,}", layers_read(dit_cfg))
    ema = EMA(dit, cfg.ema)
    checkpoints = Checkpoints(run_dir, cfg.checkpoint.keep_last, rank, cfg.checkpoint.elastic)
    init_from = None
    if cfg.init_from and checkpoints.latest() is None:  # a warm start; once the run has checkpoints it resumes
        init_from = warm_start(dit, ema.model, cfg.init_from)
        log.info("initialised from %s (step %s, %s weights; optimizer and data position start fresh)",
                 init_from["checkpoint"], init_from["step"], init_from["weights"])
    o = cfg.optim
    optimizer = GuardedAdamW(dit.parameters(), cfg.spike_guard, max_grad_norm=o.grad_clip, full_numel=n_params,
                             lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    engine, _, _, scheduler = deepspeed.initialize(model=dit, optimizer=optimizer, lr_scheduler=scheduler,
                                                   config=deepspeed_config(cfg, world))
    zero3 = cfg.deepspeed.zero_stage == 3

    # Resume from the latest checkpoint, if any (refused when the config identity differs).
    state = checkpoints.load(engine, ema, cfg.identity(), cfg.identity_hash(), world, scheduler) or {
        "step": 0, "images": 0, "position": asdict(LoaderPosition()), "guard": None, "init_from": init_from}
    if state["guard"]:
        optimizer.load_guard_state(state["guard"])
    step, images = state["step"], state["images"]
    if step:
        log.info("resumed from step %d (%d images) in %s", step, images, checkpoints.latest())
    def budgets_of(levels: list[str]) -> list[int]:
        return [cfg.data.level_tokens.get(level, text_cfg.max_tokens) for level in levels]

    def warm_text_cache(captions: list[str], levels: list[str]) -> None:
        with torch.no_grad():
            warm_for(dit, encoders, captions, max_tokens=budgets_of(levels))

    loader = ShardLoader(cfg.data, cfg.seed, micro, accum, rank, world, LoaderPosition(**state["position"]),
                         sync=from_rank0, keys_dir=str(run_dir / "keys") if cfg.data.log_keys else None,
                         warm=warm_text_cache if encoders[0].cache is not None else None)
    batches = iter(loader)
    runlog = RunLog(run_dir, rank, cfg.log.tensorboard)
    breakdown, truncations = LossBreakdown(), TruncationCount()
    pipeline = Pipeline(ema.model, encoders, codec, edm, (cfg.data.resolution, cfg.data.resolution), device)
    grid_prompts = sample_prompts(cfg, loader)

    def sample_grid(at_step: int) -> Path | None:
        if rank != 0 or not grid_prompts:
            return None
        seeds = cfg.sample.seeds
        prompts = [p for p in grid_prompts for _ in seeds]
        images_ = pipeline.generate(prompts, seeds * len(grid_prompts), cfg.sample.steps, cfg.sample.guidance)
        path = save_grid(images_, len(grid_prompts), len(seeds), run_dir / "samples" / f"step_{at_step:08d}.png",
                         row_labels=grid_prompts)
        (run_dir / "samples" / "prompts.json").write_text(json.dumps({"rows": grid_prompts, "seeds": seeds}, indent=1))
        return path

    def save_checkpoint(at_step: int) -> Path:
        trainer_state = {"step": at_step, "images": images, "position": asdict(loader.position),
                         "guard": optimizer.guard_state(), "config_hash": cfg.identity_hash(),
                         "config_identity": cfg.identity(), "world": world, "loader": loader.stats.as_dict(),
                         "init_from": state.get("init_from")}
        inference = {"text_encoder": asdict(text_cfg), "codec": asdict(codec_cfg), "edm": asdict(edm_cfg),
                     **({"text_encoder_2": asdict(text_cfgs[1])} if len(text_cfgs) > 1 else {}),
                     "resolution": [cfg.data.resolution, cfg.data.resolution],
                     "buckets": [list(b) for b in loader.planner.buckets], "step": at_step, "images": images,
                     "init_from": state.get("init_from")}
        return checkpoints.save(engine, at_step, trainer_state, ema, inference)

    last_t, last_images, last_wait = time.perf_counter(), images, loader.wait_s
    grid = None
    engine.train()
    while step < cfg.steps:
        # One optimizer step = `accum` micro-batches on every rank; DeepSpeed steps on the last.
        for micro_step in range(accum):
            batch = next(batches)
            with torch.no_grad():
                # only the LLM states the DiT reads are stacked (and cached), per branch
                texts = encode_for(dit, encoders, batch.captions, max_tokens=budgets_of(batch.levels))
                truncations.add(batch.levels, texts[0].lengths, texts[0].budgets)
                x0 = codec.encode(batch.images.to(device).float() / 127.5 - 1)
            sigma, noise = training_noise(edm, cfg.seed, step, (micro_step * world + rank) * micro, x0.shape, device)
            losses, sigmas = edm.loss(engine, x0, [t.hidden for t in texts], [t.mask for t in texts], sigma=sigma,
                                      noise=noise)
            if batch.valid is None or bool(batch.valid.all()):
                engine.backward(losses.mean())
                breakdown.add(losses, sigmas, batch.levels)
            else:  # damaged samples (bit rot) keep their slots with weight 0: every rank steps alike
                weight = batch.valid.to(losses.device, losses.dtype)
                engine.backward((losses * weight).sum() / weight.sum().clamp(min=1))
                mask = batch.valid.to(losses.device)
                breakdown.add(losses[mask], sigmas[mask], [lv for lv, k in zip(batch.levels, batch.valid.tolist()) if k])
            engine.step()
        assert batch.last_of_step
        step += 1
        images += cfg.global_batch
        if not optimizer.last.get("skipped"):
            ema.update(engine.module, images, cfg.global_batch, zero3)

        if step % cfg.log.every_steps == 0 or step == cfg.steps:
            now = time.perf_counter()
            values = breakdown.reduce()
            values.update(truncations.reduce())
            values.update({
                "images": images, "lr": scheduler.get_last_lr()[0], "grad_norm": optimizer.last.get("grad_norm", 0.0),
                "images_per_s": (images - last_images) / (now - last_t),
                "data_wait_fraction": (loader.wait_s - last_wait) / (now - last_t),
                "skipped_steps": optimizer.skipped, "peak_memory_mb": peak_memory_mb(),
                "samples_without_caption": loader.stats.no_caption,
                "corrupt_samples": loader.stats.corrupt_samples, "unreadable_shards": loader.stats.unreadable_shards,
            })
            if encoders[0].cache is not None:
                values.update(encoders[0].cache.stats())
            runlog.write(step, values)
            log.info("step %d/%d  images %d  loss %.4f  %.1f img/s  data wait %.0f%%  skipped %d", step, cfg.steps,
                     images, values["loss"], values["images_per_s"], 100 * values["data_wait_fraction"],
                     optimizer.skipped)
            last_t, last_images, last_wait = now, images, loader.wait_s
        if cfg.sample.every_steps and step % cfg.sample.every_steps == 0:
            grid = sample_grid(step)
        if step % cfg.checkpoint.every_steps == 0 or step == cfg.steps:
            path = save_checkpoint(step)
            log.info("checkpoint %s", path)

    if grid is None or not str(grid).endswith(f"step_{step:08d}.png"):
        grid = sample_grid(step)
    summary = {"steps": step, "images": images, "skipped_steps": optimizer.skipped, "world": world,
               "checkpoint": str(checkpoints.latest()), "sample_grid": str(grid) if grid else None,
               "metrics": str(run_dir / "metrics.jsonl"), "tensorboard": str(run_dir / "tensorboard"),
               "loader": loader.stats.as_dict(), "dit_params": n_params}
    if rank == 0:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    # Per-rank facts for audits: data-parallel ranks must end with identical weights.
    checksum = hashlib.sha256()
    for p in engine.module.parameters():
        checksum.update(p.detach().float().cpu().numpy().tobytes())
    (run_dir / "ranks").mkdir(exist_ok=True)
    (run_dir / "ranks" / f"rank{rank}.json").write_text(json.dumps(
        {"rank": rank, "param_sha256": checksum.hexdigest(), "data_wait_s": loader.wait_s}, indent=1))
    runlog.close()
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (see jobs/configs/train/)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=3e-4")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank{os.environ.get('RANK', '0')} %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    summary = train(load_config(args.config, args.overrides))
    if dist.get_rank() == 0:
        print(json.dumps(summary, indent=1))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    from common import compat

    compat.install()
    sys.exit(main())
