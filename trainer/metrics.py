"""Run metrics: one JSON line per log interval in <run_dir>/metrics.jsonl, and TensorBoard."""

from __future__ import annotations

import json
import logging
import resource
from pathlib import Path

import torch
import torch.distributed as dist

from model.edm import SIGMA_BIN_NAMES, log_sigma_bin

LEVEL_NAMES = ("1", "2", "3", "4", "5", "6", "alt", "uncond")
log = logging.getLogger(__name__)


class TruncationCount:
    """Captions cut to their level's token budget: counted per level over this process's part of the run (every
    rank's, summed when reported) and warned about once per level, with the length it had."""

    def __init__(self):
        self.counts = torch.zeros(len(LEVEL_NAMES), dtype=torch.float64)
        self.warned: set[str] = set()

    def add(self, levels: list[str], lengths: torch.Tensor, budgets: torch.Tensor) -> None:
        for level, n, budget in zip(levels, lengths.tolist(), budgets.tolist()):
            if n <= budget:
                continue
            self.counts[LEVEL_NAMES.index(level)] += 1
            if level not in self.warned:
                self.warned.add(level)
                log.warning("a level-%s caption of %d tokens was cut to its budget of %d (data.level_tokens.%s); "
                            "every cut is counted in metrics.jsonl as truncated/level_%s, this is the only warning "
                            "for that level", level, n, budget, level, level)

    def reduce(self) -> dict[str, float]:
        t = self.counts.clone()
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(t)
        out = {"truncated_captions": float(t.sum())}
        out.update({f"truncated/level_{n}": float(c) for n, c in zip(LEVEL_NAMES, t) if c > 0})
        return out


class LossBreakdown:
    """Sums of per-sample losses by caption level and by noise level, reduced over ranks."""

    def __init__(self):
        self.sums = torch.zeros(len(LEVEL_NAMES) + len(SIGMA_BIN_NAMES), dtype=torch.float64)
        self.counts = torch.zeros_like(self.sums)

    def add(self, losses: torch.Tensor, sigmas: torch.Tensor, levels: list[str]) -> None:
        losses = losses.detach().double().cpu()
        for loss, level in zip(losses, levels):
            i = LEVEL_NAMES.index(level)
            self.sums[i] += loss
            self.counts[i] += 1
        bins = log_sigma_bin(sigmas.detach().float().cpu()) + len(LEVEL_NAMES)
        self.sums.index_add_(0, bins, losses)
        self.counts.index_add_(0, bins, torch.ones_like(losses))

    def reduce(self) -> dict[str, float]:
        t = torch.cat([self.sums, self.counts])
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(t)
        sums, counts = t.chunk(2)
        names = [f"loss/level_{n}" for n in LEVEL_NAMES] + [f"loss/sigma_{n}" for n in SIGMA_BIN_NAMES]
        out = {"loss": float(sums[: len(LEVEL_NAMES)].sum() / counts[: len(LEVEL_NAMES)].sum().clamp(min=1))}
        out.update({n: float(s / c) for n, s, c in zip(names, sums, counts) if c > 0})
        self.sums.zero_()
        self.counts.zero_()
        return out


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class RunLog:
    def __init__(self, run_dir: str | Path, rank: int, tensorboard: bool):
        self.rank = rank
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tb = None
        if rank == 0 and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def write(self, step: int, values: dict) -> None:
        if self.rank != 0:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self.tb:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb:
            self.tb.close()


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The metrics of a run, the last record per step (a resumed run re-logs the steps it redoes)."""
    by_step: dict[int, dict] = {}
    path = Path(run_dir) / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        rec = json.loads(line)
        by_step[rec["step"]] = rec
    return [by_step[k] for k in sorted(by_step)]
