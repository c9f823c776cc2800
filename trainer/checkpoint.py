"""Checkpoints: one folder per step under <run_dir>/checkpoints, the newest named by `latest`.

    step_00000500/
        (DeepSpeed's files)        model, optimizer and LR-scheduler state, per ZeRO partition
        rng_rank<r>.pt             each rank's python / numpy / torch RNG states
        ema/                       EMA weights as safetensors + config.json: the inference export
        inference.json             text encoder, codec, EDM and bucket settings for `deepfusion sample`
        trainer_state.json         step, images, loader position, spike-guard state, config identity
        optimizer_full.pt          ZeRO 1/2: fp32 weights and Adam moments gathered per parameter
                                   (DeepSpeed's safe_get_full_* API), for a resume on another rank count
    latest                         the newest complete checkpoint (written last, atomically)

Elastic resume: a checkpoint written by N ranks resumes on M != N. ZeRO 0 keeps the whole
optimizer state in DeepSpeed's model file, which DeepSpeed loads on any world size. ZeRO 1/2
partition it by rank (DeepSpeed refuses to load partitions on another world size), so each
checkpoint also holds the full per-parameter state, and a resume on M ranks loads the module,
then re-partitions master weights and moments through safe_set_full_* and restores the
optimizer's step and the LR schedule. The loader position and the training noise are global (keyed
by position in the global batch, not by rank), so the sample order and the draws continue exactly.
ZeRO 3 on another world size is refused (DeepSpeed's universal checkpoint conversion handles it).

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


FULL_STATE = "optimizer_full.pt"
ADAM_MOMENTS = ("exp_avg", "exp_avg_sq")


def _zero_stage(engine) -> int:
    return int(engine.zero_optimization_stage()) if engine.zero_optimization() else 0


def gather_full_state(engine) -> dict | None:
    """ZeRO 1/2: {param name: {fp32, exp_avg, exp_avg_sq}} and the optimizer step, gathered from every
    rank's partition (a collective: every rank calls it); None on other stages."""
    if _zero_stage(engine) not in (1, 2):
        return None
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    params = {}
    for name, p in engine.module.named_parameters():
        if not p.requires_grad:
            continue
        params[name] = {"fp32": safe_get_full_fp32_param(p).detach().cpu().clone(),
                        **{k: safe_get_full_optimizer_state(p, k).detach().cpu().clone() for k in ADAM_MOMENTS}}
    base = engine.optimizer.optimizer
    steps = {float(st["step"]) for st in base.state.values() if "step" in st}
    return {"params": params, "step": max(steps) if steps else 0.0}


def load_resharded(engine, scheduler, path: Path) -> None:
    """Resume a ZeRO 1/2 checkpoint on a world size other than the one that wrote it."""
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    full_path = path / FULL_STATE
    if not full_path.exists():
        raise CheckpointMismatch(f"{path} holds ZeRO partitions for another number of ranks and no {FULL_STATE} "
                                 "(written with checkpoint.elastic=false): resume it on the rank count that wrote it")
    load_path, _ = engine.load_checkpoint(str(path.parent), tag=path.name, load_module_only=True)
    if load_path is None:
        raise CheckpointMismatch(f"DeepSpeed could not load the module weights of {path}")
    full = torch.load(full_path, map_location="cpu", weights_only=False)
    # A fresh engine has no Adam state yet (created at the first step): create it for this rank's
    # flat partitions and let DeepSpeed link each parameter's fragment to it, then fill it.
    zero, base = engine.optimizer, engine.optimizer.optimizer
    for flat in zero.single_partition_of_fp32_groups:
        st = base.state[flat]
        if "exp_avg" not in st:
            st.update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(flat), exp_avg_sq=torch.zeros_like(flat))
    zero._hp_optimizer_states_linked = False
    zero._lazy_init_hp_params_optimizer_state()
    for name, p in engine.module.named_parameters():
        if not p.requires_grad:
            continue
        saved = full["params"][name]
        safe_set_full_fp32_param(p, saved["fp32"].to(p.device))
        with torch.no_grad():
            p.copy_(saved["fp32"].to(p.device, p.dtype))
        for k in ADAM_MOMENTS:
            safe_set_full_optimizer_state(p, saved[k].to(p.device), k)
    for st in base.state.values():
        if "step" in st:
            st["step"] = torch.tensor(full["step"]) if torch.is_tensor(st["step"]) else full["step"]
    model_file = next(path.glob("mp_rank_*_model_states.pt"))
    client = torch.load(model_file, map_location="cpu", weights_only=False)
    if scheduler is not None and client.get("lr_scheduler") is not None:
        scheduler.load_state_dict(client["lr_scheduler"])
        for group, lr in zip(base.param_groups, scheduler.get_last_lr()):  # the lr the next step uses
            group["lr"] = lr
    engine.global_steps = client.get("global_steps", engine.global_steps)
    engine.global_samples = client.get("global_samples", engine.global_samples)


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
    def __init__(self, run_dir: str | Path, keep_last: int, rank: int, elastic: bool = True):
        self.dir = Path(run_dir) / "checkpoints"
        self.keep_last, self.rank, self.elastic = keep_last, rank, elastic

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
        full = gather_full_state(engine) if self.elastic else None
        if full is not None and self.rank == 0:
            torch.save(full, path / FULL_STATE)
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

    def load(self, engine, ema, identity: dict, identity_hash: str, world: int = 1, scheduler=None) -> dict | None:
        """Resume from the latest complete checkpoint (on `world` ranks); None when there is none."""
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
        written_by = int(state.get("world", world))
        stage = _zero_stage(engine)
        if written_by != world and stage == 3:
            raise CheckpointMismatch(
                f"{path} was written by {written_by} rank(s) under ZeRO-3; resuming it on {world} is not supported "
                f"here: resume on {written_by} ranks, or convert it with DeepSpeed's ds_to_universal and load that")
        if written_by != world and stage in (1, 2):
            load_resharded(engine, scheduler, path)
            log.info("resumed %s, written by %d rank(s), on %d: ZeRO-%d optimizer state re-partitioned",
                     path.name, written_by, world, stage)
        else:
            load_path, _ = engine.load_checkpoint(str(self.dir), tag=path.name, load_optimizer_states=True,
                                                  load_lr_scheduler_states=True)
            if load_path is None:
                raise CheckpointMismatch(f"DeepSpeed could not load {path}")
        ema.model.load_state_dict(load_file(str(path / "ema" / "diffusion_pytorch_model.safetensors")))
        rng = path / f"rng_rank{self.rank}.pt"
        if rng.exists():
            set_rng_state(torch.load(rng, weights_only=False))
        elif written_by == world:
            log.warning("%s has no RNG state for rank %d", path, self.rank)
        return state


def resolve_checkpoint(source: str | Path) -> Path:
    """A run dir (its latest checkpoint) or a checkpoints/step_* folder -> the checkpoint folder."""
    source = Path(source)
    if (source / "trainer_state.json").exists():
        return source
    latest = Checkpoints(source, 0, 0).latest()
    if latest is None:
        raise FileNotFoundError(f"{source} is neither a checkpoint folder nor a run dir with a complete checkpoint")
    return latest


def warm_start(model: torch.nn.Module, ema_model: torch.nn.Module, source: str | Path) -> dict:
    """Load another run's model and EMA weights (not its optimizer, schedule or data position) into a
    fresh model before DeepSpeed wraps it; returns the lineage to record. Any tensor whose name or
    shape does not match is refused, by name."""
    path = resolve_checkpoint(source)
    ema_sd = load_file(str(path / "ema" / "diffusion_pytorch_model.safetensors"))
    model_sd, weights_from = ema_sd, "ema"
    module_file = next(iter(sorted(path.glob("mp_rank_*_model_states.pt"))), None)
    if module_file is not None:
        module = torch.load(module_file, map_location="cpu", weights_only=False).get("module") or {}
        if module and all(module[k].shape == v.shape for k, v in ema_sd.items() if k in module):
            model_sd, weights_from = module, "model"  # ZeRO-3 modules hold placeholders: the EMA is used then
    want = model.state_dict()
    missing = sorted(set(want) - set(model_sd))
    unexpected = sorted(set(model_sd) - set(want))
    shapes = sorted(f"{k}: {tuple(model_sd[k].shape)} in {path.name}, {tuple(v.shape)} here"
                    for k, v in want.items() if k in model_sd and model_sd[k].shape != v.shape)
    if missing or unexpected or shapes:
        raise CheckpointMismatch(
            f"init_from={source}: the model does not fit ({len(shapes)} shape mismatches, {len(missing)} missing, "
            f"{len(unexpected)} unexpected): " + "; ".join(shapes[:8] + [f"missing {k}" for k in missing[:8]]
                                                           + [f"unexpected {k}" for k in unexpected[:8]]))
    with torch.no_grad():
        model.load_state_dict({k: v.to(want[k].dtype) for k, v in model_sd.items()})
        ema_model.load_state_dict({k: v.float() for k, v in ema_sd.items()})
    state = json.loads((path / "trainer_state.json").read_text())
    return {"checkpoint": str(path.resolve()), "run_dir": str(path.resolve().parent.parent), "step": state.get("step"),
            "images": state.get("images"), "weights": weights_from}


def _diff(old: dict, new: dict, prefix: str = "") -> dict:
    out = {}
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.update(_diff(a, b, f"{prefix}{key}."))
        elif a != b:
            out[f"{prefix}{key}"] = (a, b)
    return out
