"""The row every curation stage passes on: one per input row, samples and rejects alike.

A rejected row keeps flowing (without its pixels) so the writer can account for it; every stage
skips rows that already carry a reject. The schema is fixed, so blocks from different stages
and batches always line up, whatever columns happen to be null.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

ROW_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("extra", pa.string()),  # JSON of the input columns carried into the sidecar
        ("image", pa.binary()),  # downloaded bytes; after decode: the bytes to store
        ("ext", pa.string()),
        ("content_type", pa.string()),  # of the response, sanitised (for reject details; not stored)
        ("source_sha256", pa.string()),  # of the downloaded bytes (exact-duplicate key)
        ("original_width", pa.int32()),
        ("original_height", pa.int32()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("phash", pa.string()),
        ("clip_pixels", pa.binary()),  # the decoded image, resized for CLIP (uint8 RGB), so CLIP never decodes
        ("nsfw_pixels", pa.binary()),  # the decoded image as open_nsfw's 224x224 view (uint8 RGB), so it never decodes
        ("clip_embedding", pa.binary()),  # float16, L2-normalised
        ("clip_score", pa.float32()),
        ("aesthetic", pa.float32()),
        ("nsfw", pa.float32()),
        ("watermark", pa.float32()),
        ("reject_stage", pa.string()),
        ("reject_reason", pa.string()),
        ("reject_detail", pa.string()),
    ]
)


def to_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)


def reject(row: dict[str, Any], stage: str, reason: str, detail: str | None = None) -> dict[str, Any]:
    """Mark `row` rejected and drop its pixels (nothing downstream needs them)."""
    row.update(reject_stage=stage, reject_reason=reason, reject_detail=detail, image=None, clip_pixels=None,
               nsfw_pixels=None)
    return row


def live(row: dict[str, Any]) -> bool:
    return row.get("reject_stage") is None
