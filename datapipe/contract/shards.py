"""Image shards: `shards/<id>.tar` (WebDataset), `shards/<id>.parquet`, `rejects/<id>.parquet`.

One ShardWriter builds one shard. Images stream straight into a temporary tar (never held in
memory all at once); on a clean exit the tar, then the sidecar, then the rejects file are moved to
their final names and the writer's `entry` is ready for `commit_shards`, which makes the shard
visible. A writer that dies at any point leaves at most temporaries and files that no manifest
names, so readers never see a partial shard.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from .manifest import ShardEntry, utc_now
from .schema import (
    IMAGE_EXTENSIONS,
    OPTIONAL_SAMPLE_COLUMNS,
    REJECT_COLUMNS,
    REJECT_STAGES,
    SAMPLE_COLUMNS,
    ContractError,
    missing_columns,
)
from .storage import Storage

TAR_MTIME = 0  # fixed member times: the same input gives byte-identical tars on every rerun. An int:
# a float (0.0) made tarfile add a 1 KB pax header (for the mtime) to every member


@dataclass
class Sample:
    key: str
    image: bytes
    ext: str
    meta: dict[str, Any]  # the sidecar row, as stored in <key>.json


class _HashingFile:
    """A write-only file wrapper that counts bytes and hashes them on the way through."""

    def __init__(self, f):
        self._f = f
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def write(self, data) -> int:
        if self._f is None:  # abandoned: tarfile may still flush its buffer when collected
            return len(data)
        self.sha256.update(data)
        self.bytes += len(data)
        return self._f.write(data)

    def flush(self) -> None:
        if self._f is not None:
            self._f.flush()

    def abandon(self) -> None:
        self._f = None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def table_to_parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def sample_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Sidecar rows to Arrow with the contract's types for known columns, inferred for extras."""
    if not rows:
        return SAMPLE_COLUMNS.empty_table()
    table = pa.Table.from_pylist(rows)
    fields = []
    for name in table.column_names:
        if name in SAMPLE_COLUMNS.names:
            fields.append(SAMPLE_COLUMNS.field(name))
        elif name in OPTIONAL_SAMPLE_COLUMNS:
            fields.append(pa.field(name, OPTIONAL_SAMPLE_COLUMNS[name]))
        elif pa.types.is_null(table.schema.field(name).type):
            fields.append(pa.field(name, pa.string()))  # an all-null extra column
        else:
            fields.append(table.schema.field(name))
    return table.cast(pa.schema(fields))


class WebDatasetTarWriter:
    """A WebDataset tar stream: for each sample its members `<key>.<ext>` in sorted extension order.

    Byte for byte what webdataset's TarWriter(fileobj, mtime=TAR_MTIME) writes for bytes values
    (tests/test_contract.py compares them), with the standard library only: importing webdataset
    imports torch, seconds of CPU in every curation worker that writes a shard."""

    def __init__(self, fileobj):
        self._tar = tarfile.open(fileobj=fileobj, mode="w|")

    def write(self, key: str, members: dict[str, bytes]) -> None:
        for ext in sorted(members):
            data = members[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), TAR_MTIME, 0o444
            info.uname = info.gname = "bigdata"
            self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        self._tar.close()


class ShardWriter:
    """Write one shard; use as a context manager.

    >>> with ShardWriter(storage, "000003", inputs=100) as w:
    ...     w.add("000003000001", jpeg_bytes, "jpg", {"url": ..., "caption": ..., ...})
    ...     w.reject("000003000002", url, "download", "http_404", "Not Found")
    >>> commit_shards(storage, [w.entry])
    """

    def __init__(self, storage: Storage, shard_id: str, inputs: int | None = None):
        self.storage = storage
        self.shard_id = shard_id
        self.inputs = inputs
        self.entry: ShardEntry | None = None
        self._rows: list[dict[str, Any]] = []
        self._rejects: list[dict[str, Any]] = []
        self._keys: set[str] = set()

    # -- building ------------------------------------------------------------------------
    def __enter__(self) -> "ShardWriter":
        self._tar_ctx = self.storage.atomic_writer(f"shards/{self.shard_id}.tar")
        self._hashing = _HashingFile(self._tar_ctx.__enter__())
        self._tar = WebDatasetTarWriter(self._hashing)
        return self

    def add(self, key: str, image: bytes, ext: str, row: dict[str, Any]) -> None:
        if ext not in IMAGE_EXTENSIONS:
            raise ContractError(f"image extension {ext!r} is not one of {IMAGE_EXTENSIONS}")
        if "." in key or "/" in key:
            raise ContractError(f"key {key!r} must not contain '.' or '/' (WebDataset splits on them)")
        self._claim(key)
        row = {"sha256": _sha256(image), **row, "key": key, "ext": ext}
        missing = [c for c in SAMPLE_COLUMNS.names if c not in row]
        if missing:
            raise ContractError(f"sample {key}: sidecar row lacks required column(s) {missing}")
        self._tar.write(key, {ext: image, "json": json.dumps(row, default=str).encode()})
        self._rows.append(row)

    def reject(self, key: str, url: str, stage: str, reason: str, detail: str | None = None) -> None:
        if stage not in REJECT_STAGES:
            raise ContractError(f"reject stage {stage!r} is not one of {REJECT_STAGES}")
        self._claim(key)
        self._rejects.append({"key": key, "url": url, "stage": stage, "reason": reason, "detail": detail})

    def _claim(self, key: str) -> None:
        if key in self._keys:
            raise ContractError(f"key {key} appears twice in shard {self.shard_id}")
        self._keys.add(key)

    # -- finishing -----------------------------------------------------------------------
    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            n = len(self._rows) + len(self._rejects)
            if self.inputs is not None and n != self.inputs:
                error = ContractError(
                    f"shard {self.shard_id}: {len(self._rows)} samples + {len(self._rejects)} "
                    f"rejects != {self.inputs} input rows; every input row must end as a sample "
                    "or a reject"
                )
                self._hashing.abandon()
                self._tar_ctx.__exit__(ContractError, error, None)  # discards the temporary tar
                raise error
            self._tar.close()
        else:
            self._hashing.abandon()
        self._tar_ctx.__exit__(exc_type, exc, tb)  # renames the tar, or deletes the temporary
        if exc_type is not None:
            return
        sidecar = table_to_parquet_bytes(sample_table(self._rows))
        self.storage.write_atomic(f"shards/{self.shard_id}.parquet", sidecar)
        rejects = table_to_parquet_bytes(pa.Table.from_pylist(self._rejects, schema=REJECT_COLUMNS))
        self.storage.write_atomic(f"rejects/{self.shard_id}.parquet", rejects)
        self.entry = ShardEntry(
            id=self.shard_id,
            samples=len(self._rows),
            bytes=self._hashing.bytes,
            sha256=self._hashing.sha256.hexdigest(),
            rejects=len(self._rejects),
            inputs=self.inputs,
            sidecar_sha256=_sha256(sidecar),
            rejects_sha256=_sha256(rejects),
            committed_at=utc_now(),
        )


# -- reading ---------------------------------------------------------------------------------
def iter_tar_samples(fileobj) -> Iterator[Sample]:
    """Samples of a WebDataset tar stream, in order; a key with no image member is an error."""
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    files = ({**f, "__url__": None} for f in tar_file_iterator(fileobj))
    for group in group_by_keys(files):
        key = group["__key__"]
        exts = [e for e in IMAGE_EXTENSIONS if e in group]
        if len(exts) != 1:
            raise ContractError(f"sample {key}: expected one image member, found {exts or 'none'}")
        meta = json.loads(group["json"]) if "json" in group else {}
        yield Sample(key=key, image=group[exts[0]], ext=exts[0], meta=meta)


def iter_shard(storage: Storage, entry: ShardEntry) -> Iterator[Sample]:
    with storage.open(entry.tar) as f:
        yield from iter_tar_samples(f)


def read_sidecar(storage: Storage, entry: ShardEntry, columns: list[str] | None = None) -> pa.Table:
    with storage.open(entry.sidecar) as f:
        table = pq.read_table(f, columns=columns)
    missing = missing_columns(table.schema, SAMPLE_COLUMNS) if columns is None else []
    if missing:
        raise ContractError(f"{storage.path(entry.sidecar)}: missing required column(s) {missing}")
    return table


def read_rejects(storage: Storage, entry: ShardEntry) -> pa.Table:
    if not storage.exists(entry.rejects_file):
        return REJECT_COLUMNS.empty_table()
    with storage.open(entry.rejects_file) as f:
        return pq.read_table(f)
