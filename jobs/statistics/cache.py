"""The statistics cache: one slim parquet file per committed shard, read from the dataset once.

Sidecars can be wide (a CLIP embedding per row) and remote; the cache keeps only what the
statistics need, so a rerun reads just the shards committed (or re-committed) since the last run.
A shard is known by the sha256 the manifest records for it, a caption shard by the sha256 in its
version manifest: a changed hash means "read it again".

    stats/cache/index.json                       {"samples": {id: sha}, "captions": {version: {id: sha}}}
    stats/cache/samples/<id>.parquet             size, scores and commit time per sample
    stats/cache/rejects/<id>.parquet             stage, reason, url and detail per reject
    stats/cache/gallery/<id>.parquet             a few samples per shard with a JPEG thumbnail
    stats/cache/captions/<version>/<id>.parquet  status, finish reason and words per level per key
                                                 (the text itself only for gallery keys)
    stats/cache/vgallery/<version>/<id>.parquet  the version's own gallery: the first rows of the shard
                                                 it captioned ok, with thumbnails (a version that covers
                                                 a few rows shows those rows, not "not captioned")
"""

from __future__ import annotations

import base64
import io
import json
import logging
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from datapipe.contract import (
    CAPTION_STATUS_OK,
    LEVEL_COLUMNS,
    CaptionVersion,
    Dataset,
    Storage,
    iter_tar_samples,
    list_versions,
)
from datapipe.contract.shards import table_to_parquet_bytes

from .config import StatsConfig

log = logging.getLogger(__name__)

CACHE = "stats/cache"
INDEX = f"{CACHE}/index.json"
SCORE_COLUMNS = ("clip_score", "aesthetic", "nsfw", "watermark")
SAMPLE_CACHE_COLUMNS = ("key", "width", "height", "original_width", "original_height", *SCORE_COLUMNS)


@dataclass
class CacheUpdate:
    """What one refresh read: shard ids per kind (the rest came from the cache)."""

    samples: list[str] = field(default_factory=list)
    captions: dict[str, list[str]] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)  # cache entries whose shard or version is gone

    @property
    def read_anything(self) -> bool:
        return bool(self.samples or any(self.captions.values()) or self.dropped)


def load_index(storage: Storage) -> dict:
    if not storage.exists(INDEX):
        return {"samples": {}, "captions": {}}
    return json.loads(storage.read_bytes(INDEX))


def cut(column: pa.ChunkedArray | pa.Array, n: int) -> pa.Array:
    """Strings cut to n characters (web text can be megabytes; the dashboard shows a glimpse)."""
    return pc.utf8_slice_codeunits(column.cast(pa.string()), 0, n)


def read_columns(storage: Storage, rel: str, wanted) -> pa.Table:
    """The columns of `wanted` that the parquet file has (scores are optional in the contract)."""
    with storage.open(rel) as f:
        pf = pq.ParquetFile(f)
        names = [c for c in wanted if c in pf.schema_arrow.names]
        return pf.read(columns=names)


def with_nulls(table: pa.Table, columns, type_=pa.float32()) -> pa.Table:
    for name in columns:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, type_))
    return table


def thumbnail(image: bytes, side: int, quality: int) -> str:
    """A small JPEG as a data: URL; decoded once, from the bytes the tar holds."""
    with Image.open(io.BytesIO(image)) as im:
        im.draft("RGB", (side, side))  # JPEG: decode at a reduced scale directly
        im = im.convert("RGB")
        im.thumbnail((side, side))
        out = io.BytesIO()
        im.save(out, "JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()


def cache_shard(ds: Dataset, shard_id: str, cfg: StatsConfig) -> None:
    storage, entry = ds.storage, ds.shard(shard_id)
    samples = with_nulls(read_columns(storage, entry.sidecar, (*SAMPLE_CACHE_COLUMNS, "url", "caption")), SCORE_COLUMNS)
    n = samples.num_rows
    slim = samples.select(list(SAMPLE_CACHE_COLUMNS)).append_column("shard", pa.array([shard_id] * n, pa.string()))
    storage.write_atomic(f"{CACHE}/samples/{shard_id}.parquet", table_to_parquet_bytes(slim))

    rejects = ds.rejects(shard_id)
    rejects = pa.table({
        "shard": pa.array([shard_id] * rejects.num_rows, pa.string()),
        "key": rejects.column("key"), "url": cut(rejects.column("url"), cfg.max_text),
        "stage": rejects.column("stage"), "reason": rejects.column("reason"),
        "detail": cut(rejects.column("detail"), cfg.max_text),
    })
    storage.write_atomic(f"{CACHE}/rejects/{shard_id}.parquet", table_to_parquet_bytes(rejects))

    # The gallery: the shard's first rows, thumbnails from the tar (stop reading once found).
    gallery = gallery_rows(ds, shard_id, samples.slice(0, cfg.gallery.per_shard), cfg)
    storage.write_atomic(f"{CACHE}/gallery/{shard_id}.parquet", table_to_parquet_bytes(gallery))


GALLERY_COLUMNS = ("key", "url", "caption", "width", "height", *SCORE_COLUMNS)


def gallery_rows(ds: Dataset, shard_id: str, picked: pa.Table, cfg: StatsConfig) -> pa.Table:
    """Gallery rows for the sidecar rows `picked`: texts cut, a thumbnail from the tar (one pass,
    stopping once every picked key is found)."""
    storage, entry = ds.storage, ds.shard(shard_id)
    wanted = set(picked.column("key").to_pylist())
    thumbs: dict[str, str] = {}
    if wanted:
        with storage.open(entry.tar) as f:
            for sample in iter_tar_samples(f):
                if sample.key in wanted:
                    try:
                        thumbs[sample.key] = thumbnail(sample.image, cfg.gallery.thumb_side, cfg.gallery.jpeg_quality)
                    except OSError as e:  # a committed sample decodes; if not, the gallery says so
                        log.warning("shard %s: no thumbnail for %s (%s)", shard_id, sample.key, e)
                    wanted.discard(sample.key)
                    if not wanted:
                        break
    gallery = with_nulls(picked, SCORE_COLUMNS).select(list(GALLERY_COLUMNS))
    gallery = gallery.set_column(gallery.column_names.index("caption"), "caption", cut(gallery.column("caption"), cfg.max_text))
    gallery = gallery.append_column("shard", pa.array([shard_id] * gallery.num_rows, pa.string()))
    return gallery.append_column("thumb", pa.array([thumbs.get(k) for k in gallery.column("key").to_pylist()], pa.string()))


def gallery_keys(storage: Storage, shard_id: str) -> set[str]:
    rel = f"{CACHE}/gallery/{shard_id}.parquet"
    if not storage.exists(rel):
        return set()
    return set(read_columns(storage, rel, ["key"]).column("key").to_pylist())


def cache_caption_shard(ds: Dataset, version: str, shard_id: str, cfg: StatsConfig) -> None:
    storage = ds.storage
    rows = read_columns(storage, f"captions/{version}/{shard_id}.parquet",
                        ["key", *LEVEL_COLUMNS, "status", "finish_reason", "prompt_id", "error"])
    rows = with_nulls(rows, ["finish_reason", "prompt_id", "error"], pa.string())
    # the version's own gallery picks: the first keys it captioned ok in this shard
    ok = rows.filter(pc.equal(rows.column("status"), CAPTION_STATUS_OK)).column("key").to_pylist()
    picks = sorted(ok)[: cfg.gallery.per_shard]
    shown = sorted(gallery_keys(storage, shard_id) | set(picks))
    keep = pc.is_in(rows.column("key"), value_set=pa.array(shown, pa.string()))
    cols = {"key": rows.column("key"), "shard": pa.array([shard_id] * rows.num_rows, pa.string()),
            "status": rows.column("status"), "finish_reason": rows.column("finish_reason"),
            "prompt_id": rows.column("prompt_id"),
            "error": pc.utf8_slice_codeunits(rows.column("error"), 0, 80)}
    for i, level in enumerate(LEVEL_COLUMNS, start=1):
        text = rows.column(level)
        words = pc.list_value_length(pc.utf8_split_whitespace(pc.utf8_trim_whitespace(text)))
        cols[f"w{i}"] = pc.if_else(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0), 0, words).cast(pa.int32())
        cols[level] = pc.if_else(keep, cut(text, 4 * cfg.max_text), pa.scalar(None, pa.string()))
    storage.write_atomic(f"{CACHE}/captions/{version}/{shard_id}.parquet", table_to_parquet_bytes(pa.table(cols)))
    side = read_columns(storage, ds.shard(shard_id).sidecar, GALLERY_COLUMNS)
    side = side.filter(pc.is_in(side.column("key"), value_set=pa.array(picks, pa.string())))
    storage.write_atomic(f"{CACHE}/vgallery/{version}/{shard_id}.parquet",
                         table_to_parquet_bytes(gallery_rows(ds, shard_id, side, cfg)))


def refresh_cache(cfg: StatsConfig, progress=None) -> CacheUpdate:
    """Bring the cache up to date with the committed dataset; returns what had to be read."""
    ds = Dataset(cfg.root)
    storage = ds.storage
    index = {"samples": {}, "captions": {}} if cfg.rebuild else load_index(storage)
    update = CacheUpdate()

    current = {e.id: e.sha256 for e in ds.shards}
    update.dropped += [f"shard {s}" for s in index["samples"] if s not in current]
    index["samples"] = {s: h for s, h in index["samples"].items() if s in current}
    todo = [s for s, h in current.items() if index["samples"].get(s) != h]
    changed = set(todo)
    for shard_id in (progress(todo, "stats: shards") if progress else todo):
        cache_shard(ds, shard_id, cfg)
        index["samples"][shard_id] = current[shard_id]
        update.samples.append(shard_id)

    versions = list_versions(storage)
    update.dropped += [f"captions {v}" for v in index["captions"] if v not in versions]
    index["captions"] = {v: s for v, s in index["captions"].items() if v in versions}
    for version in versions:
        meta = CaptionVersion.load(storage, version)
        done = index["captions"].setdefault(version, {})
        wanted = {s.id: s.sha256 for s in meta.shards if s.id in current}
        for gone in set(done) - set(wanted):
            del done[gone]
        # a re-committed image shard may have new gallery keys: its caption rows are re-read too
        todo = [s for s, h in wanted.items() if done.get(s) != h or s in changed]
        for shard_id in todo:
            cache_caption_shard(ds, version, shard_id, cfg)
            done[shard_id] = wanted[shard_id]
        if todo:
            update.captions[version] = todo
    storage.write_atomic(INDEX, (json.dumps(index, indent=1) + "\n").encode())
    return update
