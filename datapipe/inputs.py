"""Input stage: URL lists (parquet, csv/tsv, jsonl; local or fsspec; many files) cut into shards.

Files are read in sorted order, a batch of rows at a time (never a whole file), and cut into
shards of `shard_size` rows numbered from 0 across all files. The plan depends only on the input
files and the shard size, so a rerun puts every row in the same shard under the same key:
    key = <shard id, 6 digits><row in shard, 6 digits>
which is what makes resume and "no duplicate, no lost row" checkable.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Iterator

import fsspec
from fsspec.implementations.local import LocalFileSystem
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from datapipe.contract import SAMPLE_COLUMNS, shard_id

from .config import InputConfig

log = logging.getLogger(__name__)

FORMATS = ("parquet", "csv", "tsv", "jsonl")
# Columns an input row is reduced to before download; `extra` holds the carried-through columns.
INPUT_SCHEMA = pa.schema([("key", pa.string()), ("url", pa.string()), ("caption", pa.string()), ("extra", pa.string())])
RESERVED = set(SAMPLE_COLUMNS.names) | {"phash", "clip_score", "aesthetic", "nsfw", "watermark", "clip_embedding",
                                         "source_sha256"}


@dataclass
class InputShard:
    number: int
    id: str
    rows: pa.Table  # INPUT_SCHEMA


def _format_of(path: str, declared: str) -> str:
    if declared != "auto":
        if declared not in FORMATS:
            raise ValueError(f"input.format {declared!r} is not one of auto, {', '.join(FORMATS)}")
        return declared
    name = path[:-3] if path.endswith(".gz") else path
    ext = name.rsplit(".", 1)[-1].lower()
    ext = {"json": "jsonl", "ndjson": "jsonl", "txt": "csv"}.get(ext, ext)
    if ext not in FORMATS:
        raise ValueError(f"{path}: cannot tell the format from the extension; set input.format")
    return ext


def input_files(cfg: InputConfig) -> list[str]:
    """Every input file, expanded from files, folders and globs, in a stable sorted order."""
    if not cfg.paths:
        raise ValueError("input.paths is empty: give the URL list file(s) to curate")
    found: list[str] = []
    for spec in cfg.paths:
        fs, path = fsspec.core.url_to_fs(spec)
        if fs.isdir(path):
            matches = [p for p in fs.find(path) if _looks_like_input(p)]
        elif any(c in path for c in "*?["):
            matches = fs.glob(path)
        else:
            matches = [path] if fs.exists(path) else []
        if not matches:
            raise FileNotFoundError(f"input path {spec!r} matches no file")
        local = isinstance(fs, LocalFileSystem)
        found += sorted(p if local else fs.unstrip_protocol(p) for p in matches)
    return found


def _looks_like_input(path: str) -> bool:
    try:
        _format_of(path, "auto")
        return True
    except ValueError:
        return False


def _raw_batches(path: str, fmt: str, batch_rows: int) -> Iterator[pa.RecordBatch]:
    compression = "gzip" if path.endswith(".gz") else None
    with fsspec.open(path, "rb", compression=compression) as f:
        if fmt == "parquet":
            yield from pq.ParquetFile(f).iter_batches(batch_size=batch_rows)
            return
        if fmt == "jsonl":
            reader = pa_json.open_json(f, read_options=pa_json.ReadOptions(block_size=1 << 22))
        else:
            parse = pa_csv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",", newlines_in_values=True)
            # everything as text first: a URL list's columns are carried as the user wrote them
            reader = pa_csv.open_csv(f, read_options=pa_csv.ReadOptions(block_size=1 << 22), parse_options=parse)
        for batch in reader:
            yield batch


def _extra_columns(names: list[str], cfg: InputConfig) -> list[str]:
    used = {cfg.url_column, cfg.caption_column}
    if cfg.extra_columns == "all":
        return [n for n in names if n not in used]
    missing = [n for n in cfg.extra_columns if n not in names]
    if missing:
        raise ValueError(f"input.extra_columns {missing} are not in the input (columns: {names})")
    return list(cfg.extra_columns)


def _sidecar_name(column: str) -> str:
    return f"source_{column}" if column in RESERVED or column.startswith("_") else column


def iter_rows(cfg: InputConfig) -> Iterator[tuple[str, pa.RecordBatch]]:
    """(file, batch) with columns url, caption, extra (JSON of the carried columns), in order."""
    for path in input_files(cfg):
        fmt = _format_of(path, cfg.format)
        for batch in _raw_batches(path, fmt, cfg.batch_rows):
            names = batch.schema.names
            if cfg.url_column not in names:
                raise ValueError(f"{path}: no URL column {cfg.url_column!r} (columns: {names}); set input.url_column")
            if cfg.caption_column and cfg.caption_column not in names:
                raise ValueError(f"{path}: no caption column {cfg.caption_column!r} (columns: {names}); "
                                 "set input.caption_column (or null)")
            extras = _extra_columns(names, cfg)
            urls = batch.column(cfg.url_column).cast(pa.string())
            captions = (batch.column(cfg.caption_column).cast(pa.string()) if cfg.caption_column
                        else pa.nulls(batch.num_rows, pa.string()))
            carried = {_sidecar_name(c): batch.column(c).to_pylist() for c in extras}
            extra = [json.dumps({k: v[i] for k, v in carried.items()}, default=str) for i in range(batch.num_rows)]
            yield path, pa.RecordBatch.from_arrays([urls, captions, pa.array(extra, pa.string())],
                                                   names=["url", "caption", "extra"])


def iter_shards(cfg: InputConfig, shard_size: int) -> Iterator[InputShard]:
    """The shard plan, streamed: every input row in exactly one shard, with its stable key."""
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    number = 0

    def cut(table: pa.Table, number: int) -> InputShard:
        sid = shard_id(number)
        keys = pa.array([f"{sid}{i:06d}" for i in range(table.num_rows)], pa.string())
        rows = pa.Table.from_arrays([keys, table.column("url"), table.column("caption"), table.column("extra")],
                                    schema=INPUT_SCHEMA)
        return InputShard(number, sid, rows)

    for _, batch in iter_rows(cfg):
        pending.append(batch)
        pending_rows += batch.num_rows
        while pending_rows >= shard_size:
            table = pa.Table.from_batches(pending)
            yield cut(table.slice(0, shard_size), number)
            number += 1
            rest = table.slice(shard_size)
            pending, pending_rows = rest.to_batches(), rest.num_rows
    if pending_rows:
        yield cut(pa.Table.from_batches(pending), number)


def locate_row(cfg: InputConfig, files: list[str], index: int) -> tuple[str, int] | None:
    """(file, row within the file) of input row `index` (0-based, across `files` in plan order), or
    None when the files no longer hold that many rows. Parquet files are counted from their
    metadata; text formats are streamed up to the file that holds the row."""
    seen = 0
    for path in files:
        fmt = _format_of(path, cfg.format)
        if fmt == "parquet" and not path.endswith(".gz"):
            with fsspec.open(path, "rb") as f:
                n = pq.ParquetFile(f).metadata.num_rows
        else:
            n = sum(b.num_rows for b in _raw_batches(path, fmt, cfg.batch_rows))
        if index < seen + n:
            return path, index - seen
        seen += n
    return None
