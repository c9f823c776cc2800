"""Last stage: rows (in input order) -> dedup decision -> committed shards with rejects.

Rows stream in shard by shard; each shard is written as it arrives (the tar never sits in
memory) and committed when its last input row has been written as a sample or a reject, which
ShardWriter checks. Counts per stage and reason feed the run summary.
"""

from __future__ import annotations

import collections
import json
from typing import Any, Callable

from datapipe.contract import ShardEntry, ShardWriter, Storage, commit_shards

from .dedup import DedupIndex

SIDECAR_FIELDS = ("url", "caption", "width", "height", "original_width", "original_height", "source_sha256",
                  "phash", "clip_score", "aesthetic", "nsfw", "watermark", "clip_embedding")


class ShardAssembler:
    def __init__(self, storage: Storage, dedup: DedupIndex, inputs: dict[str, int], lineage: dict,
                 on_commit: Callable[[ShardEntry], None] | None = None):
        self.storage = storage
        self.dedup = dedup
        self.inputs = inputs  # shard id -> input rows it must account for
        self.lineage = lineage
        self.on_commit = on_commit
        self.counts: collections.Counter = collections.Counter()  # "sample" or "stage/reason"
        self._writer: ShardWriter | None = None
        self._seen = 0

    def add(self, row: dict[str, Any]) -> None:
        if self._writer is None or self._writer.shard_id != row["shard"]:
            self._finish()
            self._writer = ShardWriter(self.storage, row["shard"], inputs=self.inputs[row["shard"]]).__enter__()
            self._seen = 0
        self._seen += 1
        if row["reject_stage"] is None:
            duplicate = self.dedup.check(row)
            if duplicate:
                row.update(reject_stage="dedup", reject_reason=duplicate[0], reject_detail=duplicate[1])
        if row["reject_stage"] is not None:
            self._writer.reject(row["key"], row["url"], row["reject_stage"], row["reject_reason"], row["reject_detail"])
            self.counts[f"{row['reject_stage']}/{row['reject_reason']}"] += 1
        else:
            extra = json.loads(row["extra"]) if row["extra"] else {}
            sidecar = {**extra, **{f: row[f] for f in SIDECAR_FIELDS}}
            self._writer.add(row["key"], row["image"], row["ext"], sidecar)
            self.dedup.add(row)
            self.counts["sample"] += 1
        if self._seen == self.inputs[row["shard"]]:
            self._finish()

    def _finish(self) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        writer.__exit__(None, None, None)  # raises if rows are missing: never commit a short shard
        commit_shards(self.storage, [writer.entry], self.lineage)
        if self.on_commit:
            self.on_commit(writer.entry)

    def abort(self) -> None:
        if self._writer is not None:
            try:
                self._writer.__exit__(RuntimeError, RuntimeError("aborted"), None)
            finally:
                self._writer = None

    def close(self) -> None:
        if self._writer is not None:
            raise RuntimeError(f"shard {self._writer.shard_id} ended after {self._seen} of "
                               f"{self.inputs[self._writer.shard_id]} rows")
