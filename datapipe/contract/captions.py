"""Caption versions: `captions/<version>/manifest.json` and `captions/<version>/<id>.parquet`.

Captions live beside the image shards and never inside them. Each version is one captioning run
(or `alt`/`reference`); a regeneration run writes a version whose manifest names a `parent` and
that holds only the rows it regenerated. Readers resolve the chain, so a consumer asking for the
child sees one caption set: for each key, the newest version's row whose status is `ok`, else the
newest row (a failed regeneration never hides a good parent caption).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .manifest import utc_now
from .schema import (
    CAPTION_COLUMNS,
    CAPTION_STATUS_OK,
    SCHEMA_VERSION,
    ContractError,
    check_schema_version,
    missing_columns,
)
from .shards import table_to_parquet_bytes
from .storage import Storage

VERSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=-]{0,127}$")


def version_dir(version: str) -> str:
    if not VERSION_NAME.match(version):
        raise ContractError(
            f"caption version name {version!r} is not allowed: use letters, digits and _ . = - "
            "(at most 128 characters, starting with a letter or digit)"
        )
    return f"captions/{version}"


@dataclass(frozen=True)
class CaptionShard:
    id: str
    rows: int
    failed: int
    sha256: str
    committed_at: str = ""


@dataclass
class CaptionVersion:
    """What a caption version is (identity) and which shards it has done (progress)."""

    version: str
    backend: str  # vllm | openai | alt | reference
    model: str = ""
    prompt_set: dict[str, str] = field(default_factory=dict)  # {"id": ..., "hash": ...}
    params: dict[str, Any] = field(default_factory=dict)
    parent: str | None = None
    selection: dict[str, Any] | None = None  # what a regeneration run selected
    shards: list[CaptionShard] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION
    created_at: str = field(default_factory=utc_now)
    updated_at: str = field(default_factory=utc_now)

    IDENTITY = ("backend", "model", "prompt_set", "params", "parent", "selection")

    def identity(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.IDENTITY}

    def identity_hash(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def shard_ids(self) -> list[str]:
        return [s.id for s in self.shards]

    def shard(self, shard_id: str) -> CaptionShard | None:
        return next((s for s in self.shards if s.id == shard_id), None)

    def to_json(self) -> str:
        body = asdict(self)
        body["totals"] = {
            "shards": len(self.shards),
            "rows": sum(s.rows for s in self.shards),
            "failed": sum(s.failed for s in self.shards),
        }
        return json.dumps(body, indent=1) + "\n"

    @classmethod
    def load(cls, storage: Storage, version: str) -> "CaptionVersion":
        rel = f"{version_dir(version)}/manifest.json"
        if not storage.exists(rel):
            known = list_versions(storage)
            raise ContractError(
                f"caption version {version!r} does not exist under {storage.path('captions')}; "
                f"known versions: {known or 'none'}"
            )
        raw = json.loads(storage.read_bytes(rel))
        check_schema_version(f"caption version {version!r}", raw.get("schema_version"), storage.path(rel))
        raw.pop("totals", None)
        raw["shards"] = [CaptionShard(**s) for s in raw.get("shards", [])]
        return cls(**raw)


def list_versions(storage: Storage) -> list[str]:
    return [v for v in storage.listdir("captions") if storage.exists(f"captions/{v}/manifest.json")]


class CaptionWriter:
    """Writes the shards of one caption version; the version manifest is updated last.

    Opening a version that exists with a different identity (backend, model, prompt set, params,
    parent, selection) is refused: a version name means one set of settings, so a rerun resumes
    and never mixes two runs' captions under one name.
    """

    def __init__(self, storage: Storage, meta: CaptionVersion):
        self.storage = storage
        self.dir = version_dir(meta.version)
        rel = f"{self.dir}/manifest.json"
        with storage.lock(rel):
            if storage.exists(rel):
                existing = CaptionVersion.load(storage, meta.version)
                if existing.identity_hash() != meta.identity_hash():
                    diff = {
                        k: (getattr(existing, k), getattr(meta, k))
                        for k in CaptionVersion.IDENTITY
                        if getattr(existing, k) != getattr(meta, k)
                    }
                    raise ContractError(
                        f"caption version {meta.version!r} already exists with other settings "
                        f"(existing vs requested: {diff}); choose a new version name"
                    )
                self.meta = existing
            else:
                if meta.parent is not None:
                    CaptionVersion.load(storage, meta.parent)  # the parent must exist
                self.meta = meta
                storage.write_atomic(rel, meta.to_json().encode())

    @property
    def done(self) -> set[str]:
        return set(self.meta.shard_ids)

    def commit_shard(self, shard_id: str, table: pa.Table) -> CaptionShard:
        missing = missing_columns(table.schema, CAPTION_COLUMNS)
        if missing:
            raise ContractError(f"caption shard {shard_id}: missing column(s) {missing}")
        keys = table.column("key")
        if pc.count_distinct(keys).as_py() != len(keys):
            raise ContractError(f"caption shard {shard_id}: duplicate keys")
        table = table.select(CAPTION_COLUMNS.names).cast(CAPTION_COLUMNS)
        data = table_to_parquet_bytes(table)
        self.storage.write_atomic(f"{self.dir}/{shard_id}.parquet", data)
        failed = int(pc.sum(pc.not_equal(table.column("status"), CAPTION_STATUS_OK)).as_py() or 0)
        entry = CaptionShard(
            id=shard_id,
            rows=table.num_rows,
            failed=failed,
            sha256=hashlib.sha256(data).hexdigest(),
            committed_at=utc_now(),
        )
        rel = f"{self.dir}/manifest.json"
        with self.storage.lock(rel):
            current = CaptionVersion.load(self.storage, self.meta.version)
            shards = {s.id: s for s in current.shards}
            shards[shard_id] = entry
            current.shards = [shards[k] for k in sorted(shards)]
            current.updated_at = utc_now()
            self.storage.write_atomic(rel, current.to_json().encode())
            self.meta = current
        return entry


def caption_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Caption rows (dicts) to Arrow with the contract's schema; absent columns become nulls."""
    return pa.Table.from_pylist([{name: r.get(name) for name in CAPTION_COLUMNS.names} for r in rows],
                                schema=CAPTION_COLUMNS)


def read_version_shard(storage: Storage, version: str, shard_id: str) -> pa.Table:
    with storage.open(f"{version_dir(version)}/{shard_id}.parquet") as f:
        return pq.read_table(f)


class CaptionSet:
    """The resolved view of a caption version (its overlay chain applied)."""

    def __init__(self, storage: Storage, version: str):
        self.storage = storage
        self.chain: list[CaptionVersion] = []  # newest first
        seen = set()
        name: str | None = version
        while name is not None:
            if name in seen:
                raise ContractError(f"caption version {version!r}: parent chain loops at {name!r}")
            seen.add(name)
            meta = CaptionVersion.load(storage, name)
            self.chain.append(meta)
            name = meta.parent

    @property
    def version(self) -> str:
        return self.chain[0].version

    def shard_ids(self) -> list[str]:
        """Shards for which any version in the chain has rows."""
        return sorted({s for meta in self.chain for s in meta.shard_ids})

    def shard(self, shard_id: str) -> pa.Table:
        """Resolved caption rows of one image shard (empty table if none)."""
        parts = []
        for rank, meta in enumerate(self.chain):
            if meta.shard(shard_id) is None:
                continue
            t = read_version_shard(self.storage, meta.version, shard_id)
            t = t.append_column("_rank", pa.array([rank] * t.num_rows, pa.int32()))
            t = t.append_column("_version", pa.array([meta.version] * t.num_rows, pa.string()))
            parts.append(t)
        if not parts:
            return CAPTION_COLUMNS.empty_table().append_column("version", pa.array([], pa.string()))
        if len(parts) == 1:
            table = parts[0]
        else:
            table = pa.concat_tables(parts, promote_options="default")
            # failed rows sort after ok rows, then newest version first; keep the first per key
            failed = pc.not_equal(table.column("status"), CAPTION_STATUS_OK).cast(pa.int32())
            table = table.append_column("_failed", failed)
            table = table.sort_by([("key", "ascending"), ("_failed", "ascending"), ("_rank", "ascending")])
            keys = table.column("key").to_pylist()
            first = [i for i, k in enumerate(keys) if i == 0 or k != keys[i - 1]]
            table = table.take(pa.array(first)).drop_columns(["_failed"])
        table = table.drop_columns(["_rank"])
        return table.rename_columns(["version" if c == "_version" else c for c in table.column_names])
