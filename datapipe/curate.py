"""The curation job: URL lists -> committed WebDataset/Parquet shards with rejects, on Ray.

    driver:  URL lists --plan--> input shards (key, url, caption, extra) --Ray tasks--> manifest commits
    task:    img2dataset download -> decode -> [CLIP actors] -> dedup (index actors) -> tar/sidecar/rejects

The driver carries metadata only. It streams the shard plan from the URL lists, hands each
shard's input rows to a Ray task (a bounded number in flight), and commits the entries the
tasks return to the manifest in input order. Each task downloads, decodes, scores, deduplicates
and writes its own shard to the dataset storage (temporary name + rename); images never pass
through the driver. Dedup is a set of Ray actors owning partitions of the hash space
(datapipe/dedup), with a gate that gives every shard the answer of one pass in input order.

A task that dies is retried (`task_retries`); a shard that keeps killing its worker is split in
halves, and halves again, until the rows that kill it are found and rejected (`worker_crash`, or
`internal_error` for an exception no stage caught): every dataset finishes. Shards already in
the manifest are skipped, so a job killed at any point and started again finishes the rest.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import pickle
import resource
import shutil
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from tqdm import tqdm

from datapipe.contract import Manifest, ShardEntry, Storage, commit_shards, utc_now
from common.ray_runtime import init_ray as join_or_start_ray
from datapipe.contract.shards import read_rejects

from .config import CurateConfig, DedupConfig
from .filters.phash import NEW_DATASET_METHOD
from .inputs import input_files, iter_shards
from .shard_task import ShardJob, ShardResult

log = logging.getLogger(__name__)

PACKAGES = ("deepfusion", "img2dataset", "ray", "open_clip_torch", "pillow", "imagehash", "pyarrow", "faiss-cpu")


class PlanMismatch(ValueError):
    pass


class ShardFailed(RuntimeError):
    """A shard could not be written even with its poison rows removed (storage, a dead index actor)."""


def _versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _models(cfg: CurateConfig) -> dict:
    """The scoring models this run uses, as the manifest records them (checked before any task runs)."""
    models = {}
    if cfg.nsfw.enabled:
        from .filters.nsfw import check_provider, model_identity

        check_provider(cfg.nsfw)
        models["nsfw"] = model_identity(cfg.nsfw)
    if cfg.clip.enabled:
        models["clip"] = {"model": cfg.clip.model, "weights": cfg.clip.weights,
                          **{f"{h}_head": getattr(cfg.clip, h).weights for h in ("aesthetic", "nsfw", "watermark")}}
    return models


def init_ray(cfg: CurateConfig) -> None:
    from .download import worker_env

    join_or_start_ray(cfg.ray.address, cfg.ray.num_cpus, env_vars=worker_env(cfg.decode))


def _work_dir(cfg: CurateConfig, storage: Storage) -> Path:
    if cfg.work_dir:
        return Path(cfg.work_dir)
    if "://" in storage.uri and not storage.uri.startswith("file://"):
        raise ValueError("output is remote: set work_dir to a local scratch folder (on every node) for "
                         "img2dataset's staging")
    return Path(storage.path("_work"))


# -- failure bookkeeping ---------------------------------------------------------------------------
def _failure(err: BaseException) -> tuple[str, bool]:
    """(what happened, is it a dead worker) for an exception from ray.get; fatal errors re-raise."""
    import ray.exceptions as rx

    if isinstance(err, rx.RayTaskError):
        cause = err.cause
        if isinstance(cause, (rx.RayActorError, ShardFailed)):
            raise err  # a dead dedup/CLIP actor or a write that cannot succeed: the run stops, a rerun resumes
        from common.messages import safe_message

        return f"an exception no stage caught ({safe_message(cause) if cause else 'unknown'})", False
    if isinstance(err, rx.OutOfMemoryError):
        return "the worker was killed for memory", True
    if isinstance(err, (rx.WorkerCrashedError, rx.NodeDiedError, rx.ObjectLostError, rx.LocalRayletDiedError)):
        return f"the worker died ({type(err).__name__})", True
    raise err


@dataclass
class Unit:
    """A piece of work in flight: a whole shard, a range of a split shard, or a split shard's write."""

    kind: str  # whole | part | write
    shard: "ShardPlan"
    lo: int = 0
    hi: int = 0
    attempts: int = 0
    data_ref: object = None  # part: its processed rows (stays in the object store)


@dataclass
class ShardPlan:
    id: str
    rows_ref: object  # the input rows, put once in the object store
    inputs: int
    split: bool = False
    open: set = field(default_factory=set)  # row ranges of a split shard not finished yet
    parts: dict = field(default_factory=dict)  # finished ranges -> their processed rows (object refs)
    poison: dict = field(default_factory=dict)  # row -> (reason, detail)


class Driver:
    def __init__(self, cfg: CurateConfig, storage: Storage, job: ShardJob, lineage: dict, on_commit,
                 start_service=None):
        import ray

        from .shard_task import part_task, shard_task, write_task

        self.cfg, self.storage, self.job, self.lineage, self.on_commit = cfg, storage, job, lineage, on_commit
        self.service = None  # the DedupService, once started
        self._start_service = start_service  # called when the driver first waits (curate's comment)
        opts = {"num_cpus": cfg.download.task_cpus, "max_retries": 0, "scheduling_strategy": "SPREAD"}
        self.remote_whole = ray.remote(**opts)(shard_task)
        self.remote_part = ray.remote(num_returns=2, **opts)(part_task)
        self.remote_write = ray.remote(**opts)(write_task)
        self.job_ref = ray.put(job)
        self.inflight: dict[object, Unit] = {}
        self.ready: dict[str, ShardResult] = {}
        self.order: collections.deque[str] = collections.deque()  # submitted shards awaiting commit, in order
        self.counts: collections.Counter = collections.Counter()
        self.committed: list[ShardEntry] = []
        self.nodes: collections.Counter = collections.Counter()
        self.bytes_received = 0
        self.crash_units = 0

    # -- submitting ---------------------------------------------------------------------------
    def _submit(self, unit: Unit) -> None:
        s = unit.shard
        if unit.kind == "whole":
            ref = self.remote_whole.remote(self.job_ref, s.id, s.rows_ref)
        elif unit.kind == "part":
            unit.data_ref, ref = self.remote_part.remote(self.job_ref, s.id, s.rows_ref, unit.lo, unit.hi)
        else:
            parts = [s.parts[r] for r in sorted(s.parts)]
            ref = self.remote_write.remote(self.job_ref, s.id, s.rows_ref, s.poison, *parts)
        unit.attempts += 1
        self.inflight[ref] = unit

    def add_shard(self, shard) -> None:
        import ray

        plan = ShardPlan(shard.id, ray.put(shard.rows), shard.rows.num_rows)
        self.order.append(shard.id)
        self._submit(Unit("whole", plan, 0, plan.inputs))

    # -- results --------------------------------------------------------------------------------
    def wait(self, timeout: float | None = None) -> None:
        import ray

        if not self.inflight:
            return
        if self._start_service is not None:
            self.service, self._start_service = self._start_service(), None
        if self.service is not None:
            self.service.wait_ready()  # the tasks submitted so far run meanwhile; a failed rebuild raises here
        done, _ = ray.wait(list(self.inflight), num_returns=1, timeout=timeout)
        for ref in done:
            self._handle(ref, self.inflight.pop(ref))
        self._commit_ready()

    def _handle(self, ref, unit: Unit) -> None:
        import ray

        s = unit.shard
        try:
            value = ray.get(ref)
        except Exception as err:  # noqa: BLE001 - classified below; fatal kinds re-raise
            what, crashed = _failure(err)
            self._failed(unit, what, crashed)
            return
        self.bytes_received += len(pickle.dumps(value))
        if unit.kind == "part":
            self._part_done(unit)
            return
        self.ready[s.id] = value
        self.nodes[value.node] += 1

    def _failed(self, unit: Unit, what: str, crashed: bool) -> None:
        s, cfg = unit.shard, self.cfg
        self.crash_units += 1
        log.warning("shard %s (%s, rows %d-%d): %s (attempt %d)", s.id, unit.kind, unit.lo, unit.hi, what,
                    unit.attempts)
        if unit.kind == "write":
            if unit.attempts > cfg.task_retries:
                raise ShardFailed(f"shard {s.id} could not be written after {unit.attempts} attempts: {what}")
            self._submit(unit)
            return
        if crashed and unit.attempts <= cfg.task_retries:
            self._submit(unit)  # a dead worker may be bad luck (memory pressure): the same work again
            return
        if not s.split:
            s.split = True
            log.warning("shard %s: splitting it to find the row(s) that break its task", s.id)
        s.open.discard((unit.lo, unit.hi))
        if unit.hi - unit.lo == 1:  # found: this row kills (or breaks) whatever processes it
            reason = "worker_crash" if crashed else "internal_error"
            s.poison[unit.lo] = (reason, f"{what}; {unit.attempts} attempt(s) on this row alone")
        else:
            mid = (unit.lo + unit.hi) // 2
            for lo, hi in ((unit.lo, mid), (mid, unit.hi)):
                s.open.add((lo, hi))
                self._submit(Unit("part", s, lo, hi))
        self._maybe_write(s)

    def _part_done(self, unit: Unit) -> None:
        s = unit.shard
        s.parts[(unit.lo, unit.hi)] = unit.data_ref
        s.open.discard((unit.lo, unit.hi))
        self._maybe_write(s)

    def _maybe_write(self, s: ShardPlan) -> None:
        if s.split and not s.open:
            self._submit(Unit("write", s))

    def _commit_ready(self) -> None:
        entries = []
        while self.order and self.order[0] in self.ready:
            result = self.ready.pop(self.order.popleft())
            entries.append(result.entry)
            for k, v in result.counts.items():
                self.counts[k] += v
        if entries:
            commit_shards(self.storage, entries, self.lineage)
            for e in entries:
                self.committed.append(e)
                if self.service is not None:
                    self.service.committed(int(e.id))  # the partitions drop the shard's retry memo
                self.on_commit(e)

    @property
    def busy(self) -> int:
        return len(self.inflight)


def curate(cfg: CurateConfig) -> dict:
    if not cfg.output:
        raise ValueError("output is empty: name the dataset root to write (output=/path/to/dataset)")
    t0 = time.time()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
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
    cfg = resolve_phash_method(cfg, manifest, storage.uri)
    files = input_files(cfg.input)
    lineage = {"curate": {"plan_hash": plan, "inputs": files, "config": cfg.to_dict(), "versions": _versions(),
                          "started_at": utc_now(), "models": _models(cfg)}}
    committed = set(manifest.shard_ids)
    work = _work_dir(cfg, storage)
    bar = tqdm(desc="curate", unit="row", disable=not cfg.progress, dynamic_ncols=True)
    new_entries: list[ShardEntry] = []

    def on_commit(entry: ShardEntry) -> None:
        new_entries.append(entry)
        bar.update(entry.samples + entry.rejects)
        done = sum(e.samples + e.rejects for e in new_entries)
        bar.set_postfix(shards=len(new_entries), samples=sum(e.samples for e in new_entries),
                        rate=f"{done / max(time.time() - t0, 1e-9):.0f}/s")
        log.debug("committed shard %s: %d samples, %d rejects", entry.id, entry.samples, entry.rejects)

    shards = (s for s in iter_shards(cfg.input, cfg.shard_size) if s.id not in committed)
    first = next(shards, None)
    driver = None
    service = None
    if first is not None:
        init_ray(cfg)
        import itertools

        import ray

        dedup = _dedup_plan(cfg, storage, sorted(committed))
        job = ShardJob(cfg, storage.uri, str(work), _start_clip_actors(cfg), dedup.client() if dedup else None)
        # the dedup partitions start when the driver first waits, after the first shard tasks were
        # submitted: those get the workers Ray started with (DedupClient's docstring)
        driver = Driver(cfg, storage, job, lineage, on_commit, start_service=dedup.start if dedup else None)
        limit = cfg.max_inflight or max(2, int(2 * ray.cluster_resources().get("CPU", 2) / cfg.download.task_cpus))
        try:
            for shard in itertools.chain([first], shards):
                while driver.busy >= limit:
                    driver.wait()
                driver.add_shard(shard)
            while driver.busy:
                driver.wait()
        finally:
            if driver.service is not None:
                driver.service.stop()
        service = driver.service
    bar.close()
    if not cfg.keep_work and work.exists():
        shutil.rmtree(work, ignore_errors=True)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    summary = _summary(storage, new_entries, driver, time.time() - t0,
                       (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime), service)
    _write_run_log(storage, summary)
    return summary


def resolve_phash_method(cfg: CurateConfig, manifest: Manifest, where: str) -> CurateConfig:
    """`cfg` with decode.phash_method fixed for this dataset: the method its committed shards were
    hashed with (hashes of two methods are not comparable), box for a new one."""
    previous = manifest.lineage.get("curate", {}).get("config", {}).get("decode", {})
    recorded = None
    if manifest.shards and previous.get("phash", True):
        recorded = previous.get("phash_method", "lanczos")  # curated before the setting existed: imagehash's
    wanted = cfg.decode.phash_method
    if wanted == "auto":
        method = recorded or NEW_DATASET_METHOD
        if recorded:
            log.info("decode.phash_method: %s, the method this dataset's committed shards were hashed with", method)
    elif recorded and wanted != recorded and cfg.decode.phash:
        raise PlanMismatch(
            f"{where} was hashed with decode.phash_method={recorded}; {wanted} hashes cannot be "
            f"compared with them, so near duplicates would be missed. Set decode.phash_method={recorded} (or auto) "
            "to resume it, or use a new output root."
        )
    else:
        method = wanted
    return dataclasses.replace(cfg, decode=dataclasses.replace(cfg.decode, phash_method=method))


@dataclass
class DedupPlan:
    """The dedup service a run will start, and the names its shard tasks find its partitions by."""

    cfg: DedupConfig
    storage: Storage
    committed: list[str]
    phash_bits: int | None
    names: list[str]

    def client(self):
        from .dedup.service import DedupClient

        return DedupClient(self.names, self.cfg, self.storage.uri)

    def start(self):
        from .dedup import DedupService

        return DedupService.start(self.cfg, self.storage, self.committed, self.phash_bits, wait=False,
                                  names=self.names)


def _dedup_plan(cfg: CurateConfig, storage: Storage, committed: list[str]) -> DedupPlan | None:
    d = cfg.dedup
    if not (d.sha256 or d.phash_distance is not None or d.clip_cosine is not None):
        return None
    from .dedup.service import partition_names

    phash_bits = cfg.decode.phash_size**2 if (cfg.decode.phash and d.phash_distance is not None) else None
    return DedupPlan(d, storage, committed, phash_bits, partition_names(d.partitions))


def _start_clip_actors(cfg: CurateConfig) -> list:
    if not cfg.clip.enabled:
        return []
    import ray

    from .filters.clip import ClipStage

    gpus = {"num_gpus": cfg.clip.num_gpus} if cfg.clip.num_gpus else {}
    actor = ray.remote(ClipStage)
    return [actor.options(num_cpus=cfg.clip.num_cpus, **gpus).remote(cfg.clip) for _ in range(cfg.clip.concurrency)]


def _summary(storage: Storage, new: list[ShardEntry], driver, seconds: float, driver_cpu_s: float, service) -> dict:
    manifest = Manifest.load(storage)
    counts = driver.counts if driver else collections.Counter()
    rejects: collections.Counter = collections.Counter()
    if len(manifest.shards) <= 2000:  # totals over the whole dataset; larger ones: deepfusion stats
        for entry in manifest.shards:
            table = read_rejects(storage, entry)
            for stage, reason in zip(table.column("stage").to_pylist(), table.column("reason").to_pylist()):
                rejects[f"{stage}/{reason}"] += 1
    inputs = sum(e.samples + e.rejects for e in manifest.shards)
    this_run = sum(e.samples + e.rejects for e in new)
    per_k = 1000 / this_run if this_run else 0.0
    return {
        "output": storage.uri,
        "finished_at": utc_now(),
        "seconds": round(seconds, 1),
        "this_run": {"shards": len(new), "inputs": this_run, "samples": sum(e.samples for e in new),
                     "rejects": {k: v for k, v in sorted(counts.items()) if k != "sample"},
                     "inputs_per_s": round(this_run / seconds, 1) if seconds > 0 else None,
                     "nodes": dict(driver.nodes) if driver else {},
                     "units_failed": driver.crash_units if driver else 0},
        "driver": {"cpu_s": round(driver_cpu_s, 2), "bytes_received": driver.bytes_received if driver else 0,
                   "cpu_s_per_1000_rows": round(driver_cpu_s * per_k, 4),
                   "bytes_per_1000_rows": round((driver.bytes_received if driver else 0) * per_k)},
        "dedup": {"partitions": len(service.partitions), "rebuilt_rows": service.rebuilt_rows,
                  "rebuild_s": round(service.rebuild_s, 2)} if service else None,
        "dataset": {"shards": len(manifest.shards), "inputs": inputs, "samples": manifest.samples,
                    "rejects": manifest.rejects, "rejects_by_reason": dict(sorted(rejects.items()))},
    }


def _write_run_log(storage: Storage, summary: dict) -> None:
    name = "logs/curate-" + summary["finished_at"].replace(":", "").replace("+0000", "Z") + ".json"
    storage.write_atomic(name, (json.dumps(summary, indent=1) + "\n").encode())


def format_summary(summary: dict) -> str:
    run, ds, drv = summary["this_run"], summary["dataset"], summary["driver"]
    lines = [
        f"curated {summary['output']} in {summary['seconds']} s",
        f"  this run: {run['shards']} shard(s), {run['inputs']} input rows -> {run['samples']} samples "
        f"({run['inputs_per_s']} rows/s) on {len(run['nodes'])} node(s)",
        f"  driver:   {drv['cpu_s']} CPU-s, {drv['bytes_received']} bytes received "
        f"({drv['cpu_s_per_1000_rows']} CPU-s and {drv['bytes_per_1000_rows']} bytes per 1,000 rows)",
        f"  dataset:  {ds['shards']} shard(s), {ds['inputs']} input rows = {ds['samples']} samples + {ds['rejects']} rejects",
    ]
    for reason, n in ds["rejects_by_reason"].items():
        lines.append(f"    reject {reason:32s} {n}")
    return "\n".join(lines)
