"""A caption run: committed image shards in, one committed caption shard per image shard out.

    caption(cfg) -> summary

Plan: the image shards the dataset manifest has committed, minus those the version has already
committed (a killed run resumes at shard granularity; finished shards are never redone), limited
to `shards` and, for a regeneration run, to the shards and keys its selection picks from the
parent. With `follow.enabled` the run keeps polling the manifest and captions shards a running
curation job commits, until nothing new arrives for `follow.idle_exit_s`.

Backends: `vllm` streams the pending shards through a Ray Data pipeline (read -> engine actors);
`openai` sends requests from this process to the endpoint; `alt` / `reference` copy captions
from the sidecar / the scenes ground truth. Every path ends in `CaptionWriter.commit_shard`, which
writes the shard's parquet atomically and then the version manifest.
"""

from __future__ import annotations

import collections
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from datapipe.contract import (
    CAPTION_STATUS_OK,
    CaptionVersion,
    CaptionWriter,
    ContractError,
    Dataset,
    Storage,
    caption_table,
    utc_now,
)
from datapipe.contract.captions import version_dir
from common.ray_runtime import init_ray

from .config import CaptionConfig
from .prompts import PromptSet, load_prompt_set
from .select import select_rows

log = logging.getLogger(__name__)


def model_name(cfg: CaptionConfig) -> str:
    """What the version records as its model: a local folder's name (paths differ per machine)."""
    if cfg.backend == "vllm":
        return Path(cfg.model.rstrip("/")).name
    if cfg.backend == "openai":
        return cfg.model
    return {"alt": "source-alt-text", "reference": "scene-graph"}[cfg.backend]


def version_meta(cfg: CaptionConfig, prompts: PromptSet | None) -> CaptionVersion:
    return CaptionVersion(
        cfg.version, backend=cfg.backend, model=model_name(cfg),
        prompt_set=prompts.as_manifest() if prompts else {}, params=cfg.identity_params(), parent=cfg.parent,
        selection=asdict(cfg.select) if cfg.parent else None,
    )


class RunStats:
    def __init__(self, progress: bool):
        self.t0 = time.time()
        self.shards: list[str] = []
        self.rows = 0
        self.ok = 0
        self.failed: collections.Counter = collections.Counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.bar = tqdm(desc="caption", unit="img", disable=not progress, dynamic_ncols=True)

    def add(self, sid: str, table: pa.Table) -> None:
        self.shards.append(sid)
        self.rows += table.num_rows
        for row in table.select(["status", "error", "prompt_tokens", "completion_tokens"]).to_pylist():
            if row["status"] == CAPTION_STATUS_OK:
                self.ok += 1
            else:
                self.failed[(row["error"] or "unknown").split(":")[0]] += 1
            self.prompt_tokens += row["prompt_tokens"] or 0
            self.completion_tokens += row["completion_tokens"] or 0
        self.bar.update(table.num_rows)
        self.bar.set_postfix(shards=len(self.shards), failed=sum(self.failed.values()),
                             rate=f"{self.rows / max(time.time() - self.t0, 1e-9):.2f}/s")


def caption(cfg: CaptionConfig) -> dict:
    if not cfg.root or not cfg.version:
        raise ValueError("root and version are required (root=/path/to/dataset version=v1)")
    if cfg.follow.enabled and cfg.parent:
        raise ValueError("a regeneration run (parent) selects from a fixed parent: it cannot follow a growing dataset")
    storage = Storage(cfg.root)
    storage.remove_stale_temporaries(version_dir(cfg.version))
    dataset = Dataset(storage)
    prompts = load_prompt_set(cfg.prompt_set) if cfg.backend in ("vllm", "openai") else None
    selection = select_rows(storage, cfg.parent, cfg.select) if cfg.parent else None
    writer = CaptionWriter(storage, version_meta(cfg, prompts))
    stats = RunStats(cfg.progress)
    runner = _runner(cfg, prompts)

    def commit(sid: str, rows: list[dict] | pa.Table) -> None:
        table = rows if isinstance(rows, pa.Table) else caption_table(rows)
        table = table.sort_by("key")
        writer.commit_shard(sid, table)
        stats.add(sid, table)

    idle_since = time.time()
    while True:
        pending = plan(dataset.refresh(), writer.done, cfg.shards, selection)
        if pending:
            log.info("%d shard(s) to caption into %s", len(pending), cfg.version)
            runner(dataset, pending, commit)
            idle_since = time.time()
            if cfg.follow.enabled:
                continue
        if not cfg.follow.enabled or time.time() - idle_since >= cfg.follow.idle_exit_s:
            break
        time.sleep(cfg.follow.poll_s)
    stats.bar.close()
    summary = _summary(cfg, storage, stats, selection)
    storage.write_atomic(f"logs/caption-{cfg.version}-{summary['finished_at'].replace(':', '')}.json",
                         (json.dumps(summary, indent=1) + "\n").encode())
    return summary


def plan(dataset: Dataset, done: set[str], only: list[str] | None,
         selection: dict[str, list[str]] | None) -> dict[str, list[str] | None]:
    """Pending image shard id -> the keys to caption (None: every sample of the shard)."""
    committed = dataset.manifest.shard_ids
    if only is not None:
        unknown = sorted(set(only) - set(committed))
        if unknown:
            raise ContractError(f"shards {unknown} are not committed in {dataset.storage.uri}")
        committed = [s for s in committed if s in set(only)]
    if selection is not None:
        return {s: selection[s] for s in committed if s in selection and s not in done}
    return {s: None for s in committed if s not in done}


# -- runners: (dataset, pending, commit) -> None --------------------------------------------------
def _runner(cfg: CaptionConfig, prompts: PromptSet | None):
    from .backends.source import ReferenceCaptions, alt_rows

    if cfg.backend == "alt":
        return _source_runner(alt_rows)
    if cfg.backend == "reference":
        return _source_runner(ReferenceCaptions(cfg.corpus).rows)
    if cfg.backend == "openai":
        return lambda dataset, pending, commit: _run_openai(cfg, prompts, dataset, pending, commit)
    return lambda dataset, pending, commit: _run_ray_vllm(cfg, dataset, pending, commit)


def _source_runner(rows_of):
    def run(dataset: Dataset, pending: dict, commit) -> None:
        for sid, keys in pending.items():
            sidecar = dataset.sidecar(sid)
            if keys is not None:
                wanted = set(keys)
                sidecar = sidecar.filter(pa.array([k in wanted for k in sidecar.column("key").to_pylist()]))
            commit(sid, rows_of(sidecar))

    return run


def _run_openai(cfg: CaptionConfig, prompts: PromptSet, dataset: Dataset, pending: dict, commit) -> None:
    from .backends.openai_server import OpenAIGenerate
    from .samples import caption_samples

    generate = OpenAIGenerate(cfg.server, cfg.model, prompts, cfg.strategy, cfg.sampling)
    name = model_name(cfg)
    chunk = max(1, cfg.server.concurrency * 2)  # images per round: keeps `concurrency` requests in flight
    for sid, keys in pending.items():
        wanted = set(keys) if keys is not None else None
        samples = [s for s in dataset.samples(sid) if wanted is None or s.key in wanted]
        rows: list[dict] = []
        for start in range(0, len(samples), chunk):
            part = samples[start : start + chunk]
            rows += caption_samples(generate, [s.key for s in part], [s.image for s in part], cfg, prompts, name)
        commit(sid, rows)


def _run_ray_vllm(cfg: CaptionConfig, dataset: Dataset, pending: dict, commit) -> None:
    import ray.data

    from .ray_stage import CaptionActor, ReadShard

    expected = {sid: len(keys) if keys is not None else dataset.shard(sid).samples for sid, keys in pending.items()}
    for sid in [s for s, n in expected.items() if n == 0]:  # nothing to caption: commit the empty shard
        commit(sid, [])
        del expected[sid]
    if not expected:
        return
    init_ray(cfg.ray.address, cfg.ray.num_cpus)
    e = cfg.engine
    ray.data.DataContext.get_current().enable_progress_bars = False  # the run's own bar counts committed rows
    ds = ray.data.from_items([{"shard": sid} for sid in expected], override_num_blocks=len(expected))
    # One reader per engine: reading a shard's bytes takes well under a second next to the minutes
    # an engine spends on it, and every concurrent read task is a Ray worker process to start
    # (seconds of CPU each, taken from the engine loading next to it on a small machine).
    ds = ds.flat_map(ReadShard(dataset.storage.uri, {s: pending[s] for s in expected}), num_cpus=0.25,
                     compute=ray.data.TaskPoolStrategy(size=e.actors))
    gpus = {"num_gpus": e.num_gpus} if e.num_gpus else {}
    ds = ds.map_batches(CaptionActor, fn_constructor_kwargs={"cfg": cfg, "model_name": model_name(cfg)},
                        batch_size=e.batch_size, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=e.actors),
                        num_cpus=e.num_cpus, **gpus)
    buffers: dict[str, list[pa.Table]] = collections.defaultdict(list)
    counts: collections.Counter = collections.Counter()
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        for sid in set(batch.column("shard").to_pylist()):
            part = batch.filter(pc.equal(batch.column("shard"), sid)).drop_columns(["shard"])
            buffers[sid].append(part)
            counts[sid] += part.num_rows
            if counts[sid] == expected[sid]:
                commit(sid, pa.concat_tables(buffers.pop(sid)))
    missing = {s: expected[s] - counts[s] for s in expected if counts[s] != expected[s]}
    if missing:
        raise RuntimeError(f"caption pipeline ended with shards incomplete (missing rows): {missing}")


def _summary(cfg: CaptionConfig, storage: Storage, stats: RunStats, selection: dict | None) -> dict:
    seconds = time.time() - stats.t0
    meta = CaptionVersion.load(storage, cfg.version)
    return {
        "root": storage.uri,
        "version": cfg.version,
        "backend": cfg.backend,
        "model": meta.model,
        "prompt_set": meta.prompt_set,
        "parent": cfg.parent,
        "selected": sum(len(k) for k in selection.values()) if selection is not None else None,
        "seconds": round(seconds, 2),
        "finished_at": utc_now(),
        "this_run": {
            "shards": len(stats.shards),
            "rows": stats.rows,
            "ok": stats.ok,
            "failed": dict(stats.failed),
            "captions_per_s": round(stats.rows / seconds, 3) if seconds > 0 else None,
            "prompt_tokens": stats.prompt_tokens,
            "completion_tokens": stats.completion_tokens,
        },
        "version_totals": {"shards": len(meta.shards), "rows": sum(s.rows for s in meta.shards),
                           "failed": sum(s.failed for s in meta.shards)},
    }


def format_summary(summary: dict) -> str:
    run, tot = summary["this_run"], summary["version_totals"]
    lines = [
        f"captioned {summary['root']} -> captions/{summary['version']} ({summary['backend']}, {summary['model']}) "
        f"in {summary['seconds']} s",
        f"  this run: {run['shards']} shard(s), {run['rows']} rows, {run['ok']} ok, "
        f"{sum(run['failed'].values())} failed, {run['captions_per_s']} captions/s",
    ]
    for reason, n in sorted(run["failed"].items(), key=lambda kv: -kv[1]):
        lines.append(f"    failed {reason}: {n}")
    if summary["selected"] is not None:
        lines.append(f"  regeneration of {summary['parent']}: {summary['selected']} row(s) selected")
    lines.append(f"  version total: {tot['shards']} shard(s), {tot['rows']} rows, {tot['failed']} failed")
    return "\n".join(lines)
