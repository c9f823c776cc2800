"""Backends 3 and 4: `alt` (the source alt text) and `reference` (scene-graph ground truth).

Neither looks at pixels: they read the shard's sidecar and write the same caption sidecar format
as a VLM run, so a trainer or the caption-QA job treats them like any other version. `alt` puts
the source caption in every level (a baseline for ablations); `reference` takes the six
ground-truth captions of a synthetic scene from the scenes corpus, matched by the `scene_id`
the curation job carried from the URL list into the sidecar.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from datapipe.contract import CAPTION_STATUS_FAILED, CAPTION_STATUS_OK, LEVEL_COLUMNS


def _row(key: str, levels: dict | None, model: str, error: str | None) -> dict:
    return {"key": key, "status": CAPTION_STATUS_OK if levels else CAPTION_STATUS_FAILED, "model": model,
            "prompt_id": None, "finish_reason": "stop" if levels else None, "attempts": 1, "error": error,
            "created_at": datetime.now(timezone.utc), **(levels or {})}


def failed_row(key: str, model: str, error: str) -> dict:
    """A row for an input no backend could caption (e.g. an unreadable image), with the reason."""
    return _row(key, None, model, error)


def alt_rows(sidecar: pa.Table) -> list[dict]:
    keys = sidecar.column("key").to_pylist()
    captions = sidecar.column("caption").to_pylist() if "caption" in sidecar.column_names else [None] * len(keys)
    out = []
    for key, text in zip(keys, captions):
        text = (text or "").strip()
        out.append(_row(key, {c: text for c in LEVEL_COLUMNS} if text else None, "source-alt-text",
                        None if text else "no_source_caption"))
    return out


class ReferenceCaptions:
    """Six ground-truth captions per scene id, from `<corpus>/ground_truth.parquet`."""

    def __init__(self, corpus: str | Path):
        path = Path(corpus) / "ground_truth.parquet"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: `reference` needs a corpus made by `deepfusion scenes make`")
        table = pq.read_table(path, columns=["scene_id", *LEVEL_COLUMNS])
        self.by_scene = {r["scene_id"]: {c: r[c] for c in LEVEL_COLUMNS} for r in table.to_pylist()}

    def rows(self, sidecar: pa.Table) -> list[dict]:
        keys = sidecar.column("key").to_pylist()
        if "scene_id" not in sidecar.column_names:
            return [_row(k, None, "scene-graph", "no_scene_id") for k in keys]
        out = []
        for key, scene in zip(keys, sidecar.column("scene_id").to_pylist()):
            levels = self.by_scene.get(scene)
            out.append(_row(key, levels, "scene-graph", None if levels else f"unknown_scene:{scene}"))
        return out
