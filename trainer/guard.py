"""The spike guard: an AdamW that refuses to step on abnormal gradients (Playground v3, sec. 4).

Playground v3 discards an iteration when too many gradient values are large: count the values
whose magnitude exceeds `value_threshold`, skip when the count exceeds `max_count`. We add two
more reasons to skip: a non-finite gradient, and a global gradient norm above `norm_factor` x the
running median of recent accepted norms.

Why an optimizer subclass: DeepSpeed calls the optimizer's step() after it has reduced (and, under
ZeRO, partitioned) the gradients into the optimizer's own fp32 parameters, on every ZeRO stage and
in bf16 as well as fp32. Inside step() we therefore see exactly the gradients that would be
applied. Each rank holds a partition (ZeRO >= 1) or a full copy (ZeRO 0): the statistics are summed
over ranks with one all-reduce, and de-duplicated when every rank holds everything, so all ranks
take the same decision. Clipping is done here too (DeepSpeed's own clipping is turned off), after
the guard has seen the raw gradients.
"""

from __future__ import annotations

import math
import statistics
from collections import deque

import torch
import torch.distributed as dist

from .config import SpikeGuardConfig  # the guard's settings live with the trainer's, which load without torch


class SpikeGuardAbort(RuntimeError):
    pass


class GuardedAdamW(torch.optim.AdamW):
    def __init__(self, params, guard: SpikeGuardConfig, max_grad_norm: float = 0.0, full_numel: int = 0, **kw):
        super().__init__(params, **kw)
        self.guard = guard
        self.max_grad_norm = max_grad_norm
        self.full_numel = full_numel  # the model's parameter count, to tell partitions from copies
        self.norms: deque[float] = deque(maxlen=guard.norm_window)
        self.skipped = 0
        self.consecutive = 0
        self.last: dict = {}

    def _stats(self) -> tuple[float, float, float, float]:
        """(values above threshold, sum of squares, non-finite values, numel) over all ranks.

        Cheap when gradients are healthy: two fused passes (L2 and max-abs norms per tensor); values
        are counted only in tensors whose max-abs exceeds the threshold, and non-finite values only
        when a norm is non-finite.
        """
        grads = [p.grad.detach() for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return 0.0, 0.0, 0.0, 0.0
        threshold = self.guard.value_threshold
        norms = torch.stack(torch._foreach_norm(grads)).float()
        maxabs = torch.stack(torch._foreach_norm(grads, float("inf"))).float()
        nonfinite = torch.zeros((), device=norms.device)
        if not torch.isfinite(norms).all():
            nonfinite = torch.stack([(~torch.isfinite(g)).sum() for g in grads]).sum().float()
            grads = [torch.nan_to_num(g, 0.0, 0.0, 0.0) for g in grads]
            norms = torch.stack(torch._foreach_norm(grads)).float()
            maxabs = torch.stack(torch._foreach_norm(grads, float("inf"))).float()
        over = [g for g, m in zip(grads, maxabs.tolist()) if m > threshold]
        large = torch.stack([(g.abs() > threshold).sum() for g in over]).sum().float() if over else torch.zeros(())
        numel = float(sum(g.numel() for g in grads))
        t = torch.tensor([float(large), float(norms.square().sum()), float(nonfinite), numel], dtype=torch.float64)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            world = dist.get_world_size()
            dist.all_reduce(t)
            if self.full_numel and t[3] >= world * self.full_numel:  # every rank holds all gradients
                t /= world
        return tuple(float(v) for v in t)

    def decide(self) -> tuple[bool, str, float, float]:
        large, sumsq, nonfinite, _ = self._stats()
        norm = math.sqrt(sumsq)
        g = self.guard
        if nonfinite:
            return True, f"{int(nonfinite)} non-finite gradient values", norm, large
        if not g.enabled:
            return False, "", norm, large
        if large > g.max_count:
            return True, f"{int(large)} gradient values above {g.value_threshold} (limit {g.max_count})", norm, large
        if g.norm_factor and len(self.norms) >= g.min_history:
            median = statistics.median(self.norms)
            if norm > g.norm_factor * median:
                return True, f"gradient norm {norm:.3g} > {g.norm_factor} x running median {median:.3g}", norm, large
        return False, "", norm, large

    @torch.no_grad()
    def step(self, closure=None):
        skip, reason, norm, large = self.decide()
        self.last = {"skipped": skip, "reason": reason, "grad_norm": norm, "large_values": large}
        if skip:
            self.skipped += 1
            self.consecutive += 1
            if self.consecutive >= self.guard.max_consecutive:
                raise SpikeGuardAbort(
                    f"spike guard: {self.consecutive} consecutive steps skipped (last: {reason}); the run is "
                    "diverging or the thresholds are too tight (trainer.spike_guard.*)"
                )
            return None
        self.consecutive = 0
        self.norms.append(norm)
        if self.max_grad_norm and norm > self.max_grad_norm:
            scale = self.max_grad_norm / (norm + 1e-6)
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.grad.mul_(scale)
        return super().step(closure)

    def guard_state(self) -> dict:
        return {"norms": list(self.norms), "skipped": self.skipped, "consecutive": self.consecutive}

    def load_guard_state(self, state: dict) -> None:
        self.norms = deque(state["norms"], maxlen=self.guard.norm_window)
        self.skipped, self.consecutive = state["skipped"], state["consecutive"]
