"""The trainer's streaming loader on real committed shards: plan, ranks, buckets, captions, resume."""

from __future__ import annotations

import itertools
import math
import threading
import time
from dataclasses import replace

import pytest
import torch
from conftest import scenes_dataset

from datapipe.contract import CaptionVersion, CaptionWriter, Dataset, Storage, caption_table
from scenes.analyse import dominant_color
from trainer.buckets import make_buckets, nearest_bucket
from trainer.config import DataConfig
from trainer.data import LoaderPosition, ShardLoader


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """60 scenes of three aspect ratios in 4 shards."""
    return scenes_dataset(tmp_path_factory.mktemp("mixed"), 60, sizes="32x32,48x24,24x48", shard_size=16)


def data_cfg(root, **kw) -> DataConfig:
    return replace(DataConfig(root=str(root), resolution=32, bucket_multiple=8, shuffle_window=2, prefetch=2), **kw)


def take(loader, n):
    return list(itertools.islice(iter(loader), n))


def test_buckets_cover_aspects_with_about_equal_area():
    buckets = make_buckets(64, 16, 2.0)
    assert (64, 64) in buckets and all(h % 16 == 0 and w % 16 == 0 for h, w in buckets)
    assert all(0.5 <= h / w <= 2.0 and abs(h * w - 64 * 64) / 4096 < 0.25 for h, w in buckets)
    assert buckets[nearest_bucket(buckets, 100, 200)] == (48, 96)
    assert buckets[nearest_bucket(buckets, 300, 300)] == (64, 64)


def test_ranks_read_disjoint_slices_of_one_global_plan(mixed):
    cfg = data_cfg(mixed)
    single = take(ShardLoader(cfg, seed=3, micro=4, accum=2), 6)  # 3 global batches of 8
    ranks = [take(ShardLoader(cfg, seed=3, micro=2, accum=2, rank=r, world=2), 6) for r in range(2)]
    for step in range(3):
        global_keys = [k for mb in single[2 * step : 2 * step + 2] for k in mb.keys]
        per_rank = [[k for mb in ranks[r][2 * step : 2 * step + 2] for k in mb.keys] for r in range(2)]
        assert not set(per_rank[0]) & set(per_rank[1])
        assert sorted(per_rank[0] + per_rank[1]) == sorted(global_keys)
        # every rank decodes into the same bucket at a given step
        buckets = {mb.bucket for r in range(2) for mb in ranks[r][2 * step : 2 * step + 2]}
        assert len(buckets) == 1


def test_images_match_their_bucket_and_caption(mixed):
    cfg = data_cfg(mixed, level_weights={"1": 1.0}, cfg_dropout=0.0)
    loader = ShardLoader(cfg, seed=0, micro=4, accum=1)
    sidecars = {r["key"]: r for s in Dataset(mixed).shards for r in Dataset(mixed).sidecar(s.id).to_pylist()}
    seen_buckets = set()
    for mb in take(loader, 12):
        h, w = mb.bucket
        assert mb.images.shape == (4, 3, h, w) and mb.images.dtype == torch.uint8
        for key, image, caption in zip(mb.keys, mb.images, mb.captions):
            side = sidecars[key]
            assert mb.bucket == loader.planner.buckets[nearest_bucket(loader.planner.buckets, side["height"], side["width"])]
            assert dominant_color(image.permute(1, 2, 0).numpy()) in caption  # the right caption for the right image
        seen_buckets.add(mb.bucket)
    assert len(seen_buckets) == 3


def test_resume_from_a_position_replays_exactly(mixed):
    cfg = data_cfg(mixed)
    full = take(ShardLoader(cfg, seed=1, micro=4, accum=2), 16)  # crosses an epoch (60 samples, batch 8)
    position = full[5].position  # after 3 global batches
    assert full[5].last_of_step and position.batches == 3
    resumed = take(ShardLoader(cfg, seed=1, micro=4, accum=2, position=LoaderPosition(**vars(position))), 10)
    for a, b in zip(full[6:], resumed):
        assert a.keys == b.keys and a.captions == b.captions and a.levels == b.levels
        assert torch.equal(a.images, b.images)
    assert any(mb.position.epoch == 1 for mb in full)  # the second epoch has its own order
    epoch0 = [k for mb in full if mb.position.epoch == 0 for k in mb.keys]
    epoch1 = [k for mb in full if mb.position.epoch == 1 for k in mb.keys][: len(epoch0)]
    assert epoch0 != epoch1


def test_the_captions_of_the_next_micro_batches_reach_warm_before_the_first_of_them(mixed):
    """The loader hands the trainer the captions of `encode_ahead` planned micro-batches at once
    (their LLM states are encoded together); the micro-batches, their order and positions do not
    change, and a resumed loader warms from its own position on."""
    cfg = data_cfg(mixed, encode_ahead=3)
    plain = take(ShardLoader(cfg, seed=1, micro=4, accum=2), 12)
    handed: list[tuple[list[str], list[str]]] = []
    consumed: list[int] = []  # how many micro-batches had been consumed when each group was handed over
    loader = ShardLoader(cfg, seed=1, micro=4, accum=2, warm=lambda c, lv: (handed.append((c, lv)), consumed.append(len(got))))
    got = []
    for mb in itertools.islice(iter(loader), 12):
        got.append(mb)
    assert [(a.keys, a.captions, a.levels, a.position) for a in got] == \
        [(b.keys, b.captions, b.levels, b.position) for b in plain]
    groups = [c for c, _ in handed]
    assert all(len(c) == 3 * 4 for c in groups[:4])  # 3 micro-batches of 4 per group
    assert [c for g in groups for c in g][:48] == [c for mb in plain for c in mb.captions]
    assert [lv for _, g in handed for lv in g][:48] == [lv for mb in plain for lv in mb.levels]
    # each group arrives before its first micro-batch is handed on: at 0, 3, 6, 9 consumed (the
    # decode prefetch of 2 pulls the group of micro-batches 3-5 while 1 is being consumed, ...)
    assert all(n <= 3 * i for i, n in enumerate(consumed[:4]))
    resumed, again = [], ShardLoader(cfg, seed=1, micro=4, accum=2, position=LoaderPosition(**vars(plain[5].position)),
                                     warm=lambda c, lv: resumed.append(c))
    assert [mb.keys for mb in take(again, 3)] == [mb.keys for mb in plain[6:9]]
    assert resumed[0] == [c for mb in plain[6:9] for c in mb.captions]


def test_level_weights_cfg_dropout_and_alt_text(mixed):
    ds = Dataset(mixed)
    ref = {r["key"]: r for s in ds.shards for r in ds.captions("reference").shard(s.id).to_pylist()}
    alt = {r["key"]: r["caption"] for s in ds.shards for r in ds.sidecar(s.id).to_pylist()}
    loader = ShardLoader(data_cfg(mixed, level_weights={"6": 1.0, "alt": 1.0}, cfg_dropout=0.25), seed=0, micro=8, accum=1)
    levels = []
    for mb in take(loader, 14):  # 112 samples (about 2 epochs)
        for key, caption, level in zip(mb.keys, mb.captions, mb.levels):
            levels.append(level)
            expected = {"6": ref[key]["level_6"], "alt": alt[key], "uncond": ""}[level]
            assert caption == expected
    n = len(levels)
    dropped = levels.count("uncond")
    assert abs(dropped - 0.25 * n) < 4 * math.sqrt(n * 0.25 * 0.75)  # binomial, 4 sigma
    assert levels.count("6") > 0.2 * n and levels.count("alt") > 0.2 * n and set(levels) == {"6", "alt", "uncond"}


def test_samples_without_captions_are_skipped_and_counted(tmp_path):
    root = scenes_dataset(tmp_path, 40, shard_size=10)
    storage = Storage(root)
    ds = Dataset(root)
    # a caption version that covers only the first two shards, one of its rows failed
    writer = CaptionWriter(storage, CaptionVersion("partial", backend="reference"))
    for i, entry in enumerate(ds.shards[:2]):
        rows = ds.captions("reference").shard(entry.id).to_pylist()
        if i == 0:
            rows[0] = {**rows[0], "status": "failed", "error": "test"}
        writer.commit_shard(entry.id, caption_table(rows))
    loader = ShardLoader(data_cfg(root, caption_versions=["partial"], cfg_dropout=0.0), seed=0, micro=4, accum=1)
    epoch = list(loader.planner.epoch(0))
    keys = {s.key for batch in epoch for s in batch.samples}
    allowed = {r["key"] for e in ds.shards[:2] for r in ds.sidecar(e.id).to_pylist()}
    assert keys <= allowed and len(epoch) == 4  # 19 captioned samples: 4 batches of 4, 3 left over
    assert (loader.stats.no_caption, loader.stats.dropped_tail) == (21, 3)  # 20 uncaptioned + 1 failed row
    # a second version fills the gaps, in priority order
    loader = ShardLoader(data_cfg(root, caption_versions=["partial", "reference"], cfg_dropout=0.0), seed=0, micro=4, accum=1)
    assert {k for mb in take(loader, 10) for k in mb.keys} - allowed
    assert loader.stats.no_caption == 0


def test_follow_mode_picks_up_newly_committed_shards(tmp_path):
    full = scenes_dataset(tmp_path / "full", 32, shard_size=8)
    # a dataset that starts with one shard; the rest is committed while the loader runs
    from datapipe.contract import ShardWriter, commit_shards

    src, dst = Dataset(full), Storage(tmp_path / "growing")
    writer = CaptionWriter(dst, CaptionVersion("reference", backend="reference", model="scene-graph"))

    def copy_shard(entry):
        with ShardWriter(dst, entry.id, inputs=entry.samples) as w:
            side = {r["key"]: r for r in src.sidecar(entry.id).to_pylist()}
            for sample in src.samples(entry.id):
                w.add(sample.key, sample.image, sample.ext, {k: v for k, v in side[sample.key].items() if k not in ("key", "ext")})
        commit_shards(dst, [w.entry])
        writer.commit_shard(entry.id, caption_table(src.captions("reference").shard(entry.id).to_pylist()))

    copy_shard(src.shards[0])

    def later():
        for entry in src.shards[1:]:
            time.sleep(0.3)
            copy_shard(entry)

    thread = threading.Thread(target=later)
    thread.start()
    cfg = data_cfg(tmp_path / "growing", follow=True, follow_poll_s=0.1, follow_idle_s=3.0, shuffle_window=1)
    loader = ShardLoader(cfg, seed=0, micro=4, accum=1)
    batches = take(loader, 8)  # 32 samples: only possible if the three later shards were picked up
    thread.join()
    assert all(mb.position.epoch == 0 for mb in batches)
    assert len({k for mb in batches for k in mb.keys}) == 32
    windows = batches[-1].position.windows
    assert [w[0] for w in windows] == [e.id for e in src.shards]  # recorded for an exact resume
