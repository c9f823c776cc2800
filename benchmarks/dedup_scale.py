"""How the dedup index scales: checks/s and inserts/s per index partition as it grows, memory per row.

    python benchmarks/dedup_scale.py --sizes 10000,100000,1000000,10000000 [--clip-max 1000000] [--rebuild 1000000]

For each size N, one partition (what one dedup actor holds: datapipe/dedup/index.py) is filled
with N rows of random 256-bit perceptual hashes and sha256 digests, inserted in batches of a
shard (1,000 rows); then 20,000 checks run in batches of a shard: half fresh hashes, half planted
near duplicates of stored rows at 4..32 flipped bits (the recall per distance is printed: exact
up to segments x (flips + 1) - 1 bits by construction); `checks_per_s` counts a sha256 and a
phash lookup per check, `phash_only_checks_per_s` the phash lookup alone, which is what the
faiss IndexBinaryMultiHash baseline (same segments and flips, up to --faiss-max rows) measures. CLIP rows (512-d, float32 in the index)
are measured up to --clip-max. The baseline, measured in the same run, is the brute-force scan the
index replaced (XOR + popcount against every stored hash, numpy), up to 1M rows.
With --rebuild N: a dataset root of N committed rows (1,000 per shard) is written and the time
for DedupService to rebuild its partitions from the sidecars (parallel Ray tasks) is measured.
One JSON line per measurement; the machine's cores and the faiss threads are printed first.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.ray_runtime import init_ray  # noqa: E402
from datapipe.dedup.index import PartitionIndex  # noqa: E402

SHARD = 1000
DISTANCES = (4, 12, 19, 24, 32)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def flip(codes: np.ndarray, bits: int, rng) -> np.ndarray:
    out = np.unpackbits(codes, axis=1)
    for row in out:
        row[rng.choice(out.shape[1], bits, replace=False)] ^= 1
    return np.packbits(out, axis=1)


def brute_force_checks_per_s(codes: np.ndarray, queries: np.ndarray, radius: int) -> float:
    words = codes.view(np.uint64)
    q = queries.view(np.uint64)
    t = time.perf_counter()
    n = 0
    deadline = t + 5.0
    for row in q:
        d = np.bitwise_count(words ^ row).sum(axis=1)
        int(d.argmin()) if d.min() <= radius else None
        n += 1
        if time.perf_counter() > deadline:
            break
    return n / (time.perf_counter() - t)


def faiss_mih_checks_per_s(codes: np.ndarray, queries: np.ndarray, segments: int, flips: int, radius: int) -> float:
    """The library index ours replaced: faiss's IndexBinaryMultiHash with the same segments and flips."""
    import faiss

    index = faiss.IndexBinaryMultiHash(codes.shape[1] * 8, segments, codes.shape[1] * 8 // segments)
    index.nflip = flips
    for start in range(0, len(codes), 100_000):
        index.add(codes[start : start + 100_000])
    t = time.perf_counter()
    for start in range(0, len(queries), SHARD):
        index.range_search(queries[start : start + SHARD], radius + 1)
    return len(queries) / (time.perf_counter() - t)


def phash_and_sha(n: int, rng, segments: int, flips: int, radius: int, brute: bool, faiss_max: int) -> dict:
    base = rss_bytes()
    index = PartitionIndex(256, segments, flips)
    codes = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    shas = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    t = time.perf_counter()
    for start in range(0, n, SHARD):
        orders = np.arange(start, min(n, start + SHARD), dtype=np.int64)
        digests = [bytes(r) for r in shas[start : start + SHARD]]
        index.insert({"sha": (orders, digests), "phash": (orders, codes[start : start + SHARD])})
    insert_s = time.perf_counter() - t
    memory = rss_bytes() - base - codes.nbytes - shas.nbytes
    # 20,000 checks: half fresh, half planted near duplicates at DISTANCES
    q = 20_000
    targets = rng.integers(0, n, q // 2)
    planted = np.concatenate([flip(codes[targets[i::len(DISTANCES)]], d, rng) for i, d in enumerate(DISTANCES)])
    truth = np.concatenate([targets[i::len(DISTANCES)] for i in range(len(DISTANCES))])
    dist_of = np.concatenate([[d] * len(targets[i::len(DISTANCES)]) for i, d in enumerate(DISTANCES)])
    queries = np.concatenate([planted, rng.integers(0, 256, (q - len(planted), 32), dtype=np.uint8)])
    qsha = [bytes(r) for r in rng.integers(0, 256, (q, 32), dtype=np.uint8)]
    t = time.perf_counter()
    found = []
    for start in range(0, q, SHARD):
        index.query_sha(qsha[start : start + SHARD], n)
        found += index.query_phash(queries[start : start + SHARD], radius, n)
    check_s = time.perf_counter() - t
    t = time.perf_counter()
    for start in range(0, q, SHARD):
        index.query_phash(queries[start : start + SHARD], radius, n)
    phash_check_s = time.perf_counter() - t
    recall = {}
    for d in DISTANCES:
        sel = np.flatnonzero(dist_of == d)
        recall[str(d)] = round(float(np.mean([any(o == truth[i] for _, o in found[i]) for i in sel])), 4)
    out = {"kind": "phash+sha256", "size": n, "checks_per_s": round(q / check_s), "inserts_per_s": round(n / insert_s),
           "bytes_per_row": round(memory / n, 1), "recall_by_distance": recall, "segments": segments, "flips": flips,
           "exact_up_to_bits": segments * (flips + 1) - 1, "phash_only_checks_per_s": round(q / phash_check_s)}
    if n <= faiss_max:
        del index  # its memory, before the baseline builds its own
        fm = faiss_mih_checks_per_s(codes, queries, segments, flips, radius)
        out["baseline_faiss_mih_checks_per_s"] = round(fm)
        out["speedup_vs_faiss_mih"] = round(out["phash_only_checks_per_s"] / fm, 2)
    if brute and n <= 1_000_000:
        bf = brute_force_checks_per_s(codes, queries[:2000], radius)
        out["baseline_brute_force_checks_per_s"] = round(bf)
        out["speedup_vs_brute_force"] = round(out["checks_per_s"] / bf, 1)
    return out


def clip_rows(n: int, rng, nlist: int, nprobe: int) -> dict:
    import faiss

    d = 512
    base = rss_bytes()
    train = rng.standard_normal((min(n, 100_000), d)).astype(np.float32)
    train /= np.linalg.norm(train, axis=1, keepdims=True)
    kmeans = faiss.Kmeans(d, nlist, niter=10, seed=1234, spherical=True, verbose=False)
    kmeans.train(train)
    index = PartitionIndex(None, 1, 0, clip_centroids=kmeans.centroids, clip_nprobe=nprobe)
    t = time.perf_counter()
    kept = []
    for start in range(0, n, SHARD):
        m = min(SHARD, n - start)
        emb = rng.standard_normal((m, d)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        if start < 20 * SHARD:
            kept.append(emb[:50])
        index.insert({"clip": (np.arange(start, start + m, dtype=np.int64), emb)})
    insert_s = time.perf_counter() - t
    memory = rss_bytes() - base
    stored = np.concatenate(kept)
    noise = rng.standard_normal(stored.shape).astype(np.float32) * 0.008
    near = stored + noise
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    fresh = rng.standard_normal((len(near), d)).astype(np.float32)
    fresh /= np.linalg.norm(fresh, axis=1, keepdims=True)
    queries = np.concatenate([near, fresh])
    t = time.perf_counter()
    found = []
    for start in range(0, len(queries), SHARD):
        found += index.query_clip(queries[start : start + SHARD], 0.96, n)
    check_s = time.perf_counter() - t
    recall = float(np.mean([bool(f) for f in found[: len(near)]]))
    return {"kind": "clip", "size": n, "checks_per_s": round(len(queries) / check_s), "inserts_per_s": round(n / insert_s),
            "bytes_per_row": round(memory / n, 1), "recall_cosine_ge_0.96": round(recall, 4), "nlist": nlist,
            "nprobe": nprobe}


def rebuild(n: int, partitions: int, workdir: Path) -> dict:
    import shutil

    import pyarrow as pa
    import ray

    from datapipe.config import DedupConfig
    from datapipe.contract import ShardEntry, Storage, commit_shards, shard_id
    from datapipe.contract.shards import table_to_parquet_bytes
    from datapipe.dedup import DedupService

    root = workdir / "rebuild"
    shutil.rmtree(root, ignore_errors=True)
    storage = Storage(str(root))
    rng = np.random.default_rng(1)
    entries = []
    for s in range(n // SHARD):
        sid = shard_id(s)
        keys = [f"{sid}{i:06d}" for i in range(SHARD)]
        table = pa.table({"key": keys, "url": keys, "caption": keys, "ext": ["png"] * SHARD,
                          "width": pa.array([64] * SHARD, pa.int32()), "height": pa.array([64] * SHARD, pa.int32()),
                          "original_width": pa.array([64] * SHARD, pa.int32()),
                          "original_height": pa.array([64] * SHARD, pa.int32()), "sha256": keys,
                          "source_sha256": [bytes(r).hex() for r in rng.integers(0, 256, (SHARD, 32), dtype=np.uint8)],
                          "phash": [bytes(r).hex() for r in rng.integers(0, 256, (SHARD, 32), dtype=np.uint8)]})
        storage.write_atomic(f"shards/{sid}.parquet", table_to_parquet_bytes(table))
        entries.append(ShardEntry(sid, SHARD, 0, "", 0, SHARD))
    commit_shards(storage, entries)
    init_ray()
    t = time.perf_counter()
    service = DedupService.start(DedupConfig(partitions=partitions), storage, [e.id for e in entries], 256)
    seconds = time.perf_counter() - t
    stats = ray.get([p.stats.remote() for p in service.partitions])
    service.stop()
    ray.shutdown()
    shutil.rmtree(root, ignore_errors=True)
    return {"kind": "rebuild", "size": n, "partitions": partitions, "seconds": round(seconds, 1),
            "rows_per_s": round(n / seconds), "rows_per_partition": [s["rows"] for s in stats]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--clip-max", type=int, default=1_000_000, help="largest size for the CLIP index")
    p.add_argument("--segments", type=int, default=10)
    p.add_argument("--flips", type=int, default=1)
    p.add_argument("--radius", type=int, default=32)
    p.add_argument("--clip-nlist", type=int, default=1024)
    p.add_argument("--clip-nprobe", type=int, default=8)
    p.add_argument("--faiss-max", type=int, default=1_000_000,
                   help="largest size for the faiss IndexBinaryMultiHash baseline (~880 bytes/row)")
    p.add_argument("--rebuild", type=int, default=0, help="rows of a committed dataset to rebuild from (0: skip)")
    p.add_argument("--partitions", type=int, default=2)
    p.add_argument("--workdir", default=str(ROOT / "benchmarks" / "_work"))
    args = p.parse_args()
    import faiss

    faiss.omp_set_num_threads(1)  # one actor = one core
    print(json.dumps({"cores": os.cpu_count(), "faiss_threads": 1, "faiss": faiss.__version__}), flush=True)
    rng = np.random.default_rng(0)
    for n in [int(s) for s in args.sizes.split(",")]:
        print(json.dumps(phash_and_sha(n, rng, args.segments, args.flips, args.radius, brute=True, faiss_max=args.faiss_max)), flush=True)
        if n <= args.clip_max:
            print(json.dumps(clip_rows(n, rng, min(args.clip_nlist, max(1, n // 39)), args.clip_nprobe)), flush=True)
    if args.rebuild:
        print(json.dumps(rebuild(args.rebuild, args.partitions, Path(args.workdir))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
