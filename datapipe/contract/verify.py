"""`deepfusion dataset verify ROOT`: check that a dataset root keeps the contract.

Errors break the contract (a reader would fail or see wrong data); warnings are harmless leftovers
(temporaries of a killed writer, files no manifest names) that the next run of a job cleans up.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections import Counter
from dataclasses import dataclass, field

from common.messages import safe_message

from .captions import CaptionVersion, list_versions, read_version_shard
from .manifest import MANIFEST, Manifest, ShardEntry
from .schema import CAPTION_COLUMNS, REJECT_STAGES, ContractError, missing_columns
from .shards import iter_shard, read_rejects, read_sidecar
from .storage import TMP_MARKER, Storage


@dataclass
class Problem:
    severity: str  # error | warning
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity.upper():7} {self.where}: {self.message}"


@dataclass
class VerifyReport:
    root: str
    shards: int = 0
    samples: int = 0
    rejects: int = 0
    caption_coverage: dict[str, dict] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def error(self, where: str, message: str) -> None:
        self.problems.append(Problem("error", where, message))

    def warn(self, where: str, message: str) -> None:
        self.problems.append(Problem("warning", where, message))


def _sha256_of(storage: Storage, rel: str) -> str:
    h = hashlib.sha256()
    with storage.open(rel) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_file(report: VerifyReport, storage: Storage, rel: str, sha256: str, size: int | None = None) -> bool:
    if not storage.exists(rel):
        report.error(rel, "listed in the manifest but missing")
        return False
    if size is not None and storage.size(rel) != size:
        report.error(rel, f"size is {storage.size(rel)} bytes, the manifest says {size}")
        return False
    if sha256 and _sha256_of(storage, rel) != sha256:
        report.error(rel, "sha256 does not match the manifest (file changed or corrupt)")
        return False
    return True


def _walk_tar(report: VerifyReport, storage: Storage, entry: ShardEntry, expected_sha: dict[str, str]) -> list[str] | None:
    """The tar's sample keys in order; names samples whose image bytes differ from the sidecar's
    sha256 (bit rot, a file edited in place) and where an unreadable tar breaks off."""
    where = f"shard {entry.id}"
    keys: list[str] = []
    damaged: list[str] = []
    try:
        for sample in iter_shard(storage, entry):
            keys.append(sample.key)
            want = expected_sha.get(sample.key)
            if want and hashlib.sha256(sample.image).hexdigest() != want:
                damaged.append(sample.key)
    except Exception as e:  # noqa: BLE001 - a corrupt tar raises tarfile/webdataset/contract errors
        after = f" after sample {keys[-1]}" if keys else " at its first member"
        report.error(where, f"tar unreadable{after} ({len(keys)} samples read): {safe_message(e)}")
        keys = None
    if damaged:
        report.error(where, f"{len(damaged)} sample(s) whose image bytes no longer match the sidecar's sha256 "
                     f"(damaged on storage): {damaged[:10]}")
    return keys


def _verify_shard(report: VerifyReport, storage: Storage, entry: ShardEntry, all_keys: Counter) -> set[str]:
    where = f"shard {entry.id}"
    keys: set[str] = set()
    tar_ok = _check_file(report, storage, entry.tar, entry.sha256, entry.bytes)
    side_ok = _check_file(report, storage, entry.sidecar, entry.sidecar_sha256)
    table = None
    if side_ok:
        try:
            table = read_sidecar(storage, entry)
        except (ContractError, Exception) as e:
            report.error(entry.sidecar, f"unreadable: {safe_message(e)}")
    side_keys = table.column("key").to_pylist() if table is not None else None
    if storage.exists(entry.tar):  # walked even when its sha256 is off: to name what is damaged
        expected = dict(zip(side_keys, table.column("sha256").to_pylist())) if table is not None else {}
        tar_keys = _walk_tar(report, storage, entry, expected)
        if tar_keys is not None:
            if len(tar_keys) != entry.samples:
                lost = sorted(set(side_keys or []) - set(tar_keys))
                report.error(where, f"tar has {len(tar_keys)} samples, the manifest says {entry.samples}"
                             + (f"; missing from the tar: {lost[:10]}" if lost else ""))
            dupes = [k for k, n in Counter(tar_keys).items() if n > 1]
            if dupes:
                report.error(where, f"tar repeats key(s) {dupes[:5]}")
            keys = set(tar_keys)
    if side_keys is not None:
        if len(side_keys) != entry.samples:
            report.error(entry.sidecar, f"{len(side_keys)} rows, the manifest says {entry.samples}")
        extra = sorted(keys - set(side_keys))
        if tar_ok and keys and extra:
            report.error(where, f"tar and sidecar keys differ (only in tar: {extra[:5]}, only in sidecar: "
                         f"{sorted(set(side_keys) - keys)[:5]})")
        keys = set(side_keys)  # what the shard holds by its metadata: captions are checked against it
    if entry.rejects or storage.exists(entry.rejects_file):
        if _check_file(report, storage, entry.rejects_file, entry.rejects_sha256):
            rejects = read_rejects(storage, entry)
            if rejects.num_rows != entry.rejects:
                report.error(entry.rejects_file, f"{rejects.num_rows} rows, the manifest says {entry.rejects}")
            bad = sorted(set(rejects.column("stage").to_pylist()) - set(REJECT_STAGES))
            if bad:
                report.error(entry.rejects_file, f"unknown reject stage(s) {bad}")
            all_keys.update(k for k in rejects.column("key").to_pylist() if k)
    if entry.inputs is not None and entry.samples + entry.rejects != entry.inputs:
        report.error(where, f"{entry.samples} samples + {entry.rejects} rejects != {entry.inputs} inputs")
    all_keys.update(keys)
    return keys


def _verify_captions(report: VerifyReport, storage: Storage, manifest: Manifest, keys_by_shard: dict) -> None:
    for version in list_versions(storage):
        where = f"captions/{version}"
        try:
            meta = CaptionVersion.load(storage, version)
        except ContractError as e:
            report.error(where, str(e))
            continue
        if meta.parent is not None and meta.parent not in list_versions(storage):
            report.error(where, f"parent version {meta.parent!r} does not exist")
        rows = 0
        for cs in meta.shards:
            rel = f"{where}/{cs.id}.parquet"
            if cs.id not in keys_by_shard:
                report.error(rel, f"captions a shard ({cs.id}) that the dataset manifest does not list")
                continue
            if not _check_file(report, storage, rel, cs.sha256):
                continue
            table = read_version_shard(storage, version, cs.id)
            missing = missing_columns(table.schema, CAPTION_COLUMNS)
            if missing:
                report.error(rel, f"missing column(s) {missing}")
                continue
            ckeys = table.column("key").to_pylist()
            rows += len(ckeys)
            if len(ckeys) != cs.rows:
                report.error(rel, f"{len(ckeys)} rows, the version manifest says {cs.rows}")
            if len(set(ckeys)) != len(ckeys):
                report.error(rel, "repeats keys")
            unknown = set(ckeys) - keys_by_shard[cs.id]
            if unknown:
                report.error(rel, f"{len(unknown)} key(s) not in image shard {cs.id}, e.g. {sorted(unknown)[:3]}")
            if meta.parent is None and set(ckeys) != keys_by_shard[cs.id]:
                report.warn(rel, f"covers {len(set(ckeys) & keys_by_shard[cs.id])} of {len(keys_by_shard[cs.id])} samples")
        covered = set(meta.shard_ids) & set(manifest.shard_ids)
        report.caption_coverage[version] = {
            "parent": meta.parent,
            "shards_done": len(covered),
            "shards_total": len(manifest.shards),
            "rows": rows,
            "missing_shards": sorted(set(manifest.shard_ids) - covered)[:20],
        }


def _stray_files(report: VerifyReport, storage: Storage, manifest: Manifest) -> None:
    listed = {posixpath.basename(p) for s in manifest.shards for p in (s.tar, s.sidecar, s.rejects_file)}
    for folder in ("shards", "rejects"):
        for name in storage.listdir(folder):
            if name.startswith(TMP_MARKER):
                report.warn(f"{folder}/{name}", "temporary file of an interrupted writer (removed by the next run)")
            elif name not in listed and not name.endswith(".lock"):
                report.warn(f"{folder}/{name}", "not named by the manifest (uncommitted; invisible to readers)")


def verify_dataset(root: str | Storage) -> VerifyReport:
    storage = root if isinstance(root, Storage) else Storage(root)
    report = VerifyReport(root=storage.uri)
    if not storage.exists(MANIFEST):
        report.error(MANIFEST, f"no manifest at {storage.path(MANIFEST)}: not a deepfusion dataset")
        return report
    try:
        manifest = Manifest.load(storage)
    except ContractError as e:
        report.error(MANIFEST, str(e))
        return report
    ids = manifest.shard_ids
    if len(set(ids)) != len(ids):
        report.error(MANIFEST, "lists a shard id twice")
    all_keys: Counter = Counter()
    keys_by_shard = {}
    for entry in manifest.shards:
        keys_by_shard[entry.id] = _verify_shard(report, storage, entry, all_keys)
    dupes = [k for k, n in all_keys.items() if n > 1]
    if dupes:
        report.error("dataset", f"{len(dupes)} key(s) appear in more than one place, e.g. {sorted(dupes)[:5]}")
    _verify_captions(report, storage, manifest, keys_by_shard)
    _stray_files(report, storage, manifest)
    report.shards, report.samples, report.rejects = len(manifest.shards), manifest.samples, manifest.rejects
    return report
