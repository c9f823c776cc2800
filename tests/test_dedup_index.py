"""The dedup index: lookups that do not scan, verdicts that do not depend on the topology.

Unit level here (one partition, the verdict rule, Ray actors on a local instance with shards
finishing in any order); the curation job's own determinism across partition counts and a kill
is in test_curate.py.
"""

from __future__ import annotations

import random
import time

import numpy as np
import pytest

from common.ray_runtime import init_ray
from datapipe.config import DedupConfig
from datapipe.dedup.decide import decide
from datapipe.dedup.index import PartitionIndex
from datapipe.dedup.service import hashes_of


def _flip(code: np.ndarray, bits: int, rng: random.Random) -> np.ndarray:
    b = np.unpackbits(code)
    for i in rng.sample(range(len(b)), bits):
        b[i] ^= 1
    return np.packbits(b)


def test_partition_finds_every_hash_within_the_guaranteed_radius_and_nothing_later():
    rng = random.Random(0)
    np_rng = np.random.default_rng(0)
    index = PartitionIndex(256, 10, 1)  # exact up to 10 x 2 - 1 = 19 bits
    codes = np_rng.integers(0, 256, (5000, 32), dtype=np.uint8)
    orders = np.arange(5000, dtype=np.int64) * 7
    index.insert({"phash": (orders, codes), "sha": (orders, [bytes(c) for c in codes])})
    for bits in (0, 1, 7, 13, 19):
        for i in rng.sample(range(5000), 40):
            found = index.query_phash(_flip(codes[i], bits, rng)[None], 32, 10**9)[0]
            assert (bits, int(orders[i])) in found, (bits, i)
    # only rows earlier than `before`; tombstoned rows never
    found = index.query_phash(codes[10][None], 0, int(orders[10]))[0]
    assert found == []
    assert index.query_sha([bytes(codes[10])], 10**9) == [int(orders[10])]
    index.tombstone([int(orders[10])])
    assert index.query_sha([bytes(codes[10])], 10**9) == [None]
    assert index.query_phash(codes[10][None], 0, 10**9)[0] == []
    # random hashes are far apart: nothing within 32 bits
    fresh = np_rng.integers(0, 256, (200, 32), dtype=np.uint8)
    assert all(not f for f in index.query_phash(fresh, 32, 10**9))


def _brute_force(stored: np.ndarray, queries: np.ndarray, radius: int) -> list[dict[int, int]]:
    d = np.unpackbits(queries[:, None, :] ^ stored[None, :, :], axis=2).sum(axis=2)
    return [{int(j): int(d[i, j]) for j in np.flatnonzero(d[i] <= radius)} for i in range(len(queries))]


def _answers(index, queries: np.ndarray, radius: int) -> list[dict[int, int]]:
    lims, dist, ids = index.range_search(queries, radius)
    out = []
    for i in range(len(queries)):
        got_ids = ids[lims[i] : lims[i + 1]].tolist()
        assert got_ids == sorted(set(got_ids)), "one answer per stored row, ids ascending"
        out.append(dict(zip(got_ids, dist[lims[i] : lims[i + 1]].tolist())))
    return out


@pytest.mark.parametrize("bits,segments,flips", [(256, 10, 1), (64, 8, 0), (128, 5, 2)])
def test_multi_index_hash_agrees_with_brute_force_through_table_growth(bits, segments, flips):
    from datapipe.dedup.mih import MultiIndexHash

    rng = random.Random(bits)
    np_rng = np.random.default_rng(bits)
    n = 3000
    stored = np_rng.integers(0, 256, (n, bits // 8), dtype=np.uint8)
    stored[100:400] = stored[99]  # a crowded key: 301 equal codes share every segment's slot run
    stored[500] = 0  # the all-zero code
    index = MultiIndexHash(bits, segments, flips)
    sizes = []
    start = 0
    for step in (1, 7, 30, 100, 250, 600, 1000, 1000, 1000):  # the table doubles between and inside them
        index.add(stored[start : start + step])
        sizes.append(len(index.slots))
        start += step
    assert index.ntotal == n and len(set(sizes)) >= 4
    exact = index.exact_up_to
    assert exact == segments * (flips + 1) - 1
    queries = np.stack([_flip(stored[i], rng.randint(0, exact), rng) for i in rng.sample(range(n), 150)]
                       + [stored[99], stored[500]]
                       + list(np_rng.integers(0, 256, (50, bits // 8), dtype=np.uint8)))
    truth = _brute_force(stored, queries, exact)
    assert _answers(index, queries, exact) == truth  # within the guaranteed radius: exactly brute force
    assert len(truth[-52]) == 301
    # beyond it: a subset of brute force, with the true distances (never a wrong answer)
    wide = bits // 4
    truth_wide = _brute_force(stored, queries, wide)
    for got, want in zip(_answers(index, queries, wide), truth_wide):
        assert got.items() <= want.items()


def test_multi_index_hash_answers_do_not_depend_on_how_rows_were_batched():
    from datapipe.dedup.mih import MultiIndexHash

    np_rng = np.random.default_rng(5)
    stored = np_rng.integers(0, 256, (2000, 32), dtype=np.uint8)
    queries = np.stack([_flip(stored[i], 24, random.Random(i)) for i in range(0, 2000, 10)])
    one, many = MultiIndexHash(256, 10, 1), MultiIndexHash(256, 10, 1)
    one.add(stored)
    for i in range(0, 2000, 13):
        many.add(stored[i : i + 13])
    assert _answers(one, queries, 32) == _answers(many, queries, 32)
    with pytest.raises(ValueError, match="bytes"):
        one.add(stored[:, :16])


def _rows(n_shards: int, per_shard: int, seed: int = 0) -> list[list[dict]]:
    """Shards of hash rows with exact and near duplicates across and within shards."""
    rng = random.Random(seed)
    np_rng = np.random.default_rng(seed)
    kept: list[tuple[str, np.ndarray]] = []
    shards = []
    for s in range(n_shards):
        rows = []
        for i in range(per_shard):
            key = f"{s:06d}{i:06d}"
            roll = rng.random()
            if kept and roll < 0.15:
                sha, code = rng.choice(kept)  # exact duplicate (same bytes)
            elif kept and roll < 0.3:
                sha, code = f"{rng.getrandbits(256):064x}", _flip(rng.choice(kept)[1], rng.randint(1, 18), rng)
            else:
                sha, code = f"{rng.getrandbits(256):064x}", np_rng.integers(0, 256, 32, dtype=np.uint8)
            kept.append((sha, code))
            rows.append({"key": key, "source_sha256": sha, "phash": bytes(code).hex()})
        shards.append(rows)
    return shards


def _reference(shards, cfg) -> dict[str, str | None]:
    """One pass in input order against every kept row: brute force, the definition of the verdict."""
    kept: list[tuple[int, bytes, np.ndarray]] = []
    out = {}
    for rows in shards:
        for r in rows:
            sha, code = bytes.fromhex(r["source_sha256"]), np.frombuffer(bytes.fromhex(r["phash"]), np.uint8)
            verdict = None
            same = [o for o, s, _ in kept if s == sha]
            if same:
                verdict = f"duplicate:{min(same):012d}"
            else:
                near = [(int(np.unpackbits(code ^ c).sum()), o) for o, _, c in kept]
                near = [x for x in near if x[0] <= cfg.phash_distance]
                if near:
                    verdict = f"near_duplicate_phash:{min(near)[1]:012d}"
            out[r["key"]] = verdict
            if verdict is None:
                kept.append((int(r["key"]), sha, code))
    return out


def _verdicts_of(shard_rows, verdicts):
    return {r["key"]: None if v is None else f"{v.reason}:{v.detail[-12:]}" for r, v in zip(shard_rows, verdicts)}


def test_verdicts_in_one_process_equal_the_brute_force_pass():
    cfg = DedupConfig(phash_distance=18)  # within the exact radius: the index must agree with brute force
    shards = _rows(4, 60)
    index = PartitionIndex(256, cfg.phash_segments, cfg.phash_flips)
    got = {}
    for s, rows in enumerate(shards):
        h = hashes_of(rows, None)
        before = s * 10**6
        sha = index.query_sha(h.sha, before)
        ph = index.query_phash(h.phash, cfg.phash_distance, before)
        verdicts = decide(h, cfg, sha, ph, [[] for _ in rows])
        got.update(_verdicts_of(rows, verdicts))
        kept = np.flatnonzero([v is None for v in verdicts])
        index.insert({"sha": (h.orders[kept], [h.sha[i] for i in kept]), "phash": (h.orders[kept], h.phash[kept])})
    assert got == _reference(shards, cfg)
    assert sum(v is not None for v in got.values()) > 40


@pytest.mark.parametrize("partitions", [1, 3])
def test_actors_give_the_same_verdicts_whatever_the_partitions_and_the_finishing_order(partitions, tmp_path):
    import ray

    from datapipe.contract import Storage
    from datapipe.dedup.service import DedupService

    cfg = DedupConfig(phash_distance=18, partitions=partitions)
    shards = _rows(6, 40, seed=3)
    init_ray(num_cpus=2)  # ray is imported already: the loopback switch must still take effect
    try:
        assert [n["NodeManagerAddress"] for n in ray.nodes()] == ["127.0.0.1"], "a local instance stays on loopback"
        service = DedupService.start(cfg, Storage(str(tmp_path)), [], 256)
        client = service.client()

        @ray.remote(num_cpus=0.25)
        def run(shard: int, rows, delay: float):
            import time

            time.sleep(delay)  # later shards reach the index first: the gate must hold them back
            return client.run(shard, rows)

        refs = [run.remote(s, rows, 0.5 * (len(shards) - s) / len(shards)) for s, rows in enumerate(shards)]
        retried = run.remote(2, shards[2], 0.0)  # a shard that runs twice gets the same answer
        got = {}
        for rows, verdicts in zip(shards, ray.get(refs)):
            got.update(_verdicts_of(rows, verdicts))
        assert _verdicts_of(shards[2], ray.get(retried)) == {r["key"]: got[r["key"]] for r in shards[2]}
        service.stop()
    finally:
        ray.shutdown()
    assert got == _reference(shards, cfg)


def test_a_shard_queued_behind_tasks_waiting_at_the_gate_still_runs(tmp_path):
    """Shards 1 and 2 take both CPUs and wait at the gate for shard 0, which is submitted after them
    (as a retried or split shard is, or one placed late on another node). The waiting tasks hold
    their CPUs only for `gate_hold_s` and then lend them to Ray; holding them for good deadlocks."""
    import ray

    from datapipe.contract import Storage
    from datapipe.dedup.service import DedupService

    cfg = DedupConfig(phash_distance=18, partitions=2, gate_hold_s=0.5)
    shards = _rows(3, 30, seed=5)
    init_ray(num_cpus=2)
    try:
        service = DedupService.start(cfg, Storage(str(tmp_path / "root")), [], 256)
        client = service.client()

        @ray.remote(num_cpus=1)
        def run(shard: int, rows, marker: str):
            from pathlib import Path

            Path(marker).touch()
            return client.run(shard, rows)

        later = [run.remote(s, shards[s], str(tmp_path / f"started-{s}")) for s in (1, 2)]
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"started-{s}").exists() for s in (1, 2)):  # both CPUs taken
            assert time.monotonic() < deadline, "the first two shard tasks never started"
            time.sleep(0.05)
        first = run.remote(0, shards[0], str(tmp_path / "started-0"))
        try:
            answers = ray.get([first, *later], timeout=180)
        except ray.exceptions.GetTimeoutError:
            pytest.fail("deadlock: shard 0 never ran while shards 1 and 2 held the CPUs at the gate")
        got = {}
        for rows, verdicts in zip(shards, answers):
            got.update(_verdicts_of(rows, verdicts))
        service.stop()
    finally:
        ray.shutdown()
    assert got == _reference(shards, cfg)
    assert sum(v is not None for v in got.values()) > 0


def test_digest_index_keeps_the_first_of_equal_digests_like_a_dict_through_table_growth():
    from datapipe.dedup.mih import DigestIndex

    rng = random.Random(11)
    pool = [rng.randbytes(32) for _ in range(1500)]
    pool += [bytes(32), b"\x00" * 8 + rng.randbytes(24)]  # equal first words: one home slot
    index, reference = DigestIndex(), {}
    for batch in range(40):
        digests = [rng.choice(pool) for _ in range(rng.choice([1, 5, 60, 200]))]
        stored = index.add(digests)
        expected = []
        for i, d in enumerate(digests):
            if d not in reference:
                reference[d] = len(reference)
                expected.append(i)
        assert stored.tolist() == expected
    assert index.ntotal == len(reference) and len(index.slots) > 1024
    asked = pool + [rng.randbytes(32) for _ in range(100)]
    assert index.find(asked).tolist() == [reference.get(d, -1) for d in asked]
