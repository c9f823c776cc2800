"""The curation job: URL lists -> committed WebDataset/Parquet shards with rejects, on Ray.

    input shards (work/inputs/<id>.parquet) --Ray Data--> download (img2dataset) -> decode -> [CLIP]
                                                      --> driver: dedup -> shards, in input order

One streaming Ray Data execution covers every pending shard, so downloading one shard overlaps
filtering the previous ones. Shards already in the manifest are skipped: a job killed at any point
and started again with the same command finishes the rest, and a finished job re-run does nothing.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import shutil
import time
from importlib import metadata
from pathlib import Path

from tqdm import tqdm

from datapipe.contract import Dataset, Manifest, ShardEntry, Storage, utc_now
from datapipe.contract.runtime import init_ray as join_or_start_ray
from datapipe.contract.shards import read_rejects

from .assemble import ShardAssembler
from .config import CurateConfig
from .dedup import DedupIndex
from .inputs import input_files, iter_shards

log = logging.getLogger(__name__)

PACKAGES = ("deepfusion", "img2dataset", "ray", "open_clip_torch", "pillow", "imagehash", "pyarrow")


class PlanMismatch(ValueError):
    pass


def _versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def init_ray(cfg: CurateConfig) -> None:
    from .download import worker_env

    join_or_start_ray(cfg.ray.address, cfg.ray.num_cpus, env_vars=worker_env(cfg.decode))


def _work_dir(cfg: CurateConfig, storage: Storage) -> Path:
    if cfg.work_dir:
        return Path(cfg.work_dir)
    if "://" in storage.uri and not storage.uri.startswith("file://"):
        raise ValueError("output is remote: set work_dir to a local folder for img2dataset's staging")
    return Path(storage.path("_work"))


def process_shards(cfg: CurateConfig, work: Path, shard_ids: list[str], assembler: ShardAssembler) -> None:
    """The Ray Data pipeline over the pending shards; rows reach the assembler in input order."""
    import ray.data

    from .download import DownloadStage
    from .filters.decode import DecodeStage

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # dedup keeps the first occurrence in input order
    ctx.enable_progress_bars = False
    clip_size = None
    if cfg.clip.enabled:
        from .filters.clip import clip_image_size

        clip_size = clip_image_size(cfg.clip)
    ds = ray.data.from_items([{"shard": sid} for sid in shard_ids], override_num_blocks=len(shard_ids))
    # One task per shard: download, then decode each block of rows as it comes. The two are fused
    # by hand: left to Ray Data, two map_batches fuse with the larger batch size (decode's rows)
    # as the number of *shard ids* per task, which ran every shard in one sequential task.
    decode = DecodeStage(cfg.decode, clip_size, resize=cfg.download.resize_mode == "keep")
    ds = ds.map_batches(DownloadStage(str(work), cfg.download, cfg.decode, cfg.shard_size, then=decode),
                        batch_size=1, num_cpus=cfg.download.task_cpus)
    if cfg.clip.enabled:
        from .filters.clip import ClipStage

        gpus = {"num_gpus": cfg.clip.num_gpus} if cfg.clip.num_gpus else {}
        ds = ds.map_batches(ClipStage, fn_constructor_kwargs={"cfg": cfg.clip}, batch_size=cfg.clip.batch_size,
                            batch_format="pyarrow", concurrency=cfg.clip.concurrency, num_cpus=cfg.clip.num_cpus,
                            **gpus)
    try:
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            for row in batch.to_pylist():
                assembler.add(row)
        assembler.close()
    except BaseException:
        assembler.abort()
        raise


def _write_inputs(cfg: CurateConfig, work: Path, committed: set[str]) -> dict[str, int]:
    """Stream the shard plan to work/inputs/<id>.parquet for every uncommitted shard; id -> rows."""
    import pyarrow.parquet as pq

    folder = work / "inputs"
    folder.mkdir(parents=True, exist_ok=True)
    pending = {}
    for shard in iter_shards(cfg.input, cfg.shard_size):
        if shard.id in committed:
            continue
        target = folder / f"{shard.id}.parquet"
        pq.write_table(shard.rows, str(target) + ".tmp")
        os.replace(str(target) + ".tmp", target)
        pending[shard.id] = shard.rows.num_rows
    return pending


def curate(cfg: CurateConfig) -> dict:
    if not cfg.output:
        raise ValueError("output is empty: name the dataset root to write (output=/path/to/dataset)")
    t0 = time.time()
    storage = Storage(cfg.output)
    for folder in ("shards", "rejects"):
        storage.remove_stale_temporaries(folder)
    manifest = Manifest.load(storage)
    plan = cfg.plan_hash()
    previous = manifest.lineage.get("curate", {}).get("plan_hash")
    if manifest.shards and previous and previous != plan:
        raise PlanMismatch(
            f"{storage.uri} was curated from other input files or another shard_size (plan {previous}, "
            f"now {plan}); resuming would put rows under different keys. Use a new output root."
        )
    files = input_files(cfg.input)
    lineage = {"curate": {"plan_hash": plan, "inputs": files, "config": cfg.to_dict(), "versions": _versions(),
                          "started_at": utc_now()}}
    committed = set(manifest.shard_ids)
    dataset = Dataset(storage, require_manifest=False)
    dedup = DedupIndex.from_dataset(cfg.dedup, dataset)
    work = _work_dir(cfg, storage)

    pending = _write_inputs(cfg, work, committed)
    log.info("%d shard(s) to curate, %d already committed", len(pending), len(committed))
    bar = tqdm(desc="curate", unit="row", total=sum(pending.values()), disable=not cfg.progress, dynamic_ncols=True)
    new_entries: list[ShardEntry] = []

    def on_commit(entry: ShardEntry) -> None:
        new_entries.append(entry)
        bar.update(entry.samples + entry.rejects)
        done = sum(e.samples + e.rejects for e in new_entries)
        bar.set_postfix(shards=len(new_entries), samples=sum(e.samples for e in new_entries),
                        rate=f"{done / max(time.time() - t0, 1e-9):.0f}/s")
        log.debug("committed shard %s: %d samples, %d rejects", entry.id, entry.samples, entry.rejects)

    assembler = ShardAssembler(storage, dedup, pending, lineage, on_commit)
    if pending:
        init_ray(cfg)
        process_shards(cfg, work, list(pending), assembler)
    bar.close()
    if not cfg.keep_work and work.exists():
        shutil.rmtree(work, ignore_errors=True)
    summary = _summary(storage, new_entries, assembler.counts, time.time() - t0)
    _write_run_log(storage, summary)
    return summary


def _summary(storage: Storage, new: list[ShardEntry], counts: collections.Counter, seconds: float) -> dict:
    manifest = Manifest.load(storage)
    rejects: collections.Counter = collections.Counter()
    for entry in manifest.shards:  # totals over the whole dataset, not only this run
        table = read_rejects(storage, entry)
        for stage, reason in zip(table.column("stage").to_pylist(), table.column("reason").to_pylist()):
            rejects[f"{stage}/{reason}"] += 1
    inputs = sum(e.samples + e.rejects for e in manifest.shards)
    this_run = sum(e.samples + e.rejects for e in new)
    return {
        "output": storage.uri,
        "finished_at": utc_now(),
        "seconds": round(seconds, 1),
        "this_run": {"shards": len(new), "inputs": this_run, "samples": sum(e.samples for e in new),
                     "rejects": {k: v for k, v in sorted(counts.items()) if k != "sample"},
                     "inputs_per_s": round(this_run / seconds, 1) if seconds > 0 else None},
        "dataset": {"shards": len(manifest.shards), "inputs": inputs, "samples": manifest.samples,
                    "rejects": manifest.rejects, "rejects_by_reason": dict(sorted(rejects.items()))},
    }


def _write_run_log(storage: Storage, summary: dict) -> None:
    name = "logs/curate-" + summary["finished_at"].replace(":", "").replace("+0000", "Z") + ".json"
    storage.write_atomic(name, (json.dumps(summary, indent=1) + "\n").encode())


def format_summary(summary: dict) -> str:
    run, ds = summary["this_run"], summary["dataset"]
    lines = [
        f"curated {summary['output']} in {summary['seconds']} s",
        f"  this run: {run['shards']} shard(s), {run['inputs']} input rows -> {run['samples']} samples "
        f"({run['inputs_per_s']} rows/s)",
        f"  dataset:  {ds['shards']} shard(s), {ds['inputs']} input rows = {ds['samples']} samples + {ds['rejects']} rejects",
    ]
    for reason, n in ds["rejects_by_reason"].items():
        lines.append(f"    reject {reason:32s} {n}")
    return "\n".join(lines)
