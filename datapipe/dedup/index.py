"""One partition's duplicate indexes: exact (sha256), perceptual hash (Hamming), CLIP (cosine).

Stored rows are named by their input order (`order_of(key)`: shard number x 10^6 + row), which is
also their key, so a verdict can name the kept sample and "earlier in input order" is a number
comparison. Lookups never scan:
- sha256: `mih.DigestIndex`, from the 32-byte digest to the order of the first sample with those
  bytes (open addressing in numpy);
- perceptual hash: multi-index hashing (`mih.MultiIndexHash`) over `segments` segments of
  bits/segments bits each, probing every key within `flips` bit flips; candidates are verified
  with the exact Hamming distance. Any stored hash within segments x (flips + 1) - 1 bits of the
  query is found (pigeonhole); between that and `phash_distance`, most are (the benchmark reports
  the recall measured at each distance);
- CLIP: faiss `IndexIVFFlat` (inner product on L2-normalised embeddings) over centroids shared by
  every partition, probing `clip_nprobe` cells.
Which stored rows are candidates for a query depends only on the query and the row, never on
which other rows share the partition: so the union of every partition's answer, and with it each
verdict, is the same for any number of partitions.

Rows rejected after insertion (a shard rewritten after a worker crash) are tombstoned, not
removed, and never returned again.
"""

from __future__ import annotations

import numpy as np

from .mih import DigestIndex, GrowingArray, MultiIndexHash

ROWS_PER_SHARD = 10**6  # keys are <shard, 6 digits><row, 6 digits>


def order_of(key: str) -> int:
    return int(key)


def key_of(order: int) -> str:
    return f"{order:012d}"


def phash_codes(hex_hashes: list[str]) -> np.ndarray:
    """Hex perceptual hashes (imagehash's str) -> uint8 codes [n, bits/8] in faiss's bit order."""
    if not hex_hashes:
        return np.zeros((0, 0), np.uint8)
    return np.frombuffer(bytes.fromhex("".join(hex_hashes)), np.uint8).reshape(len(hex_hashes), -1).copy()


class PartitionIndex:
    def __init__(self, phash_bits: int | None, phash_segments: int, phash_flips: int, clip_dim: int | None = None,
                 clip_centroids: np.ndarray | None = None, clip_nprobe: int = 8):
        import faiss

        self.faiss = faiss
        self.sha = DigestIndex()
        self.sha_orders = GrowingArray(np.int64)
        self.tombstones: set[int] = set()
        self.phash = None
        self.phash_orders = GrowingArray(np.int64)
        if phash_bits:
            bits_per = phash_bits // phash_segments
            if bits_per < 1 or bits_per > 64:
                raise ValueError(f"dedup.phash_segments={phash_segments} gives {bits_per}-bit segments of a "
                                 f"{phash_bits}-bit hash (1..64 needed)")
            self.phash = MultiIndexHash(phash_bits, phash_segments, phash_flips)
        self.clip = None
        self.clip_orders = GrowingArray(np.int64)
        self.clip_dim, self.clip_nprobe = clip_dim, clip_nprobe
        if clip_centroids is not None:
            self.set_centroids(clip_centroids)

    # -- CLIP cells ------------------------------------------------------------------------------
    def set_centroids(self, centroids: np.ndarray) -> None:
        faiss = self.faiss
        centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        quantizer = faiss.IndexFlatIP(centroids.shape[1])
        quantizer.add(centroids)
        self.clip = faiss.IndexIVFFlat(quantizer, centroids.shape[1], len(centroids), faiss.METRIC_INNER_PRODUCT)
        self.clip.is_trained = True
        self.clip.nprobe = min(self.clip_nprobe, len(centroids))
        self._quantizer = quantizer  # faiss does not own it: keep it alive

    # -- inserts -----------------------------------------------------------------------------------
    def insert(self, rows: dict) -> None:
        """rows: {"sha": (orders, digests), "phash": (orders, codes), "clip": (orders, embeddings)},
        each part optional; every part names its own rows (not every row has every hash)."""
        if rows.get("sha") is not None:
            orders, digests = rows["sha"]
            stored = self.sha.add(list(digests))
            self.sha_orders.append(np.asarray(orders, np.int64)[stored])
        if rows.get("phash") is not None and len(rows["phash"][0]):
            orders, codes = rows["phash"]
            if self.phash is None:
                raise ValueError("perceptual hashes inserted into a partition without a phash index")
            self.phash.add(codes)
            self.phash_orders.append(orders)
        if rows.get("clip") is not None and len(rows["clip"][0]):
            orders, emb = rows["clip"]
            if self.clip is None:
                raise ValueError("CLIP embeddings inserted before the partition has its centroids")
            self.clip.add(np.ascontiguousarray(emb, np.float32))
            self.clip_orders.append(orders)

    def tombstone(self, orders) -> None:
        self.tombstones.update(int(o) for o in orders)

    # -- queries: for each query, matches among rows earlier than `before` -------------------------
    def query_sha(self, sha: list[bytes | None], before: int) -> list[int | None]:
        out: list[int | None] = [None] * len(sha)
        asked = [i for i, digest in enumerate(sha) if digest is not None]
        if not asked or not self.sha.ntotal:
            return out
        rows = self.sha.find([sha[i] for i in asked])
        orders = self.sha_orders.array
        for i, row in zip(asked, rows.tolist()):
            if row >= 0:
                o = int(orders[row])
                if o < before and o not in self.tombstones:
                    out[i] = o
        return out

    def query_phash(self, codes: np.ndarray, radius: int, before: int) -> list[list[tuple[int, int]]]:
        """Per query: [(distance, order)] of stored hashes within `radius` bits."""
        if self.phash is None or not len(codes) or self.phash.ntotal == 0:
            return [[] for _ in range(len(codes))]
        lims, dist, ids = self.phash.range_search(codes, radius)
        return self._collect(lims, dist, ids, self.phash_orders.array, before, len(codes))

    def query_clip(self, emb: np.ndarray, threshold: float, before: int) -> list[list[tuple[float, int]]]:
        """Per query: [(-cosine, order)] of stored embeddings with cosine >= threshold."""
        if self.clip is None or not len(emb) or self.clip.ntotal == 0:
            return [[] for _ in range(len(emb))]
        # faiss returns similarities > radius for inner product
        lims, sims, ids = self.clip.range_search(np.ascontiguousarray(emb, np.float32), float(threshold) - 1e-6)
        return self._collect(lims, -sims.astype(np.float64), ids, self.clip_orders.array, before, len(emb))

    def _collect(self, lims, scores, ids, orders, before, n):
        found = orders[ids] if len(ids) else np.zeros(0, np.int64)
        keep = found < before
        if self.tombstones:
            keep &= ~np.isin(found, np.fromiter(self.tombstones, np.int64))
        out = []
        for q in range(n):
            lo, hi = int(lims[q]), int(lims[q + 1])
            if lo == hi:
                out.append([])
                continue
            sel = keep[lo:hi]
            out.append(list(zip(scores[lo:hi][sel].tolist(), found[lo:hi][sel].tolist())))
        return out

    @property
    def rows(self) -> int:
        return max(self.sha.ntotal, int(self.phash.ntotal) if self.phash is not None else 0,
                   int(self.clip.ntotal) if self.clip is not None else 0)
