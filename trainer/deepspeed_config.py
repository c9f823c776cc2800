"""The DeepSpeed config, generated from TrainConfig so batch settings cannot drift apart."""

from __future__ import annotations

from .config import TrainConfig


def deepspeed_config(cfg: TrainConfig, world: int) -> dict:
    micro, accum = cfg.batch_layout(world)
    ds = {
        "train_batch_size": cfg.global_batch,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        # clipping happens in the spike guard's optimizer, after it has seen the raw gradients
        "gradient_clipping": 0.0,
        "zero_optimization": {"stage": cfg.deepspeed.zero_stage},
        "bf16": {"enabled": cfg.deepspeed.bf16},
        "zero_allow_untested_optimizer": True,  # GuardedAdamW is AdamW plus the guard
        "steps_per_print": 10**9,  # we log ourselves
        "wall_clock_breakdown": False,
    }
    if cfg.deepspeed.zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"deepspeed.zero_stage must be 0-3, got {cfg.deepspeed.zero_stage}")
    for key, value in cfg.deepspeed.extra.items():
        if isinstance(value, dict) and isinstance(ds.get(key), dict):
            ds[key] = {**ds[key], **value}
        else:
            ds[key] = value
    return ds
