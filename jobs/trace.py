"""`deepfusion trace ROOT KEY_OR_URL [run=RUN_DIR]`: one input row's journey, from URL to training step.

Everything is read from what the stages wrote, never logged per row for this purpose:
- input: the key names its shard and its row in the shard (`<shard><row>`), so the input row is
  shard x shard_size + row of the plan, located in the input files the manifest's lineage lists;
- download, filters, dedup: the shard's sidecar row (a sample) or rejects row (a reject); a
  duplicate's reject names the kept key, and a kept sample's duplicates are the dedup rejects
  naming it (one DuckDB pass over the rejects files' detail column);
- captions: every caption version's resolved row (overlays applied, as trainers read them), with
  the caption QA score when `deepfusion quality` has written one;
- training (with a run): the steps whose global batch holds the row, replayed by the trainer's own
  deterministic planner from the run's config (the current epoch from the checkpoint's loader
  position, other epochs from the shards committed now) with the level, text and version it got.
A key reads one sidecar and one rejects file; a URL is first looked up in the url column of every
committed sidecar and rejects file with DuckDB (only that column is read).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from datapipe.contract import CaptionSet, ContractError, Dataset, LEVEL_COLUMNS, list_versions

KEY = re.compile(r"^\d{12}$")
SHOWN_TEXT = 2000  # characters of any one text shown (captions, alt text)


@dataclass
class TraceConfig:
    run: str | None = None  # a training run dir: list the steps that drew the row
    steps_listed: int = 200  # at most this many training steps are listed (all are counted)
    duplicates_listed: int = 50  # at most this many of a kept sample's duplicates are listed


# -- finding the row ------------------------------------------------------------------------------
def _duckdb_paths(ds: Dataset, rels: list[str]):
    import duckdb

    con = duckdb.connect()
    storage = ds.storage
    if not storage.is_local:  # s3://, gs://, ...: DuckDB reads through the same fsspec filesystem
        con.register_filesystem(storage.fs)
    return con, [storage.path(r) for r in rels]


def keys_of_url(ds: Dataset, url: str) -> list[str]:
    """Keys of every committed row (sample or reject) whose URL is `url`, in key order."""
    rels = [e.sidecar for e in ds.shards] + [e.rejects_file for e in ds.shards]
    rels = [r for r in rels if ds.storage.exists(r)]
    if not rels:
        return []
    con, paths = _duckdb_paths(ds, rels)
    rows = con.execute("SELECT DISTINCT key FROM read_parquet($paths, union_by_name = true) WHERE url = $url "
                       "ORDER BY key", {"paths": paths, "url": url}).fetchall()
    return [k for (k,) in rows]


def _row(table, key: str) -> dict | None:
    hit = table.filter(pc.equal(table.column("key"), key))
    return hit.to_pylist()[0] if hit.num_rows else None


def _cut(text: Any) -> Any:
    return text[:SHOWN_TEXT] + "..." if isinstance(text, str) and len(text) > SHOWN_TEXT else text


# -- the parts of a journey -------------------------------------------------------------------------
def _input(ds: Dataset, key: str) -> dict:
    from datapipe.config import InputConfig
    from datapipe.inputs import locate_row
    from common.config import from_dict

    lineage = ds.manifest.lineage.get("curate", {})
    shard_size = lineage.get("config", {}).get("shard_size")
    out: dict[str, Any] = {"shard": key[:6], "row_in_shard": int(key[6:])}
    if not shard_size:
        return out
    out["input_row"] = int(key[:6]) * shard_size + int(key[6:])
    try:
        files = lineage.get("inputs", [])
        where = locate_row(from_dict(InputConfig, lineage["config"]["input"]), files, out["input_row"])
        if where:
            out["file"], out["row_in_file"] = where
    except (OSError, ValueError, KeyError) as e:  # input files moved or gone: the row number still holds
        out["file_error"] = f"{type(e).__name__}: the input files of the lineage cannot be read"
    return out


def _filters(lineage_cfg: dict, sample: dict) -> list[dict]:
    """Each check a kept sample passed, with its value and the threshold it was held to."""
    dec = lineage_cfg.get("decode", {})
    w, h = sample.get("original_width"), sample.get("original_height")
    out = []
    if w and h and dec.get("enabled", True):
        out.append({"check": "decode.min_side", "value": min(w, h), "threshold": dec.get("min_side"), "passed": True})
        out.append({"check": "decode.max_aspect", "value": round(max(w, h) / min(w, h), 3),
                    "threshold": dec.get("max_aspect"), "passed": True})
    nsfw = lineage_cfg.get("nsfw", {})
    if nsfw.get("enabled") and sample.get("nsfw") is not None:
        out.append({"check": "nsfw (open_nsfw)", "value": round(sample["nsfw"], 4), "threshold": nsfw.get("threshold"),
                    "passed": True})
    clip = lineage_cfg.get("clip", {})
    if clip.get("enabled"):
        out.append({"check": "clip.min_score", "value": sample.get("clip_score"), "threshold": clip.get("min_score"),
                    "passed": True})
        for head, bound in (("aesthetic", "min"), ("nsfw", "max"), ("watermark", "max")):
            cfg = clip.get(head, {})
            if cfg.get("weights"):
                out.append({"check": f"clip.{head}.{bound}", "value": sample.get(head), "threshold": cfg.get(bound),
                            "passed": True})
    return out


def _duplicates_of(ds: Dataset, key: str, limit: int) -> tuple[int, list[dict]]:
    rels = [e.rejects_file for e in ds.shards if ds.storage.exists(e.rejects_file)]
    if not rels:
        return 0, []
    con, paths = _duckdb_paths(ds, rels)
    where = "stage = 'dedup' AND ends_with(detail, $key)"
    args = {"paths": paths, "key": " " + key}
    (n,) = con.execute(f"SELECT count(*) FROM read_parquet($paths, union_by_name = true) WHERE {where}", args).fetchone()
    rows = con.execute(f"SELECT key, url, reason, detail FROM read_parquet($paths, union_by_name = true) WHERE {where} "
                       "ORDER BY key LIMIT $n", {**args, "n": limit}).fetchall()
    return n, [{"key": k, "url": u, "reason": r, "detail": d} for k, u, r, d in rows]


def _captions(ds: Dataset, key: str) -> list[dict]:
    out = []
    storage = ds.storage
    for version in list_versions(storage):
        cs = CaptionSet(storage, version)
        entry = {"version": version, "backend": cs.chain[0].backend, "model": cs.chain[0].model,
                 "prompt_set": cs.chain[0].prompt_set, "chain": [m.version for m in cs.chain]}
        row = _row(cs.shard(key[:6]), key) if key[:6] in cs.shard_ids() else None
        if row is None:
            entry["status"] = "not captioned"
        else:
            entry.update(status=row["status"], from_version=row.get("version"), prompt_id=row.get("prompt_id"),
                         finish_reason=row.get("finish_reason"), error=row.get("error"),
                         levels={str(i + 1): _cut(row.get(c)) for i, c in enumerate(LEVEL_COLUMNS)})
        qa = f"stats/caption_qa/{version}/per_key.parquet"
        if storage.exists(qa):
            with storage.open(qa) as f:
                hit = _row(pq.read_table(f), key)
            if hit:
                entry["qa"] = {"level_6_accuracy": hit.get("qa_accuracy"), "questions": hit.get("questions")}
        out.append(entry)
    return out


def training_steps(run_dir: str, keys: set[str], limit: int) -> dict:
    """The steps of a run whose global batch holds one of `keys`, from the trainer's own planner."""
    from common.config import from_dict
    from trainer.config import TrainConfig
    from trainer.data import Planner

    run = Path(run_dir)
    cfg = from_dict(TrainConfig, json.loads((run / "config.json").read_text()))
    state, latest = {}, run / "checkpoints" / "latest"
    if latest.exists():
        path = run / "checkpoints" / latest.read_text().strip() / "trainer_state.json"
        if path.exists():
            state = json.loads(path.read_text())
    done = int(state.get("step", 0))
    world = int(state.get("world", 1))
    micro, accum = cfg.batch_layout(world)
    position = state.get("position", {})
    data = dataclasses.replace(cfg.data, follow_idle_s=0.0, follow_poll_s=0.0)  # replay what is there, never wait
    planner = Planner(data, cfg.seed, cfg.global_batch)
    hits, step, epoch, count = [], 0, 0, 0
    while step < cfg.steps:
        windows = position.get("windows") if epoch == position.get("epoch", 0) and position.get("windows") else None
        produced = 0
        for batch in planner.epoch(epoch, windows):
            produced += 1
            for i, s in enumerate(batch.samples):
                if s.key in keys:
                    count += 1
                    if len(hits) < limit:
                        chunk = i // micro
                        hits.append({"step": step, "epoch": epoch, "batch_in_epoch": batch.index, "key": s.key,
                                     "rank": chunk % world, "micro_step": chunk // world, "level": s.level,
                                     "version": s.version, "caption": _cut(s.caption),
                                     "trained": step < done})
            step += 1
            if step >= cfg.steps:
                break
        if produced == 0:
            break
        epoch += 1
    return {"run_dir": str(run), "steps": cfg.steps, "steps_done": done, "world": world, "global_batch": cfg.global_batch,
            "micro_batch": micro, "accumulation": accum, "draws": count, "listed": hits,
            "replayed_from": "the checkpoint's loader position for its epoch; other epochs from the shards committed now; "
                             "rank and micro-step are for the world size of the latest checkpoint"}


def trace_key(ds: Dataset, key: str, cfg: TraceConfig) -> dict:
    sid = key[:6]
    out: dict[str, Any] = {"key": key, "input": _input(ds, key)}
    entry = ds.manifest.shard(sid)
    if entry is None:
        out["outcome"] = "not committed"
        out["note"] = f"shard {sid} is not committed (not reached yet, in progress, or beyond the input)"
        return out
    out["shard"] = {"id": sid, "tar": entry.tar, "sidecar": entry.sidecar, "committed_at": entry.committed_at}
    lineage_cfg = ds.manifest.lineage.get("curate", {}).get("config", {})
    sample = _row(ds.sidecar(sid), key)
    if sample is not None:
        emb = sample.pop("clip_embedding", None)
        sample = {k: _cut(v) for k, v in sample.items()}
        if emb is not None:
            sample["clip_embedding"] = f"{len(emb) // 2} float16 values"
        out["outcome"] = "sample"
        out["url"] = sample.get("url")
        out["download"] = {"result": "ok", "original_size": [sample.get("original_width"), sample.get("original_height")],
                           "source_sha256": sample.get("source_sha256")}
        out["filters"] = _filters(lineage_cfg, sample)
        n, dups = _duplicates_of(ds, key, cfg.duplicates_listed)
        out["dedup"] = {"verdict": "kept (first in input order)", "duplicates_dropped": n, "duplicates": dups}
        out["sample"] = sample
        out["captions"] = _captions(ds, key)
        if cfg.run:
            out["training"] = training_steps(cfg.run, {key}, cfg.steps_listed)
        return out
    reject = _row(ds.rejects(sid), key)
    if reject is None:
        raise ContractError(f"{key}: shard {sid} is committed but holds no row {key} (deepfusion dataset verify)")
    out["outcome"] = "reject"
    out["url"] = reject.get("url")
    out["reject"] = {"stage": reject["stage"], "reason": reject["reason"], "detail": reject.get("detail")}
    stage = reject["stage"]
    out["download"] = ({"result": "failed", "reason": reject["reason"], "detail": reject.get("detail")}
                       if stage == "download" else {"result": "ok"})
    if stage in ("decode", "filter"):
        out["filters"] = [{"check": f"{stage}/{reject['reason']}", "passed": False, "detail": reject.get("detail")}]
    if stage == "dedup":
        kept = re.search(r"(\d{12})$", reject.get("detail") or "")
        out["dedup"] = {"verdict": reject["reason"], "duplicate_of": kept.group(1) if kept else None,
                        "detail": reject.get("detail")}
        if kept:
            side = ds.manifest.shard(kept.group(1)[:6])
            row = _row(ds.sidecar(side.id, ["key", "url"]), kept.group(1)) if side else None
            out["dedup"]["duplicate_of_url"] = row["url"] if row else None
    return out


def trace(root: str, query: str, cfg: TraceConfig | None = None) -> dict:
    """The journey of the row(s) a key or URL names: {"query", "rows": [...]}."""
    cfg = cfg or TraceConfig()
    ds = Dataset(root)
    if KEY.match(query):
        keys = [query]
    else:
        keys = keys_of_url(ds, query)
        if not keys:
            return {"query": query, "root": ds.storage.uri, "rows": [],
                    "note": "no committed row has this URL (not reached yet, or not in the input)"}
    return {"query": query, "root": ds.storage.uri, "rows": [trace_key(ds, k, cfg) for k in keys]}


# -- text -------------------------------------------------------------------------------------------
def format_trace(result: dict) -> str:
    lines = [f"trace {result['query']!r} in {result['root']}"]
    if not result["rows"]:
        lines.append("  " + result.get("note", "nothing found"))
    for r in result["rows"]:
        inp = r["input"]
        where = (f"{inp['file']} row {inp['row_in_file']}" if "file" in inp else "input file unknown")
        lines += ["", f"{r['key']}: {r['outcome']}",
                  f"  input     row {inp.get('input_row', '?')} of the plan = {where} (shard {inp['shard']}, row {inp['row_in_shard']})"]
        if r["outcome"] == "not committed":
            lines.append("  " + r["note"])
            continue
        lines.append(f"  url       {r.get('url')}")
        d = r["download"]
        lines.append(f"  download  {d['result']}" + (f": {d.get('reason')} ({d.get('detail')})" if d["result"] == "failed" else
                                                    (f", original {d['original_size'][0]}x{d['original_size'][1]}" if d.get("original_size") else "")))
        for f in r.get("filters", []):
            verdict = "pass" if f["passed"] else "REJECT"
            threshold = "off: recorded only" if f.get("threshold") is None else f.get("threshold")
            lines.append(f"  filter    {f['check']}: {verdict}" + (f" (value {f.get('value')}, threshold {threshold})"
                                                                   if "value" in f else f" ({f.get('detail')})"))
        if r["outcome"] == "reject":
            rej = r["reject"]
            lines.append(f"  rejected  at {rej['stage']}: {rej['reason']} ({rej['detail']})")
        if "dedup" in r:
            dd = r["dedup"]
            if "duplicate_of" in dd:
                lines.append(f"  dedup     {dd['verdict']}: duplicate of {dd['duplicate_of']} ({dd.get('duplicate_of_url')})")
            else:
                lines.append(f"  dedup     {dd['verdict']}; {dd['duplicates_dropped']} later row(s) dropped as its duplicates"
                             + "".join(f"\n              {x['key']} {x['reason']} {x['url']}" for x in dd["duplicates"]))
        if "shard" in r and r["outcome"] == "sample":
            s = r["sample"]
            lines.append(f"  shard     {r['shard']['tar']} as {r['key']}.{s.get('ext')} ({s.get('width')}x{s.get('height')})")
        for c in r.get("captions", []):
            head = f"  captions  {c['version']} ({c['backend']}{', ' + c['model'] if c['model'] else ''}): {c['status']}"
            if c.get("from_version") and c["from_version"] != c["version"]:
                head += f" (row from {c['from_version']})"
            if c.get("qa"):
                head += f", QA level-6 accuracy {c['qa']['level_6_accuracy']:.2f}"
            lines.append(head)
            for level, text in (c.get("levels") or {}).items():
                if text:
                    lines.append(f"              L{level}: {text}")
        if "training" in r:
            t = r["training"]
            lines.append(f"  training  {t['run_dir']}: drawn {t['draws']} time(s) in {t['steps']} steps "
                         f"({t['steps_done']} done; global batch {t['global_batch']} on {t['world']} rank(s))")
            for h in t["listed"]:
                lines.append(f"              step {h['step']:6d} (epoch {h['epoch']}, rank {h['rank']}, micro-step {h['micro_step']})"
                             f" {'trained' if h['trained'] else 'planned'}: level {h['level']} of {h['version'] or '-'}: "
                             f"{(h['caption'] or '(empty prompt)')[:100]}")
    return "\n".join(lines)
