"""`<root>/manifest.json`: the list of committed shards. Readers trust it and nothing else.

A shard is committed by adding its entry here, after its tar, sidecar and rejects files are in
place under their final names; the manifest itself is replaced atomically. So a reader that loads
the manifest sees only complete shards, even while writers are still running.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from .schema import SCHEMA_VERSION, ContractError, check_schema_version
from .storage import Storage

MANIFEST = "manifest.json"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ShardEntry:
    id: str
    samples: int  # images in the tar == rows in shards/<id>.parquet
    bytes: int  # size of shards/<id>.tar
    sha256: str  # of shards/<id>.tar
    rejects: int = 0  # rows in rejects/<id>.parquet
    inputs: int | None = None  # input rows this shard accounts for (samples + rejects), if known
    sidecar_sha256: str = ""
    rejects_sha256: str = ""
    committed_at: str = ""

    @property
    def tar(self) -> str:
        return f"shards/{self.id}.tar"

    @property
    def sidecar(self) -> str:
        return f"shards/{self.id}.parquet"

    @property
    def rejects_file(self) -> str:
        return f"rejects/{self.id}.parquet"


@dataclass
class Manifest:
    shards: list[ShardEntry] = field(default_factory=list)
    lineage: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    created_at: str = field(default_factory=utc_now)
    updated_at: str = field(default_factory=utc_now)

    # -- reading -------------------------------------------------------------------------
    @classmethod
    def load(cls, storage: Storage) -> "Manifest":
        """The committed manifest, or an empty one if the root has none yet."""
        if not storage.exists(MANIFEST):
            return cls()
        path = storage.path(MANIFEST)
        try:
            raw = json.loads(storage.read_bytes(MANIFEST))
        except json.JSONDecodeError as e:
            raise ContractError(f"{path}: not valid JSON ({e})") from e
        check_schema_version("the dataset manifest", raw.get("schema_version"), path)
        try:
            shards = [ShardEntry(**s) for s in raw.get("shards", [])]
        except TypeError as e:
            raise ContractError(f"{path}: malformed shard entry ({e})") from e
        return cls(
            shards=shards,
            lineage=raw.get("lineage", {}),
            schema_version=raw["schema_version"],
            created_at=raw.get("created_at", ""),
            updated_at=raw.get("updated_at", ""),
        )

    def shard(self, shard_id: str) -> ShardEntry | None:
        return next((s for s in self.shards if s.id == shard_id), None)

    @property
    def shard_ids(self) -> list[str]:
        return [s.id for s in self.shards]

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def rejects(self) -> int:
        return sum(s.rejects for s in self.shards)

    def to_json(self) -> str:
        body = {
            "schema_version": self.schema_version,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "totals": {"shards": len(self.shards), "samples": self.samples, "rejects": self.rejects},
            "shards": [asdict(s) for s in self.shards],
            "lineage": self.lineage,
        }
        return json.dumps(body, indent=1, sort_keys=False) + "\n"


def commit_shards(storage: Storage, entries: list[ShardEntry], lineage: dict | None = None) -> Manifest:
    """Add (or replace, by id) shard entries and merge `lineage` keys; atomic and locked.

    The last step of every shard commit. Replacing an entry with the same id is what a rerun of
    the same input does; the key scheme guarantees the rows are the same ones.
    """
    with storage.lock(MANIFEST):
        manifest = Manifest.load(storage)
        by_id = {s.id: s for s in manifest.shards}
        for entry in entries:
            by_id[entry.id] = entry
        manifest.shards = [by_id[k] for k in sorted(by_id)]
        if lineage:
            manifest.lineage.update(lineage)
        manifest.updated_at = utc_now()
        storage.write_atomic(MANIFEST, manifest.to_json().encode())
        return manifest
