"""CLIP stage: one image embedding per sample, reused by every CLIP-based filter.

An actor (one per GPU in production, a fraction of a CPU here) holds the open_clip model and the
score heads. Per batch it embeds the CLIP-sized pixels the decode stage prepared (no decode here),
embeds the source captions, and records the CLIP score (100 x cosine, as in LAION), the head scores
(always, even without a threshold) and the embedding itself (float16, L2-normalised), which the
dedup stage compares and the sidecar keeps for later use.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..config import ClipConfig
from ..rows import live, reject, to_table
from common.messages import safe_message

HEADS = ("aesthetic", "nsfw", "watermark")


def register_model_config(cfg: ClipConfig) -> None:
    """Make a custom architecture (cfg.model_config, a JSON file) known to open_clip as cfg.model."""
    if not cfg.model_config:
        return
    import open_clip

    path = Path(cfg.model_config)
    if not path.is_file():
        raise FileNotFoundError(f"clip.model_config {path} not found")
    if path.stem != cfg.model:
        raise ValueError(f"clip.model must name the custom architecture by its file name: {path.stem!r}, not {cfg.model!r}")
    if open_clip.get_model_config(cfg.model) is None:
        open_clip.add_model_config(str(path))


def clip_image_size(cfg: ClipConfig) -> int:
    import open_clip

    register_model_config(cfg)
    model_cfg = open_clip.get_model_config(cfg.model)
    if model_cfg is None:
        raise ValueError(f"clip.model {cfg.model!r} is not an open_clip architecture; known: {open_clip.list_models()[:8]} ...")
    size = model_cfg["vision_cfg"]["image_size"]
    return size if isinstance(size, int) else size[0]


class ClipStage:
    """One CLIP model and its heads: a Ray actor (`clip.concurrency` of them, `clip.num_gpus` each)
    that shard tasks send their decoded blocks to (`score`)."""

    def __init__(self, cfg: ClipConfig):
        import open_clip
        import torch

        from .heads import load_head

        self.cfg = cfg
        register_model_config(cfg)
        if cfg.weights is None and not cfg.allow_random_init:
            raise ValueError(
                "clip.enabled needs clip.weights (a local open_clip checkpoint file); nothing is downloaded. "
                "Random weights are for tests only (clip.allow_random_init: true)."
            )
        if cfg.weights is not None and not Path(cfg.weights).is_file():
            raise FileNotFoundError(f"clip.weights {cfg.weights} not found")
        torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
        self.torch = torch
        if cfg.weights is None:
            torch.manual_seed(0)  # random init (tests): the same model in every actor and run
        self.model = open_clip.create_model(cfg.model, pretrained=cfg.weights, precision=cfg.precision,
                                            device=cfg.device).eval()
        self.tokenizer = open_clip.get_tokenizer(cfg.model)
        self.size = clip_image_size(cfg)
        pre = self.model.visual.preprocess_cfg
        self.mean = torch.tensor(pre["mean"]).view(1, 3, 1, 1)
        self.std = torch.tensor(pre["std"]).view(1, 3, 1, 1)
        self.heads = {name: load_head(getattr(cfg, name).weights) for name in HEADS if getattr(cfg, name).weights}
        dim = self.model.text_projection.shape[-1] if hasattr(self.model, "text_projection") else None
        for name, head in self.heads.items():
            if dim is not None and head.in_features != dim:
                raise ValueError(f"clip.{name}: head expects {head.in_features}-d embeddings, {cfg.model} gives {dim}")

    def score(self, batch: pa.Table) -> pa.Table:
        """The actor method shard tasks call (Ray actors do not expose __call__)."""
        return self(batch)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        todo = [r for r in rows if live(r) and r["clip_pixels"] is not None]
        for start in range(0, len(todo), self.cfg.batch_size):
            self._score_isolated(todo[start : start + self.cfg.batch_size])
        for r in rows:
            r["clip_pixels"] = None  # served its purpose; do not ship pixels twice
        return to_table(rows)

    def _score_isolated(self, rows: list[dict[str, Any]]) -> None:
        """Score a batch; if the batch fails, score its rows one by one so only the bad ones are
        rejected (stage filter, reason internal_error) and the rest keep their scores."""
        try:
            self._score(rows)
            return
        except Exception:  # noqa: BLE001 - find the row(s) that broke the batch
            pass
        for r in rows:
            try:
                self._score([r])
            except Exception as e:  # noqa: BLE001 - fault isolation per row
                reject(r, "filter", "internal_error", f"CLIP stage: {safe_message(e)}")

    def _score(self, rows: list[dict[str, Any]]) -> None:
        torch, cfg = self.torch, self.cfg
        pixels = np.stack([np.frombuffer(r["clip_pixels"], np.uint8).reshape(self.size, self.size, 3) for r in rows])
        images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255)
        images = ((images - self.mean) / self.std).to(cfg.device)
        dtype = next(self.model.parameters()).dtype
        with torch.inference_mode():
            emb = torch.nn.functional.normalize(self.model.encode_image(images.to(dtype)).float(), dim=-1)
            captioned = [i for i, r in enumerate(rows) if r["caption"]]
            scores = {}
            if captioned:
                tokens = self.tokenizer([rows[i]["caption"] for i in captioned]).to(cfg.device)
                text = torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1)
                sims = (emb[captioned] * text).sum(-1) * 100.0
                scores = dict(zip(captioned, sims.tolist()))
            heads = {name: head(emb.cpu()).tolist() for name, head in self.heads.items()}
        emb16 = emb.cpu().numpy().astype(np.float16)
        for i, r in enumerate(rows):
            r["clip_embedding"] = emb16[i].tobytes()
            r["clip_score"] = scores.get(i)
            for name, values in heads.items():
                r[name] = values[i]
            self._threshold(r)

    def _threshold(self, r: dict[str, Any]) -> None:
        cfg = self.cfg
        if cfg.min_score is not None and r["clip_score"] is not None and r["clip_score"] < cfg.min_score:
            reject(r, "filter", "low_clip_score", f"clip score {r['clip_score']:.2f} < {cfg.min_score}")
            return
        for name in HEADS:
            head = getattr(cfg, name)
            value = r.get(name)
            if value is None:
                continue
            if head.min is not None and value < head.min:
                reject(r, "filter", f"low_{name}", f"{name} {value:.3f} < {head.min}")
                return
            if head.max is not None and value > head.max:
                reject(r, "filter", f"high_{name}", f"{name} {value:.3f} > {head.max}")
                return
