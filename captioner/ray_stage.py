"""The vLLM engine as a Ray Data stage: read shard samples -> caption them in an actor pool.

Each actor owns one `vllm.LLM` (one per GPU in production; a fraction of a CPU here, so Ray's
read tasks are not starved) and captions whole batches of images per engine call. Rows come back
tagged with their image shard; the driver commits a shard's caption file when all of its keys
are back (captioner/run.py).
"""

from __future__ import annotations

import pyarrow as pa

from datapipe.contract import Dataset, caption_table

from .backends.vllm_engine import VllmGenerate, build_llm
from .config import CaptionConfig
from .prompts import load_prompt_set
from .samples import caption_samples


class ReadShard:
    """flat_map over {"shard": id}: the shard's samples (only `keys[id]` when a selection is given)."""

    def __init__(self, root: str, keys: dict[str, list[str] | None]):
        self.root, self.keys = root, keys

    def __call__(self, item: dict) -> list[dict]:
        sid = item["shard"]
        wanted = self.keys.get(sid)
        wanted = set(wanted) if wanted is not None else None
        return [{"shard": sid, "key": s.key, "image": s.image} for s in Dataset(self.root).samples(sid)
                if wanted is None or s.key in wanted]


class CaptionActor:
    """map_batches callable class: one vLLM engine, many batches."""

    def __init__(self, cfg: CaptionConfig, model_name: str):
        self.cfg, self.model_name = cfg, model_name
        self.prompts = load_prompt_set(cfg.prompt_set)
        self.generate = VllmGenerate(build_llm(cfg.model, cfg.engine, cfg.sampling.seed), self.prompts,
                                     cfg.strategy, cfg.sampling)

    def __call__(self, batch: pa.Table) -> pa.Table:
        keys = batch.column("key").to_pylist()
        rows = caption_samples(self.generate, keys, batch.column("image").to_pylist(), self.cfg, self.prompts,
                               self.model_name)
        table = caption_table(rows)
        return table.append_column("shard", batch.column("shard"))
