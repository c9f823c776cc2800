"""The statistics job: refresh the cache (new shards only), aggregate, write <root>/stats/."""

from __future__ import annotations

import logging
import time

from datapipe.contract import Storage

from .aggregate import GALLERY, SUMMARY, aggregate
from .cache import refresh_cache
from .config import StatsConfig

log = logging.getLogger(__name__)


def _progress(items, desc):
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="shard", disable=len(items) < 2)


def run_stats(cfg: StatsConfig, progress: bool = True) -> dict:
    """One incremental statistics run; returns a small run summary (the stats are on disk)."""
    t0 = time.perf_counter()
    storage = Storage(cfg.root)
    with storage.lock("stats/cache/index.json"):  # one writer at a time (a dashboard may refresh too)
        update = refresh_cache(cfg, _progress if progress else None)
        t1 = time.perf_counter()
        summary, gallery = aggregate(cfg)
    t2 = time.perf_counter()
    run = {
        "root": storage.uri, "summary": storage.path(SUMMARY), "gallery": storage.path(GALLERY),
        "shards_read": len(update.samples), "caption_shards_read": {v: len(s) for v, s in update.captions.items()},
        "dropped": update.dropped, "headline": summary["headline"], "caption_versions": [
            {"version": v["version"], "coverage": v["coverage"], "ok": v["ok"], "failed": v["failed"]}
            for v in summary["captions"]],
        "gallery_images": len(gallery), "seconds": {"cache": round(t1 - t0, 3), "aggregate": round(t2 - t1, 3)},
    }
    log.info("stats: read %d new shard(s) and %d caption shard(s) in %.2fs, aggregated in %.2fs",
             run["shards_read"], sum(run["caption_shards_read"].values()), t1 - t0, t2 - t1)
    return run


def format_summary(run: dict) -> str:
    h = run["headline"]
    pass_rate = f"{h['pass_rate']:.1%}" if h["pass_rate"] is not None else "n/a"
    lines = [
        f"stats: {h['shards']} shard(s), {h['inputs']} input rows -> {h['samples']} samples + {h['rejects']} rejects "
        f"(pass rate {pass_rate}, {h['duplicates']} duplicates)",
        f"  this run read {run['shards_read']} shard(s) and "
        f"{sum(run['caption_shards_read'].values())} caption shard(s); the rest came from the cache",
    ]
    for v in run["caption_versions"]:
        cov = f"{v['coverage']:.1%}" if v["coverage"] is not None else "n/a"
        lines.append(f"  captions {v['version']}: coverage {cov} ({v['ok']} ok, {v['failed']} failed)")
    lines.append(f"  wrote {run['summary']} and {run['gallery']} ({run['gallery_images']} gallery images)")
    return "\n".join(lines)
