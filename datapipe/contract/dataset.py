"""Read a dataset root: the manifest's committed shards, their samples, sidecars, rejects, captions."""

from __future__ import annotations

from typing import Iterator

import pyarrow as pa

from .captions import CaptionSet, list_versions
from .manifest import MANIFEST, Manifest, ShardEntry
from .schema import ContractError
from .shards import Sample, iter_shard, read_rejects, read_sidecar
from .storage import Storage


class Dataset:
    """A read-only view of a dataset root, as of the last `refresh()`.

    Only shards named by the manifest exist for a reader; files of uncommitted or killed writers
    are invisible. Call `refresh()` to pick up shards committed since.
    """

    def __init__(self, root: str | Storage, require_manifest: bool = True):
        self.storage = root if isinstance(root, Storage) else Storage(root)
        if require_manifest and not self.storage.exists(MANIFEST):
            raise ContractError(
                f"{self.storage.path(MANIFEST)} does not exist: {self.storage.uri} is not a "
                "deepfusion dataset (yet); run a curate job to create it"
            )
        self.manifest = Manifest.load(self.storage)

    def refresh(self) -> "Dataset":
        self.manifest = Manifest.load(self.storage)
        return self

    @property
    def shards(self) -> list[ShardEntry]:
        return list(self.manifest.shards)

    def shard(self, shard_id: str) -> ShardEntry:
        entry = self.manifest.shard(shard_id)
        if entry is None:
            raise ContractError(f"shard {shard_id} is not committed in {self.storage.uri}")
        return entry

    def samples(self, shard_id: str) -> Iterator[Sample]:
        return iter_shard(self.storage, self.shard(shard_id))

    def sidecar(self, shard_id: str, columns: list[str] | None = None) -> pa.Table:
        return read_sidecar(self.storage, self.shard(shard_id), columns)

    def rejects(self, shard_id: str) -> pa.Table:
        return read_rejects(self.storage, self.shard(shard_id))

    def caption_versions(self) -> list[str]:
        return list_versions(self.storage)

    def captions(self, version: str) -> CaptionSet:
        return CaptionSet(self.storage, version)
