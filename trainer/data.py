"""The streaming loader: committed shards + caption versions -> bucketed micro-batches per rank.

Two halves:
- `Planner` decides, from metadata only (sidecars and caption parquet, no image bytes), the exact
  sequence of global batches: which samples, which bucket, which caption text. It is a pure
  function of (seed, epoch, the epoch's shard windows), so every rank computes the same plan and
  a resumed run replays it. Shard listings come from rank 0 (`sync`), so ranks never disagree
  about which shards exist while curation is still committing new ones.
- `ShardLoader` takes this rank's disjoint slice of each global batch, reads just those tar
  members (by offset, no full-shard scan after the first) and decodes them in a thread pool a
  few micro-batches ahead of the training step.

Caption choice happens here, before the LLM runs: a level drawn with `level_weights` among the
levels the sample has, then CFG dropout to the empty prompt. Both are seeded per (seed, epoch,
key), independent of rank count and timing.
"""

from __future__ import annotations

import io
import logging
import random
import tarfile
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from PIL import Image

from datapipe.contract import CAPTION_STATUS_OK, LEVEL_COLUMNS, CaptionSet, Dataset

from .buckets import make_buckets, nearest_bucket, resize_to_bucket
from .config import DataConfig

log = logging.getLogger(__name__)

Sync = Callable[[Callable[[], object]], object]  # runs the function on rank 0, broadcasts its value


@dataclass
class PlannedSample:
    shard: str
    key: str
    ext: str
    caption: str
    level: str  # "1".."6", "alt", or "uncond" (CFG dropout)
    version: str = ""  # the caption version the text came from ("alt": the sidecar; "": the empty prompt)


@dataclass
class PlannedBatch:
    epoch: int
    index: int  # global batches before this one in the epoch
    bucket: tuple[int, int]
    samples: list[PlannedSample]
    windows: list[list[str]]  # the epoch's shard windows decided so far (for the checkpoint)


@dataclass
class LoaderPosition:
    """Where the loader is: what a checkpoint stores so a resumed run sees the same samples."""

    epoch: int = 0
    batches: int = 0  # global batches consumed in this epoch
    windows: list[list[str]] = field(default_factory=list)  # this epoch's shard windows, in order


@dataclass
class LoaderStats:
    planned: int = 0
    no_caption: int = 0  # samples skipped: no ok caption row in any chosen version (or no usable level)
    dropped_tail: int = 0  # samples left in unfilled buckets at an epoch's end
    cfg_dropped: int = 0
    # bit rot in committed shards: a tar member that cannot be read or an image that does not
    # decode; the sample's slot is kept (shapes stay the same on every rank) with loss weight 0
    corrupt_samples: int = 0
    unreadable_shards: int = 0  # shards whose sidecar could not be read: left out of the plan

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class Planner:
    def __init__(self, cfg: DataConfig, seed: int, global_batch: int, sync: Sync | None = None):
        self.cfg, self.seed, self.global_batch = cfg, seed, global_batch
        self.sync = sync or (lambda fn: fn())
        self.dataset = Dataset(cfg.root)
        self.caption_sets = [CaptionSet(self.dataset.storage, v) for v in cfg.caption_versions]
        self.buckets = [tuple(b) for b in cfg.buckets] or make_buckets(cfg.resolution, cfg.bucket_multiple, cfg.max_aspect)
        self.levels = [(name, w) for name, w in cfg.level_weights.items() if w > 0]
        self.stats = LoaderStats()

    # -- shard listing, agreed by all ranks ----------------------------------------------------
    def _ready_shards(self) -> list[str]:
        """Committed shards; in follow mode only those a chosen caption version has reached, so a
        shard committed by curation is not consumed (as all-uncaptioned) before captioning gets to it."""
        committed = [s.id for s in self.dataset.refresh().shards]
        if not self.cfg.follow or not self.cfg.caption_versions:
            return committed
        self.caption_sets = [CaptionSet(self.dataset.storage, v) for v in self.cfg.caption_versions]
        captioned = {sid for cs in self.caption_sets for sid in cs.shard_ids()}
        return [sid for sid in committed if sid in captioned]

    def _wait_for_windows(self, epoch: int, used: set[str]) -> list[list[str]]:
        """Windows of shards not used yet this epoch. Rank 0 lists the manifest and, in follow
        mode, decides when waiting has lasted long enough; every rank acts on its answer."""
        deadline = time.monotonic() + self.cfg.follow_idle_s
        while True:
            committed, expired = self.sync(lambda: (self._ready_shards(), time.monotonic() >= deadline))
            fresh = [s for s in committed if s not in used]
            if not self.cfg.follow:  # a fixed epoch: every committed shard, in a seeded order
                random.Random(f"{self.seed}:{epoch}:shards").shuffle(fresh)
            w = max(1, self.cfg.shuffle_window)
            windows = [fresh[i : i + w] for i in range(0, len(fresh), w)]
            if windows or not self.cfg.follow or expired:
                return windows
            log.info("follow: waiting for newly committed shards (%d used this epoch)", len(used))
            time.sleep(self.cfg.follow_poll_s)

    # -- the plan ------------------------------------------------------------------------------
    def epoch(self, epoch: int, windows: list[list[str]] | None = None) -> Iterator[PlannedBatch]:
        """The epoch's global batches; `windows` replays the start of an epoch from a checkpoint."""
        windows = [list(w) for w in windows or []]
        if not windows:
            windows = self._wait_for_windows(epoch, set())
        pending: dict[int, list[PlannedSample]] = {}
        index, w = 0, 0
        while True:
            if w == len(windows):
                if not self.cfg.follow:
                    break
                more = self._wait_for_windows(epoch, {s for win in windows for s in win})
                if not more:
                    break
                windows.extend(more)
            items = self._window_samples(epoch, w, windows[w])
            w += 1
            for bucket, sample in items:
                group = pending.setdefault(bucket, [])
                group.append(sample)
                if len(group) == self.global_batch:
                    pending[bucket] = []
                    yield PlannedBatch(epoch, index, self.buckets[bucket], group, [list(x) for x in windows])
                    index += 1
        self.stats.dropped_tail += sum(len(g) for g in pending.values())

    def _window_samples(self, epoch: int, w: int, shards: list[str]) -> list[tuple[int, PlannedSample]]:
        items = []
        for sid in shards:
            try:
                captions = self._captions(sid)
                side = self.dataset.sidecar(sid, ["key", "ext", "width", "height", "caption"]).to_pylist()
            except Exception as e:  # noqa: BLE001 - a damaged shard is left out, not a dead run
                self.stats.unreadable_shards += 1
                log.warning("shard %s: its sidecar or captions cannot be read (%s); left out of epoch %d "
                            "(deepfusion dataset verify names the damage)", sid, type(e).__name__, epoch)
                continue
            for row in side:
                choice = self._caption_for(epoch, row, captions.get(row["key"]))
                if choice is None:
                    self.stats.no_caption += 1
                    continue
                bucket = nearest_bucket(self.buckets, row["height"], row["width"])
                items.append((bucket, PlannedSample(sid, row["key"], row["ext"], *choice)))
        random.Random(f"{self.seed}:{epoch}:window{w}").shuffle(items)
        self.stats.planned += len(items)
        return items

    def _captions(self, sid: str) -> dict[str, dict]:
        """key -> level texts, from the first version (in priority order) with an ok row."""
        out: dict[str, dict] = {}
        for cs in self.caption_sets:
            for row in cs.shard(sid).to_pylist():
                if row["status"] == CAPTION_STATUS_OK and row["key"] not in out:
                    out[row["key"]] = row
        return out

    def _caption_for(self, epoch: int, row: dict, caption_row: dict | None) -> tuple[str, str, str] | None:
        texts = {}
        if caption_row is not None:
            texts = {str(i + 1): caption_row[c] for i, c in enumerate(LEVEL_COLUMNS)}
        texts["alt"] = row.get("caption")
        if caption_row is None and not (self.cfg.level_weights.get("alt", 0) > 0 and texts["alt"]):
            return None  # a sample without captions is skipped, not trained on alt text by accident
        usable = [(name, w) for name, w in self.levels if texts.get(name) and texts[name].strip()]
        if not usable:
            return None
        rng = random.Random(f"{self.seed}:{epoch}:{row['key']}")
        level = rng.choices([n for n, _ in usable], weights=[w for _, w in usable])[0]
        if rng.random() < self.cfg.cfg_dropout:
            self.stats.cfg_dropped += 1
            return "", "uncond", ""
        return texts[level], level, "alt" if level == "alt" else caption_row.get("version", "")


@dataclass
class MicroBatch:
    images: torch.Tensor  # uint8 [m, 3, h, w]
    captions: list[str]
    levels: list[str]
    keys: list[str]
    bucket: tuple[int, int]
    last_of_step: bool  # the final micro-batch of a global batch (the optimizer steps after it)
    position: LoaderPosition  # the loader position once this global batch is consumed
    valid: torch.Tensor | None = None  # bool [m]: False where the sample was damaged (loss weight 0)


class TarIndex:
    """Member offsets of committed tars, so a rank reads only its own samples' bytes.

    Damage is contained: a tar whose headers break off lists the members before the break; a
    member that is missing, or whose recorded size runs past the end of the file, reads as None.
    """

    def __init__(self, dataset: Dataset, keep: int = 64):
        self.dataset, self.keep = dataset, keep
        self.index: dict[str, dict[str, tuple[int, int]]] = {}

    def members(self, sid: str) -> dict[str, tuple[int, int]]:
        if sid not in self.index:
            found: dict[str, tuple[int, int]] = {}
            try:
                with self.dataset.storage.open(f"shards/{sid}.tar") as f:
                    f.seek(0, io.SEEK_END)
                    end = f.tell()
                    f.seek(0)
                    with tarfile.open(fileobj=f, mode="r|") as tf:
                        for m in tf:
                            if m.offset_data + m.size <= end:
                                found[m.name] = (m.offset_data, m.size)
            except Exception as e:  # noqa: BLE001 - keep what was listed before the damage
                log.warning("shard %s: tar listing stopped after %d members (%s)", sid, len(found), type(e).__name__)
            self.index[sid] = found
            while len(self.index) > self.keep:
                self.index.pop(next(iter(self.index)))
        return self.index[sid]

    def read(self, samples: list[PlannedSample]) -> list[bytes | None]:
        out: dict[int, bytes | None] = {}
        by_shard: dict[str, list[int]] = {}
        for i, s in enumerate(samples):
            by_shard.setdefault(s.shard, []).append(i)
        for sid, idx in by_shard.items():
            members = self.members(sid)
            names = {i: f"{samples[i].key}.{samples[i].ext}" for i in idx}
            try:
                with self.dataset.storage.open(f"shards/{sid}.tar") as f:
                    for i in sorted(idx, key=lambda i: members.get(names[i], (-1, 0))[0]):
                        if names[i] not in members:
                            out[i] = None
                            continue
                        offset, size = members[names[i]]
                        f.seek(offset)
                        data = f.read(size)
                        out[i] = data if len(data) == size else None
            except Exception as e:  # noqa: BLE001 - the whole shard file is unreadable right now
                log.warning("shard %s: tar unreadable (%s)", sid, type(e).__name__)
        return [out.get(i) for i in range(len(samples))]


def _decode(data: bytes | None, bucket: tuple[int, int]) -> torch.Tensor | None:
    if data is None:
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            return resize_to_bucket(image, bucket)
    except Exception:  # noqa: BLE001 - an undecodable image is skipped (counted), never a crash
        return None


class ShardLoader:
    """Micro-batches for one rank, in plan order, decoded ahead of the step.

    Global batch b of an epoch is split into accum x world micro-batches: accumulation step a on
    rank r takes samples [(a * world + r) * micro, ... + micro), so ranks read disjoint samples.
    """

    def __init__(self, cfg: DataConfig, seed: int, micro: int, accum: int, rank: int = 0, world: int = 1,
                 position: LoaderPosition | None = None, sync: Sync | None = None, keys_dir: str | None = None,
                 warm: Callable[[list[str], list[str]], object] | None = None):
        """`warm(captions, levels)` is handed the captions of the next `cfg.encode_ahead`
        micro-batches as they are planned (the trainer encodes them together into its text cache)."""
        self.cfg, self.micro, self.accum, self.rank, self.world = cfg, micro, accum, rank, world
        self.warm = warm
        self.planner = Planner(cfg, seed, micro * accum * world, sync)
        self.tars = TarIndex(self.planner.dataset)
        self.position = position or LoaderPosition()
        self.pool = ThreadPoolExecutor(max(1, cfg.decode_threads), thread_name_prefix="decode")
        self.wait_s = 0.0  # time the consumer spent blocked on data
        self.keys_file = None
        if keys_dir:
            Path(keys_dir).mkdir(parents=True, exist_ok=True)
            self.keys_file = open(Path(keys_dir) / f"rank{rank}.tsv", "a")

    @property
    def stats(self) -> LoaderStats:
        return self.planner.stats

    def _plan(self) -> Iterator[PlannedBatch]:
        p = self.position
        epoch, skip, windows = p.epoch, p.batches, p.windows
        while True:
            produced = 0
            for batch in self.planner.epoch(epoch, windows):
                produced += 1
                if batch.index < skip:
                    continue
                yield batch
            if produced == 0 and not windows:
                raise RuntimeError(
                    f"no training batch can be formed from {self.cfg.root}: {self.stats.as_dict()} "
                    f"(global batch {self.planner.global_batch}); is the dataset empty or uncaptioned "
                    f"for versions {self.cfg.caption_versions}?"
                )
            log.debug("epoch %d done (loader totals so far: %s)", epoch, self.stats.as_dict())
            epoch, skip, windows = epoch + 1, 0, []

    def _micro_batches(self) -> Iterator[tuple[PlannedBatch, int, list[PlannedSample]]]:
        for batch in self._plan():
            for a in range(self.accum):
                start = (a * self.world + self.rank) * self.micro
                yield batch, a, batch.samples[start : start + self.micro]

    def _load(self, bucket, samples: list[PlannedSample]) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 images, valid mask); a damaged sample keeps its slot as a blank image, valid False."""
        blobs = self.tars.read(samples)
        decoded = list(self.pool.map(_decode, blobs, [bucket] * len(blobs)))
        blank = torch.zeros(3, *bucket, dtype=torch.uint8)
        valid = torch.tensor([d is not None for d in decoded], dtype=torch.bool)
        for s, d in zip(samples, decoded):
            if d is None:
                log.warning("sample %s (shard %s): unreadable or undecodable image, skipped", s.key, s.shard)
        return torch.stack([blank if d is None else d for d in decoded]), valid

    def _planned_ahead(self) -> Iterator[tuple[PlannedBatch, int, list[PlannedSample]]]:
        """The planned micro-batches, taken `encode_ahead` at a time; each group's captions go to
        `warm` before the first of them is handed on (planning reads only sidecars and captions)."""
        source = self._micro_batches()
        group = 1 if self.cfg.follow or self.warm is None else max(1, self.cfg.encode_ahead)
        while True:
            chunk = [item for _, item in zip(range(group), source)]
            if not chunk:
                return
            if self.warm is not None:
                self.warm([s.caption for _, _, samples in chunk for s in samples],
                          [s.level for _, _, samples in chunk for s in samples])
            yield from chunk

    def __iter__(self) -> Iterator[MicroBatch]:
        ahead: deque = deque()
        source = self._planned_ahead()
        io_pool = ThreadPoolExecutor(1, thread_name_prefix="read")
        try:
            while True:
                while len(ahead) < max(1, self.cfg.prefetch):
                    try:
                        batch, a, samples = next(source)
                    except StopIteration:
                        break
                    ahead.append((batch, a, samples, io_pool.submit(self._load, batch.bucket, samples)))
                if not ahead:
                    return
                batch, a, samples, future = ahead.popleft()
                t0 = time.perf_counter()
                images, valid = future.result()
                self.wait_s += time.perf_counter() - t0
                self.stats.corrupt_samples += int((~valid).sum())
                last = a == self.accum - 1
                position = LoaderPosition(batch.epoch, batch.index + 1, batch.windows)
                if last:
                    self.position = position
                if self.keys_file:
                    self.keys_file.write(f"{batch.epoch}\t{batch.index}\t{a}\t{','.join(s.key for s in samples)}\n")
                    self.keys_file.flush()
                yield MicroBatch(images, [s.caption for s in samples], [s.level for s in samples],
                                 [s.key for s in samples], batch.bucket, last, position, valid)
        finally:
            io_pool.shutdown(wait=False, cancel_futures=True)
