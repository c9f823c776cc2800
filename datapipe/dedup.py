"""Dedup stage: exact (sha256 of the downloaded bytes) and near duplicates (perceptual hash
Hamming distance, CLIP-embedding cosine) against every sample already in the dataset.

The index is rebuilt from the committed sidecars when a job starts and grows as rows are kept, in
shard order. So the first occurrence of an image in input order is the one kept, whether the run
went through in one go or was killed and resumed, and duplicates are caught across shards
and runs. Comparisons are brute force in numpy (XOR + popcount over 64-bit words; a float16 matrix product),
fine for millions of phashes; a CLIP cosine index over tens of millions wants an ANN library.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from datapipe.contract import Dataset

from .config import DedupConfig


class _Rows:
    """An append-only numpy array that doubles its capacity (amortised O(1) appends)."""

    def __init__(self, dtype, width: int | None = None):
        self.dtype, self.width = dtype, width
        self.data = np.zeros((1024,) if width is None else (1024, width), dtype)
        self.n = 0

    def append(self, value) -> None:
        if self.n == len(self.data):
            self.data = np.concatenate([self.data, np.zeros_like(self.data)])
        self.data[self.n] = value
        self.n += 1

    @property
    def view(self) -> np.ndarray:
        return self.data[: self.n]


def _words(hex_hash: str) -> np.ndarray:
    """A hex perceptual hash as uint64 words (imagehash writes 16 hex digits per 64 bits)."""
    return np.array([int(hex_hash[i : i + 16], 16) for i in range(0, len(hex_hash), 16)], np.uint64)


class DedupIndex:
    def __init__(self, cfg: DedupConfig):
        self.cfg = cfg
        self.sha: dict[str, str] = {}  # sha256 -> key of the kept sample
        self.phash: _Rows | None = None  # [n, words] uint64
        self.phash_keys: list[str] = []
        self.clip: _Rows | None = None
        self.clip_keys: list[str] = []

    @classmethod
    def from_dataset(cls, cfg: DedupConfig, dataset: Dataset) -> "DedupIndex":
        index = cls(cfg)
        wanted = ["key", "source_sha256", "phash", "clip_embedding"]
        for shard in dataset.shards:
            table = dataset.sidecar(shard.id, columns=None)
            cols = {c: table.column(c).to_pylist() if c in table.column_names else [None] * table.num_rows
                    for c in wanted}
            for i in range(table.num_rows):
                index.add({c: cols[c][i] for c in wanted})
        return index

    def check(self, row: dict[str, Any]) -> tuple[str, str] | None:
        """(reason, detail) if `row` duplicates a kept sample, else None."""
        cfg = self.cfg
        sha = row.get("source_sha256")
        if cfg.sha256 and sha and sha in self.sha:
            return "duplicate", f"same bytes (sha256) as {self.sha[sha]}"
        if cfg.phash_distance is not None and row.get("phash") and self.phash is not None and self.phash.n:
            distances = np.bitwise_count(self.phash.view ^ _words(row["phash"])).sum(axis=1)
            best = int(distances.argmin())
            if distances[best] <= cfg.phash_distance:
                return "near_duplicate_phash", f"phash distance {int(distances[best])} to {self.phash_keys[best]}"
        if cfg.clip_cosine is not None and row.get("clip_embedding") and self.clip is not None and self.clip.n:
            emb = np.frombuffer(row["clip_embedding"], np.float16).astype(np.float32)
            sims = self.clip.view.astype(np.float32) @ emb
            best = int(sims.argmax())
            if sims[best] >= cfg.clip_cosine:
                return "near_duplicate_clip", f"CLIP cosine {float(sims[best]):.4f} to {self.clip_keys[best]}"
        return None

    def add(self, row: dict[str, Any]) -> None:
        key = row["key"]
        if row.get("source_sha256"):
            self.sha.setdefault(row["source_sha256"], key)
        if row.get("phash"):
            words = _words(row["phash"])
            if self.phash is None:
                self.phash = _Rows(np.uint64, len(words))
            if len(words) != self.phash.width:
                raise ValueError(f"phash of {len(words) * 64} bits among {self.phash.width * 64}-bit ones: "
                                 "decode.phash_size changed within one dataset")
            self.phash.append(words)
            self.phash_keys.append(key)
        if row.get("clip_embedding"):
            emb = np.frombuffer(row["clip_embedding"], np.float16)
            if self.clip is None:
                self.clip = _Rows(np.float16, len(emb))
            self.clip.append(emb)
            self.clip_keys.append(key)
