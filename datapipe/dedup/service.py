"""The dedup partitions as Ray actors, the input-order gate, and the client a shard task uses.

    service = DedupService.start(cfg.dedup, storage, committed_shard_ids, phash_bits)
    client = service.client()          # picklable: shard tasks carry it
    verdicts = client.run(shard_number, live_rows)   # inside the task that writes the shard

Determinism: a shard's check waits until every shard before it (in input order) is committed or
has inserted its kept rows, and a check only ever sees rows earlier in input order than its shard.
So the verdicts are those of one pass in input order, whatever the number of workers or
partitions, and a retried or resumed shard gets the same answer it got the first time. Only the
dedup step of each shard is serialised this way; downloading and decoding run in parallel.

Restart: each partition starts empty and is filled from the committed sidecars by parallel Ray
tasks (one per shard: it reads the hash columns and sends each partition its rows); its gate opens
when they are done, and `start(wait=False)` returns before that, so shard tasks run meanwhile.
The partitions are named actors: a client holds names and finds them on first use, so the job
can submit shard tasks before it creates them (DedupClient says why).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time

import numpy as np

from .decide import ShardHashes, Verdict, decide
from .index import ROWS_PER_SHARD, PartitionIndex, order_of, phash_codes

log = logging.getLogger(__name__)
CENTROIDS = "dedup/clip_centroids.npy"  # a curation-owned file of the dataset root


def owner(digest: bytes | None, order: int, partitions: int) -> int:
    """The partition that stores a row: by its sha256 (uniform), or by order without one."""
    if digest is not None:
        return int.from_bytes(digest[:4], "little") % partitions
    return order % partitions


def hashes_of(rows: list[dict], clip_dim: int | None) -> ShardHashes:
    """ShardHashes of rows with key, source_sha256 (hex), phash (hex), clip_embedding (float16 bytes)."""
    n = len(rows)
    orders = np.array([order_of(r["key"]) for r in rows], np.int64)
    sha = [bytes.fromhex(r["source_sha256"]) if r.get("source_sha256") else None for r in rows]
    has_phash = np.array([bool(r.get("phash")) for r in rows], bool)
    phash = None
    if has_phash.any():
        width = len(next(r["phash"] for r in rows if r.get("phash"))) // 2
        phash = np.zeros((n, width), np.uint8)
        idx = np.flatnonzero(has_phash)
        codes = phash_codes([rows[i]["phash"] for i in idx])
        if codes.shape[1] != width:
            raise ValueError("perceptual hashes of different sizes in one shard (decode.phash_size changed?)")
        phash[idx] = codes
    has_clip = np.array([bool(r.get("clip_embedding")) for r in rows], bool)
    clip = None
    if has_clip.any():
        dim = clip_dim or len(next(r["clip_embedding"] for r in rows if r.get("clip_embedding"))) // 2
        clip = np.zeros((n, dim), np.float32)
        for i in np.flatnonzero(has_clip):
            clip[i] = np.frombuffer(rows[i]["clip_embedding"], np.float16)
    return ShardHashes(orders, sha, phash, has_phash, clip, has_clip)


def payloads(h: ShardHashes, select: np.ndarray, partitions: int, sha256: bool) -> list[dict]:
    """The rows `select` (indices into h) split into one insert payload per partition."""
    parts = np.array([owner(h.sha[i], int(h.orders[i]), partitions) for i in select], np.int64)
    out = []
    for p in range(partitions):
        rows = select[parts == p] if len(select) else select
        payload: dict = {"orders": h.orders[rows]}
        if sha256:
            with_sha = [i for i in rows.tolist() if h.sha[i] is not None]
            payload["sha"] = (h.orders[with_sha], [h.sha[i] for i in with_sha])
        if h.phash is not None:
            sel = rows[h.has_phash[rows]]
            payload["phash"] = (h.orders[sel], h.phash[sel])
        if h.clip is not None:
            sel = rows[h.has_clip[rows]]
            payload["clip"] = (h.orders[sel], h.clip[sel].astype(np.float16))
        out.append(payload)
    return out


def _partition_class():
    import ray

    @ray.remote
    class DedupPartition:
        """One partition: its rows' indexes, the gate, and the memo of what each shard inserted."""

        def __init__(self, cfg: dict, phash_bits: int | None, centroids: np.ndarray | None):
            import faiss

            # faiss's OpenMP threads spin-wait between calls: on a node whose cores run shard
            # tasks, that spinning is stolen from them. A partition's queries are batched per shard
            # and take milliseconds on one thread.
            faiss.omp_set_num_threads(max(1, int(cfg.get("threads", 1))))
            self.cfg = cfg
            self.index = PartitionIndex(phash_bits, cfg["phash_segments"], cfg["phash_flips"],
                                        clip_centroids=centroids, clip_nprobe=cfg["clip_nprobe"])
            self.finished: set[int] = set()  # shard numbers committed before the run or inserted in it
            self.upto = 0  # every shard number below this is finished: the gate
            self.inserted: dict[int, frozenset] = {}
            self.cond: asyncio.Condition | None = None
            self.ready: asyncio.Event | None = None  # set by begin: the rebuild is done
            self.failed: str | None = None
            self.phash_bits = phash_bits

        def _ready(self) -> asyncio.Event:
            self.ready = self.ready or asyncio.Event()
            return self.ready

        async def begin(self, committed: list[int], loads: list) -> tuple[int, float]:
            """Open the gate once the rebuild tasks (`loads`, refs inside a list so that Ray hands
            them over unresolved and nobody blocks on them) have filled the index. Returns the rows
            they loaded and the seconds it took."""
            t0 = time.perf_counter()
            try:
                rows = sum(await asyncio.gather(*loads)) if loads else 0
                self.finished = set(committed)
                self._advance()
                return rows, time.perf_counter() - t0
            except BaseException as e:  # noqa: BLE001 - every waiting check fails with it, not hangs
                self.failed = f"{type(e).__name__}: {e}"[:500]
                raise
            finally:
                self._ready().set()

        def _advance(self) -> None:
            while self.upto in self.finished:
                self.upto += 1

        def load(self, payload: dict) -> int:
            """Rows of committed shards (the rebuild): no gate, no memo."""
            self._insert(payload)
            return self.index.rows

        def _insert(self, payload: dict) -> None:
            if payload.get("clip") is not None:
                payload = {**payload, "clip": (payload["clip"][0], np.asarray(payload["clip"][1], np.float32))}
            self.index.insert(payload)

        async def _wait_turn(self, shard: int) -> None:
            """Until every shard before this one (in input order) is committed or has inserted."""
            await self._ready().wait()
            if self.failed:
                raise RuntimeError(f"the dedup index could not be rebuilt from the committed shards: {self.failed}")
            self.cond = self.cond or asyncio.Condition()
            async with self.cond:
                await self.cond.wait_for(lambda: self.upto >= shard)

        async def check(self, shard: int, sha, phash, clip, phash_radius, clip_cosine):
            await self._wait_turn(shard)
            before = shard * ROWS_PER_SHARD
            return (self.index.query_sha(sha, before) if sha is not None else None,
                    self.index.query_phash(phash, phash_radius, before) if phash is not None else None,
                    self.index.query_clip(clip.astype(np.float32), clip_cosine, before) if clip is not None else None)

        async def insert(self, shard: int, payload: dict) -> None:
            orders = set(np.asarray(payload["orders"]).tolist())
            previous = self.inserted.get(shard)
            if previous is None:
                self._insert(payload)
            else:  # the shard ran again (a retried task): insert what is new, tombstone what is gone
                self.index.tombstone(previous - orders)
                self._insert({k: _only(v, orders - previous) for k, v in payload.items() if k != "orders"})
            self.inserted[shard] = frozenset(orders)
            self.cond = self.cond or asyncio.Condition()
            async with self.cond:
                self.finished.add(shard)
                self._advance()
                self.cond.notify_all()

        def committed(self, shard: int) -> None:
            self.inserted.pop(shard, None)

        def centroids(self):
            return None if self.index.clip is None else self.index._quantizer.reconstruct_n(0, self.index.clip.nlist)

        def set_centroids(self, centroids) -> None:
            if self.index.clip is None:
                self.index.set_centroids(centroids)

        def stats(self) -> dict:
            return {"rows": self.index.rows, "tombstones": len(self.index.tombstones)}

    return DedupPartition


def _load_committed_task():
    import ray

    @ray.remote(num_cpus=0.25)
    def load_committed(root: str, shard_id: str, partitions: list, sha256: bool, phash: bool, clip: bool) -> int:
        """Read one committed sidecar's hash columns and hand each partition its rows."""
        from datapipe.contract import Dataset

        ds = Dataset(root)
        wanted = ["key", "source_sha256"] + (["phash"] if phash else []) + (["clip_embedding"] if clip else [])
        table = ds.sidecar(shard_id, None)
        rows = table.select([c for c in wanted if c in table.column_names]).to_pylist()
        if not rows:
            return 0
        h = hashes_of(rows, None)
        if not phash:
            h.phash = None
        if not clip:
            h.clip = None
        every = np.arange(len(rows))
        ray.get([actor.load.remote(payload) for actor, payload in zip(partitions, payloads(h, every, len(partitions),
                                                                                         sha256))])
        return len(rows)

    return load_committed


def partition_names(partitions: int) -> list[str]:
    """Names for one run's partition actors (unique, so runs sharing a cluster never meet)."""
    import uuid

    run = uuid.uuid4().hex[:12]
    return [f"deepfusion-dedup-{run}-{p}" for p in range(partitions)]


class DedupService:
    def __init__(self, partitions: list, cfg, root: str, phash_bits: int | None, names: list[str]):
        self.partitions, self.cfg, self.root, self.phash_bits = partitions, cfg, root, phash_bits
        self.names = names
        self.rebuild_s = 0.0
        self.rebuilt_rows = 0
        self._begun: list = []  # the partitions' begin calls, until wait_ready has their answers

    @classmethod
    def start(cls, cfg, storage, committed: list[str], phash_bits: int | None, wait: bool = True,
              names: list[str] | None = None) -> "DedupService":
        """Start the partitions (named `names`, which clients made earlier may already hold) and
        their rebuild from the committed shards. With wait=False it returns at once: shard tasks run
        while the actors start and load (their first check waits for it), and `wait_ready()` later
        reports the rebuild or raises its error."""
        import ray

        centroids = None
        if cfg.clip_cosine is not None and storage.exists(CENTROIDS):
            import io

            centroids = np.load(io.BytesIO(storage.read_bytes(CENTROIDS)))
        actor = _partition_class()
        conf = {"phash_segments": cfg.phash_segments, "phash_flips": cfg.phash_flips, "clip_nprobe": cfg.clip_nprobe,
                "threads": cfg.actor_threads}
        names = names or partition_names(cfg.partitions)
        if len(names) != cfg.partitions:
            raise ValueError(f"{len(names)} partition names for dedup.partitions={cfg.partitions}")
        partitions = [actor.options(name=name, num_cpus=cfg.actor_cpus, max_concurrency=1000)
                      .remote(conf, phash_bits, centroids) for name in names]
        service = cls(partitions, cfg, storage.uri, phash_bits, names)
        loads = []
        if committed:
            if cfg.clip_cosine is not None and centroids is None:
                raise ValueError(f"{storage.uri} has committed shards but no {CENTROIDS}: its CLIP dedup index "
                                 "cannot be rebuilt the same way; use a new output root or dedup.clip_cosine: null")
            load = _load_committed_task()
            loads = [load.remote(storage.uri, sid, partitions, cfg.sha256, cfg.phash_distance is not None,
                                 cfg.clip_cosine is not None) for sid in committed]
        service._begun = [p.begin.remote([int(s) for s in committed], loads) for p in partitions]
        if wait:
            service.wait_ready()
        return service

    def wait_ready(self) -> None:
        """Block until every partition has its committed rows (at once after the first call);
        raises what broke the rebuild."""
        import ray

        if not self._begun:
            return
        answers = ray.get(self._begun)
        self._begun = []
        self.rebuilt_rows = answers[0][0]
        self.rebuild_s = max(seconds for _, seconds in answers)
        log.info("dedup: %d partition(s), %d committed rows loaded in %.1f s", len(self.partitions),
                 self.rebuilt_rows, self.rebuild_s)

    def client(self) -> "DedupClient":
        return DedupClient(self.names, self.cfg, self.root)

    def committed(self, shard: int) -> None:
        for p in self.partitions:
            p.committed.remote(shard)

    def stop(self) -> None:
        import ray

        for p in self.partitions:
            ray.kill(p)


class DedupClient:
    """Runs one shard's dedup from inside its task: check at every partition, decide, insert.

    It holds the partitions' names and looks the actors up on first use, so a job can submit its
    first shard tasks before it starts the partitions: Ray hands the workers it started with to
    whatever is scheduled first, and actors created first took them (the shard tasks then waited
    ~1.8 s for new workers on a 2-core node)."""

    LOOKUP_TIMEOUT_S = 120.0

    def __init__(self, names: list[str], cfg, root: str):
        self.names, self.cfg, self.root = names, cfg, root
        self._partitions: list | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_partitions": None}

    @property
    def partitions(self) -> list:
        if self._partitions is None:
            self._partitions = [_actor_named(name, self.LOOKUP_TIMEOUT_S) for name in self.names]
        return self._partitions

    def run(self, shard: int, rows: list[dict]) -> list[Verdict | None]:
        import ray

        cfg, P = self.cfg, len(self.partitions)
        h = hashes_of(rows, None)
        if cfg.clip_cosine is None:
            h.clip, h.has_clip = None, np.zeros(len(rows), bool)
        if cfg.phash_distance is None:
            h.phash, h.has_phash = None, np.zeros(len(rows), bool)
        if h.clip is not None:
            self._ensure_centroids(h)
        parts = [owner(d, int(o), P) for d, o in zip(h.sha, h.orders)]
        sha_q = [[d if q == p and cfg.sha256 else None for d, q in zip(h.sha, parts)] for p in range(P)]
        ph = h.phash[h.has_phash] if h.phash is not None else None
        cl = h.clip[h.has_clip].astype(np.float16) if h.clip is not None else None
        answers = _wait_at_gate([actor.check.remote(shard, sha_q[p], ph, cl, cfg.phash_distance, cfg.clip_cosine)
                                 for p, actor in enumerate(self.partitions)], cfg.gate_hold_s)
        n = len(rows)
        index_sha: list = [None] * n
        index_phash: list = [[] for _ in range(n)]
        index_clip: list = [[] for _ in range(n)]
        ph_rows, cl_rows = np.flatnonzero(h.has_phash), np.flatnonzero(h.has_clip)
        for sha_ans, ph_ans, cl_ans in answers:
            for i, o in enumerate(sha_ans or []):
                if o is not None:
                    index_sha[i] = o
            for j, found in enumerate(ph_ans or []):
                index_phash[ph_rows[j]] += found
            for j, found in enumerate(cl_ans or []):
                index_clip[cl_rows[j]] += found
        verdicts = decide(h, cfg, index_sha, index_phash, index_clip)
        kept = np.flatnonzero(np.array([v is None for v in verdicts], bool))
        _wait_at_gate([actor.insert.remote(shard, payload)
                       for actor, payload in zip(self.partitions, payloads(h, kept, P, cfg.sha256))], cfg.gate_hold_s)
        return verdicts

    def _ensure_centroids(self, h: ShardHashes) -> None:
        """The first shard (in input order) with embeddings trains the shared CLIP cells once."""
        import io

        import ray

        if ray.get(self.partitions[0].centroids.remote()) is not None:
            return
        import faiss

        from datapipe.contract import Storage

        emb = np.ascontiguousarray(h.clip[h.has_clip], np.float32)
        nlist = max(1, min(self.cfg.clip_nlist, len(emb) // 39))
        kmeans = faiss.Kmeans(emb.shape[1], nlist, niter=20, seed=1234, spherical=True, verbose=False)
        kmeans.train(emb)
        centroids = kmeans.centroids.astype(np.float32)
        buf = io.BytesIO()
        np.save(buf, centroids)
        Storage(self.root).write_atomic(CENTROIDS, buf.getvalue())
        ray.get([p.set_centroids.remote(centroids) for p in self.partitions])


def _actor_named(name: str, timeout_s: float):
    """The actor called `name` in this job's namespace, waiting for the driver to create it."""
    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return ray.get_actor(name)
        except ValueError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"dedup partition {name} does not exist {timeout_s:.0f} s after the shard "
                                   "task started (the job's driver never created it)") from None
            time.sleep(0.05)


def _wait_at_gate(refs: list, hold_s: float) -> list:
    """The results of `refs`: waited for `hold_s` seconds holding this task's CPU, then through
    `ray.get`, which lends it to the scheduler.

    Lending it at once (a plain `ray.get`) let Ray start another worker for the next pending shard
    at every wait; when the waiting task resumed, the node had more workers than CPUs, idle ones
    were killed and new ones started later, each importing the download stack again (seconds of
    CPU): measured at 10,000 URLs on 2 cores, 13 worker processes for 10 shards against 4 with
    dedup off. Most waits are short (the earlier shard's check and insert), so the task holds its
    CPU first (`ObjectRef.future()` waits on a callback, not through `ray.get`). Holding it for
    ever deadlocks: when the shard the gate waits for is queued behind the waiting ones (a retried
    or split shard, a task placed late on another node) and those fill every CPU, it never runs."""
    futures = [ref.future() for ref in refs]
    _, pending = concurrent.futures.wait(futures, timeout=hold_s)
    if pending:
        import ray

        log.debug("dedup gate: still waiting after %.1f s; lending the CPU", hold_s)
        ray.get(refs)
    return [f.result() for f in futures]


def _only(part, orders: set):
    """The rows of an insert payload part whose order is in `orders`."""
    if part is None:
        return None
    keys, values = part
    sel = [i for i, o in enumerate(np.asarray(keys).tolist()) if o in orders]
    if isinstance(values, list):
        return np.asarray(keys)[sel], [values[i] for i in sel]
    return np.asarray(keys)[sel], values[sel]
