"""One shard's dedup verdicts, in input order: index matches (earlier shards) plus the shard's own
earlier rows.

A row is checked against samples kept before it: first exact bytes (sha256), then the nearest
perceptual hash within `phash_distance`, then the most similar CLIP embedding at or above
`clip_cosine`. Ties go to the earlier row. Rows of the same shard are compared with the same
faiss index types the partitions use, so "which pairs are candidates" is one rule everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .index import PartitionIndex, key_of


@dataclass(frozen=True)
class Verdict:
    reason: str  # duplicate | near_duplicate_phash | near_duplicate_clip
    detail: str  # names the kept sample


@dataclass
class ShardHashes:
    """The hashes of a shard's live rows, in input order."""

    orders: np.ndarray  # int64 [n]
    sha: list[bytes | None]
    phash: np.ndarray | None  # uint8 [n, bits/8] (rows without a hash: all zeros, masked by has_phash)
    has_phash: np.ndarray  # bool [n]
    clip: np.ndarray | None  # float32 [n, d]
    has_clip: np.ndarray  # bool [n]


def _within(hashes: ShardHashes, cfg) -> tuple[dict, dict]:
    """Pairs inside the shard: phash {i: [(distance, j)]}, clip {i: [(-cosine, j)]}, j < i."""
    import faiss

    # One thread: this runs inside a shard task beside others on the same cores (with both cores
    # busy, one 1,000-row shard: 7 ms on one OpenMP thread, 17 ms on the default two)
    faiss.omp_set_num_threads(1)
    n = len(hashes.orders)
    phash_pairs: dict[int, list] = {}
    clip_pairs: dict[int, list] = {}
    if cfg.phash_distance is not None and hashes.phash is not None and hashes.has_phash.any():
        local = PartitionIndex(hashes.phash.shape[1] * 8, cfg.phash_segments, cfg.phash_flips)
        idx = np.flatnonzero(hashes.has_phash)
        local.insert({"phash": (idx.astype(np.int64), hashes.phash[idx])})
        for qi, found in zip(idx.tolist(), local.query_phash(hashes.phash[idx], cfg.phash_distance, n)):
            phash_pairs[qi] = [(d, j) for d, j in found if j < qi]
    if cfg.clip_cosine is not None and hashes.clip is not None and hashes.has_clip.any():
        idx = np.flatnonzero(hashes.has_clip)
        flat = faiss.IndexFlatIP(hashes.clip.shape[1])
        emb = np.ascontiguousarray(hashes.clip[idx], np.float32)
        flat.add(emb)
        lims, sims, ids = flat.range_search(emb, float(cfg.clip_cosine) - 1e-6)
        for q, qi in enumerate(idx.tolist()):
            lo, hi = int(lims[q]), int(lims[q + 1])
            clip_pairs[qi] = [(-float(s), int(idx[j])) for s, j in zip(sims[lo:hi], ids[lo:hi]) if idx[j] < qi]
    return phash_pairs, clip_pairs


def decide(hashes: ShardHashes, cfg, index_sha: list[int | None], index_phash: list[list], index_clip: list[list]
           ) -> list[Verdict | None]:
    """Verdicts per row (None = kept). `index_*`: the partitions' merged matches per row."""
    n = len(hashes.orders)
    phash_pairs, clip_pairs = _within(hashes, cfg)
    kept = np.zeros(n, bool)
    first_sha: dict[bytes, int] = {}
    out: list[Verdict | None] = []
    for i in range(n):
        digest = hashes.sha[i]
        verdict = None
        if cfg.sha256 and digest is not None:
            earlier = index_sha[i]
            if earlier is None and digest in first_sha:
                earlier = int(hashes.orders[first_sha[digest]])
            if earlier is not None:
                verdict = Verdict("duplicate", f"same bytes (sha256) as {key_of(earlier)}")
        if verdict is None and cfg.phash_distance is not None and hashes.has_phash[i]:
            found = list(index_phash[i]) + [(d, int(hashes.orders[j])) for d, j in phash_pairs.get(i, []) if kept[j]]
            if found:
                d, o = min(found)
                verdict = Verdict("near_duplicate_phash", f"phash distance {int(d)} to {key_of(o)}")
        if verdict is None and cfg.clip_cosine is not None and hashes.has_clip[i]:
            found = list(index_clip[i]) + [(s, int(hashes.orders[j])) for s, j in clip_pairs.get(i, []) if kept[j]]
            if found:
                s, o = min(found)
                verdict = Verdict("near_duplicate_clip", f"CLIP cosine {-s:.4f} to {key_of(o)}")
        if verdict is None:
            kept[i] = True
            if digest is not None:
                first_sha.setdefault(digest, i)
        out.append(verdict)
    return out
