"""`deepfusion scenes dataset`: a corpus's good rows written straight into a dataset root.

No download and no filters: the base renders become committed shards (with `scene_id` carried in
the sidecar), and two caption versions are written beside them: `reference` (the six ground-truth
captions) and `alt` (the alt text in every level, as the `alt` caption backend does). This is how
trainer tests and quick experiments get a clean captioned dataset in seconds; the curation path
(`deepfusion curate`) produces the same layout from the URL list.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.parquet as pq

from datapipe.contract import (
    ALT_VERSION,
    CAPTION_STATUS_OK,
    LEVEL_COLUMNS,
    REFERENCE_VERSION,
    CaptionVersion,
    CaptionWriter,
    ShardWriter,
    Storage,
    caption_table,
    commit_shards,
    shard_id,
)


def ingest_corpus(corpus: str | Path, root: str, shard_size: int = 256) -> dict:
    """Write every `ok` row of the corpus as a sample; returns counts. Idempotent (same bytes)."""
    corpus = Path(corpus)
    truth = pq.read_table(corpus / "ground_truth.parquet").to_pylist()
    rows = [t for t in truth if t["kind"] == "ok"]
    storage = Storage(root)
    now = datetime.now(timezone.utc)
    versions = {
        REFERENCE_VERSION: CaptionWriter(storage, CaptionVersion(REFERENCE_VERSION, backend="reference",
                                                                  model="scene-graph")),
        ALT_VERSION: CaptionWriter(storage, CaptionVersion(ALT_VERSION, backend="alt", model="source-alt-text")),
    }
    for number, start in enumerate(range(0, len(rows), shard_size)):
        sid = shard_id(number)
        chunk = rows[start : start + shard_size]
        captions: dict[str, list[dict]] = {v: [] for v in versions}
        with ShardWriter(storage, sid, inputs=len(chunk)) as writer:
            for t in chunk:
                key = f"{sid}{t['row']:09d}"
                image = (corpus / "images" / f"{t['scene_id']}.png").read_bytes()
                writer.add(key, image, "png", {
                    "url": t["url"], "caption": t["alt"], "width": t["width"], "height": t["height"],
                    "original_width": t["width"], "original_height": t["height"],
                    "sha256": hashlib.sha256(image).hexdigest(), "scene_id": t["scene_id"],
                })
                base = {"key": key, "status": CAPTION_STATUS_OK, "finish_reason": "stop", "attempts": 1, "created_at": now}
                captions[REFERENCE_VERSION].append({**base, **{c: t[c] for c in LEVEL_COLUMNS}, "model": "scene-graph"})
                captions[ALT_VERSION].append({**base, **{c: t["alt"] for c in LEVEL_COLUMNS}, "model": "source-alt-text"})
        commit_shards(storage, [writer.entry], lineage={"job": "scenes dataset", "corpus": str(corpus)})
        for version, writer_ in versions.items():
            writer_.commit_shard(sid, caption_table(captions[version]))
    return {"samples": len(rows), "shards": (len(rows) + shard_size - 1) // shard_size, "skipped": len(truth) - len(rows)}
