"""Checkpoints: one folder per step under <run_dir>/checkpoints, the newest named by `latest`.

    step_00000500/
        (DeepSpeed's files)        model, optimizer and LR-scheduler state, per ZeRO partition
        rng_rank<r>.pt             each rank's python / numpy / torch RNG states
        ema/                       EMA weights as safetensors + config.json: the inference export
        inference.json             text encoder, codec, EDM and bucket settings for `deepfusion sample`
        trainer_state.json         step, images, loader position, spike-guard state, config identity
    latest                         the newest complete checkpoint (written last, atomically)

A checkpoint is complete once `latest` names it: a run killed while saving resumes from the
previous one, and the half-written folder is removed. The last `keep_last` are kept.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file

log = logging.getLogger(__name__)


class CheckpointMismatch(ValueError):
    pass


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpoints:
    def __init__(self, run_dir: str | Path, keep_last: int, rank: int):
        self.dir = Path(run_dir) / "checkpoints"
        self.keep_last, self.rank = keep_last, rank

    def latest(self) -> Path | None:
        pointer = self.dir / "latest"
        if not pointer.exists():
            return None
        path = self.dir / pointer.read_text().strip()
        return path if (path / "trainer_state.json").exists() else None

    def _cleanup_incomplete(self) -> None:
        if self.rank != 0 or not self.dir.exists():
            return
        latest = self.latest()
        for path in self.dir.glob("step_*"):
            if path.is_dir() and (latest is None or path.name > latest.name):
                log.warning("removing incomplete checkpoint %s (the run was stopped while saving it)", path)
                shutil.rmtree(path, ignore_errors=True)

    def save(self, engine, step: int, state: dict, ema, inference: dict) -> Path:
        tag = f"step_{step:08d}"
        path = self.dir / tag
        if self.rank == 0:
            shutil.rmtree(path, ignore_errors=True)  # a leftover of a save that was killed
            path.mkdir(parents=True)
        _barrier()
        torch.save(rng_state(), path / f"rng_rank{self.rank}.pt")
        engine.save_checkpoint(str(self.dir), tag=tag, save_latest=False)
        if self.rank == 0:
            ema.model.save_pretrained(path / "ema", safe_serialization=True)
            _write_atomic(path / "inference.json", json.dumps(inference, indent=1))
            _write_atomic(path / "trainer_state.json", json.dumps(state, indent=1))
        _barrier()
        if self.rank == 0:
            _write_atomic(self.dir / "latest", tag)
            done = sorted(p for p in self.dir.glob("step_*") if p.is_dir() and p.name <= tag)
            for old in done[: -self.keep_last] if self.keep_last > 0 else []:
                shutil.rmtree(old, ignore_errors=True)
        _barrier()
        return path

    def load(self, engine, ema, identity: dict, identity_hash: str) -> dict | None:
        """Resume from the latest complete checkpoint; None when there is none."""
        self._cleanup_incomplete()
        _barrier()
        path = self.latest()
        if path is None:
            return None
        state = json.loads((path / "trainer_state.json").read_text())
        if state["config_hash"] != identity_hash:
            diff = _diff(state.get("config_identity", {}), identity)
            raise CheckpointMismatch(
                f"{path} was written by another training configuration (config hash {state['config_hash']} != "
                f"{identity_hash}); differences (checkpoint -> now): {diff or 'unknown'}. Use a new run_dir, or "
                f"restore those settings to resume."
            )
        load_path, _ = engine.load_checkpoint(str(self.dir), tag=path.name, load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        if load_path is None:
            raise CheckpointMismatch(f"DeepSpeed could not load {path}")
        ema.model.load_state_dict(load_file(str(path / "ema" / "diffusion_pytorch_model.safetensors")))
        rng = path / f"rng_rank{self.rank}.pt"
        if rng.exists():
            set_rng_state(torch.load(rng, weights_only=False))
        else:
            log.warning("%s has no RNG state for rank %d (different world size?)", path, self.rank)
        return state


def _diff(old: dict, new: dict, prefix: str = "") -> dict:
    out = {}
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.update(_diff(a, b, f"{prefix}{key}."))
        elif a != b:
            out[f"{prefix}{key}"] = (a, b)
    return out
