"""Exponential moving average of the DiT weights, with an edm2-style half-life counted in images."""

from __future__ import annotations

import copy
from contextlib import nullcontext

import torch

from .config import EMAConfig


class EMA:
    def __init__(self, model: torch.nn.Module, cfg: EMAConfig):
        self.cfg = cfg
        # an fp32 copy, made before DeepSpeed wraps (and under ZeRO-3 partitions) the model
        self.model = copy.deepcopy(model).float().eval().requires_grad_(False)

    def beta(self, images_seen: int, batch: int) -> float:
        halflife = self.cfg.halflife_images
        if self.cfg.rampup_ratio:
            halflife = min(halflife, images_seen * self.cfg.rampup_ratio)
        return 0.5 ** (batch / max(halflife, 1e-8))

    @torch.no_grad()
    def update(self, model: torch.nn.Module, images_seen: int, batch: int, zero3: bool = False) -> float:
        beta = self.beta(images_seen, batch)
        params = list(model.parameters())
        if zero3:  # partitioned parameters: gather each full tensor for the update (collective)
            import deepspeed

            gather = deepspeed.zero.GatheredParameters(params)
        else:
            gather = nullcontext()
        with gather:
            for e, p in zip(self.model.parameters(), params):
                e.lerp_(p.detach().float(), 1 - beta)
        return beta
