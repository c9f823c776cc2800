"""DuckDB over the statistics cache: the numbers and histograms the dashboard draws.

Histograms are binned here (fixed bin count between the observed min and max), so the page
gets a few hundred numbers whatever the dataset size. Everything is recomputed from the cache on
each run: cheap (the cache is slim) and never out of step with an incremental update.
"""

from __future__ import annotations

import json
import math

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from datapipe.contract import (
    CAPTION_STATUS_OK,
    LEVEL_COLUMNS,
    REJECT_STAGES,
    CaptionSet,
    CaptionVersion,
    Dataset,
    Storage,
    utc_now,
)

from .cache import CACHE, SAMPLE_CACHE_COLUMNS, SCORE_COLUMNS, load_index
from .config import StatsConfig

SUMMARY = "stats/summary.json"
GALLERY = "stats/gallery.json"
STATS_FORMAT = 2  # bump when summary.json changes shape; the dashboard checks it


def read_cache(storage: Storage, rels: list[str], empty: pa.Schema) -> pa.Table:
    parts = []
    for rel in rels:
        with storage.open(rel) as f:
            parts.append(pq.read_table(f))
    return pa.concat_tables(parts, promote_options="default") if parts else empty.empty_table()


def histogram(con: duckdb.DuckDBPyConnection, table: str, expr: str, bins: int, where: str = "TRUE") -> dict | None:
    """{"x": bin centres, "y": counts, "width": bin width, "n": values} over non-null values, or None."""
    lo, hi, n = con.execute(f"SELECT min({expr}), max({expr}), count({expr}) FROM {table} WHERE {where}").fetchone()
    if not n:
        return None
    lo, hi = float(lo), float(hi)
    width = (hi - lo) / bins if hi > lo else 1.0
    rows = con.execute(
        f"SELECT least(CAST(floor(({expr} - $lo) / $w) AS INTEGER), {bins - 1}) AS b, count(*) FROM {table} "
        f"WHERE {where} AND {expr} IS NOT NULL GROUP BY b ORDER BY b", {"lo": lo, "w": width}).fetchall()
    counts = dict(rows)
    nbins = bins if hi > lo else 1
    return {"x": [round(lo + (b + 0.5) * width, 4) for b in range(nbins)],
            "y": [counts.get(b, 0) for b in range(nbins)], "width": round(width, 6), "n": n}


def records(cursor) -> list[dict]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def funnel(inputs: int, rejects_by_stage: dict[str, int]) -> list[dict]:
    out, entering = [], inputs
    for stage in REJECT_STAGES:
        rejected = rejects_by_stage.get(stage, 0)
        out.append({"stage": stage, "entering": entering, "rejected": rejected,
                    "pass_rate": round(1 - rejected / entering, 4) if entering else None})
        entering -= rejected
    return out


def resolve(con, storage: Storage, version: str) -> list[str]:
    """Temp table `resolved`: one caps row per key of `version` with its overlay chain applied (the
    contract's CaptionSet rule: the newest ok row, else the newest failed one); returns the chain."""
    chain = [m.version for m in CaptionSet(storage, version).chain]
    con.register("chain", pa.table({"version": chain, "rank": list(range(len(chain)))}))
    con.execute("CREATE OR REPLACE TEMP TABLE resolved AS SELECT c.* FROM caps c JOIN chain USING (version) "
                "QUALIFY row_number() OVER (PARTITION BY key ORDER BY (status <> $ok), rank) = 1",
                {"ok": CAPTION_STATUS_OK})
    con.unregister("chain")
    return chain


def caption_versions(con, storage: Storage, samples: int, bins: int) -> list[dict]:
    out = []
    for version in sorted(load_index(storage)["captions"]):
        meta = CaptionVersion.load(storage, version)
        chain = resolve(con, storage, version)
        ok, failed, rows = con.execute("SELECT count(*) FILTER (WHERE status = $ok), count(*) FILTER (WHERE status <> $ok), "
                                       "count(*) FROM resolved", {"ok": CAPTION_STATUS_OK}).fetchone()
        words = []
        for i in range(1, len(LEVEL_COLUMNS) + 1):
            mean, p5, p50, p95 = con.execute(
                f"SELECT avg(w{i}), quantile_cont(w{i}, 0.05), quantile_cont(w{i}, 0.5), quantile_cont(w{i}, 0.95) "
                "FROM resolved WHERE status = $ok", {"ok": CAPTION_STATUS_OK}).fetchone()
            words.append({"level": i, "mean": round(mean or 0, 2), "p5": p5, "p50": p50, "p95": p95})
        finish = dict(con.execute("SELECT coalesce(finish_reason, 'none'), count(*) FROM resolved GROUP BY 1 ORDER BY 2 DESC").fetchall())
        errors = dict(con.execute("SELECT split_part(coalesce(error, 'unknown'), ':', 1), count(*) FROM resolved "
                                  "WHERE status <> $ok GROUP BY 1 ORDER BY 2 DESC", {"ok": CAPTION_STATUS_OK}).fetchall())
        prompts = [p for (p,) in con.execute("SELECT DISTINCT prompt_id FROM resolved WHERE prompt_id IS NOT NULL ORDER BY 1").fetchall()]
        out.append({
            "version": version, "backend": meta.backend, "model": meta.model, "parent": meta.parent, "chain": chain,
            "prompt_ids": prompts, "shards": len(meta.shards), "rows": rows, "ok": ok, "failed": failed,
            "coverage": round(ok / samples, 4) if samples else None, "words": words, "finish_reasons": finish,
            "failed_reasons": errors, "updated_at": meta.updated_at,
            "words_level_6": histogram(con, "resolved", "w6", bins, f"status = '{CAPTION_STATUS_OK}'"),
        })
    return out


def gallery(con, storage: Storage, index: dict, max_images: int, versions: list[dict]) -> tuple[list[dict], dict]:
    """The gallery items (the newest shards' first rows, then each version's own picks) with every
    version's resolved captions, and per version the keys of the tiles it shows and its coverage.

    A version's tiles are rows it captioned (its own ok rows, newest shards first), so a version
    that covers one shard, or a few rows of one, shows its captions instead of "not captioned"."""
    shards = sorted(index["samples"], reverse=True)  # the newest shards first
    table = read_cache(storage, [f"{CACHE}/gallery/{s}.parquet" for s in shards], pa.schema([("key", pa.string())]))
    items = table.slice(0, max_images).to_pylist()
    by_key = {it["key"]: it for it in items}
    by_version = {}
    for v in versions:
        version = v["version"]
        done = sorted(index["captions"].get(version, {}), reverse=True)
        rels = [f"{CACHE}/vgallery/{version}/{s}.parquet" for s in done]
        picks = read_cache(storage, [r for r in rels if storage.exists(r)],
                           pa.schema([("key", pa.string())])).slice(0, max_images).to_pylist()
        for it in picks:
            by_key.setdefault(it["key"], it)
        by_version[version] = {"keys": [it["key"] for it in picks], "covered": v["ok"], "coverage": v["coverage"]}
    items = list(by_key.values())
    con.register("gkeys", pa.table({"key": list(by_key)}))
    for it in items:
        it["captions"] = {}
    for version in sorted(index["captions"]):
        resolve(con, storage, version)
        rows = con.execute(f"SELECT key, status, version AS source, {', '.join(LEVEL_COLUMNS)} FROM resolved "
                           "JOIN gkeys USING (key)").fetchall()
        for key, status, source, *levels in rows:
            by_key[key]["captions"][version] = {"status": status, "from": source, "levels": list(levels)}
    con.unregister("gkeys")
    # the default: the most complete version (the newest among equals)
    ranked = sorted(versions, key=lambda v: (v["coverage"] or 0, v["updated_at"]), reverse=True)
    return items, {"default_version": ranked[0]["version"] if ranked else None, "by_version": by_version}


def rejects_explorer(con, examples: int) -> list[dict]:
    """Rejects by stage and reason: the count, its share of the stage's rejects and a few examples."""
    rows = con.execute(
        "SELECT stage, reason, count(*) AS n, list({'key': key, 'url': url, 'detail': detail} ORDER BY shard DESC, key) "
        "FROM rejects GROUP BY stage, reason ORDER BY stage, n DESC, reason").fetchall()
    per_stage: dict[str, int] = {}
    for stage, _, n, _ in rows:
        per_stage[stage] = per_stage.get(stage, 0) + n
    return [{"stage": stage, "reason": reason, "count": n, "share_of_stage": round(n / per_stage[stage], 4),
             "examples": ex[:examples]} for stage, reason, n, ex in rows]


def aggregate(cfg: StatsConfig) -> tuple[dict, list[dict]]:
    ds = Dataset(cfg.root)
    storage = ds.storage
    index = load_index(storage)
    shard_ids = sorted(index["samples"])
    con = duckdb.connect()
    samples = read_cache(storage, [f"{CACHE}/samples/{s}.parquet" for s in shard_ids],
                         pa.schema([(c, pa.float32()) for c in SAMPLE_CACHE_COLUMNS]))
    rejects = read_cache(storage, [f"{CACHE}/rejects/{s}.parquet" for s in shard_ids],
                         pa.schema([(c, pa.string()) for c in ("shard", "key", "url", "stage", "reason", "detail")]))
    caps_rels = [f"{CACHE}/captions/{v}/{s}.parquet" for v, done in index["captions"].items() for s in sorted(done)]
    caps_parts = []
    for rel in caps_rels:
        with storage.open(rel) as f:
            t = pq.read_table(f)
        caps_parts.append(t.append_column("version", pa.array([rel.split("/")[-2]] * t.num_rows, pa.string())))
    caps = pa.concat_tables(caps_parts, promote_options="default") if caps_parts else pa.table(
        {"key": pa.array([], pa.string()), "version": pa.array([], pa.string()), "status": pa.array([], pa.string()),
         "finish_reason": pa.array([], pa.string()), "prompt_id": pa.array([], pa.string()),
         "error": pa.array([], pa.string()), **{f"w{i}": pa.array([], pa.int32()) for i in range(1, 7)},
         **{c: pa.array([], pa.string()) for c in LEVEL_COLUMNS}})
    con.register("samples", samples)
    con.register("rejects", rejects)
    con.register("caps", caps)

    n_samples = samples.num_rows
    by_stage = dict(con.execute("SELECT stage, count(*) FROM rejects GROUP BY stage").fetchall())
    n_rejects = sum(by_stage.values())
    inputs = n_samples + n_rejects
    stages = funnel(inputs, by_stage)
    entering = {s["stage"]: s["entering"] for s in stages}
    reasons = [{"stage": stage, "reason": reason, "count": n,
                "rate": round(n / entering[stage], 4) if entering.get(stage) else None}
               for stage, reason, n in con.execute(
                   "SELECT stage, reason, count(*) FROM rejects GROUP BY ALL ORDER BY 3 DESC, 1, 2").fetchall()]
    dedup = dict(con.execute("SELECT reason, count(*) FROM rejects WHERE stage = 'dedup' GROUP BY 1 ORDER BY 2 DESC").fetchall())

    progress, total_s, total_i = [], 0, 0
    for e in sorted(ds.shards, key=lambda e: (e.committed_at, e.id)):
        total_s += e.samples
        total_i += e.samples + e.rejects
        progress.append({"shard": e.id, "committed_at": e.committed_at, "samples": total_s, "inputs": total_i})

    bins = cfg.bins
    versions = caption_versions(con, storage, n_samples, bins)
    summary = {
        "format": STATS_FORMAT, "root": storage.uri, "created_at": utc_now(),
        "manifest_updated_at": ds.manifest.updated_at,
        "headline": {"shards": len(shard_ids), "inputs": inputs, "samples": n_samples, "rejects": n_rejects,
                     "pass_rate": round(n_samples / inputs, 4) if inputs else None,
                     "duplicates": sum(dedup.values()), "caption_versions": len(versions)},
        "funnel": stages, "rejects_by_reason": reasons, "duplicates": dedup,
        "resolution": histogram(con, "samples", "greatest(original_width, original_height)", bins),
        "stored_resolution": histogram(con, "samples", "greatest(width, height)", bins),
        "aspect_log2": histogram(con, "samples", "log2(original_width / original_height)", bins,
                                 "original_width > 0 AND original_height > 0"),
        "scores": {c: histogram(con, "samples", c, bins) for c in SCORE_COLUMNS},
        "progress": progress,
        "captions": versions,
        "rejects_table": records(con.execute(
            "SELECT shard, key, url, stage, reason, detail FROM rejects ORDER BY shard DESC, key LIMIT $n",
            {"n": cfg.rejects_table})),
    }
    items, summary["gallery"] = gallery(con, storage, index, cfg.gallery.max_images, versions)
    summary["rejects_explorer"] = rejects_explorer(con, cfg.reject_examples)
    _finite(summary)
    storage.write_atomic(SUMMARY, (json.dumps(summary, indent=1) + "\n").encode())
    storage.write_atomic(GALLERY, (json.dumps(items) + "\n").encode())
    return summary, items


def _finite(node):
    """NaN/inf are not JSON: a score column of NaNs must not break the page."""
    if isinstance(node, dict):
        for k, v in node.items():
            node[k] = None if isinstance(v, float) and not math.isfinite(v) else _finite(v)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            node[i] = None if isinstance(v, float) and not math.isfinite(v) else _finite(v)
    return node
