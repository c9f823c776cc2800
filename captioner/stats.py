"""Statistics of a caption version (its overlays resolved): words per level, vocabulary, repeats.

Computed with duckdb over the resolved caption rows and written to
`<root>/stats/captions/<version>.json` for the dashboard. A repeated caption is a level text that
more than one image has: a high rate at the dense levels means the VLM is not looking.
"""

from __future__ import annotations

import json

import duckdb
import pyarrow as pa

from datapipe.contract import CAPTION_STATUS_OK, LEVEL_COLUMNS, Dataset, Storage, utc_now

STATS_DIR = "stats/captions"


def resolved_rows(root: str, version: str) -> pa.Table:
    captions = Dataset(root).captions(version)
    parts = [captions.shard(sid) for sid in captions.shard_ids()]
    return pa.concat_tables(parts, promote_options="default") if parts else pa.table({})


def caption_stats(root: str, version: str) -> dict:
    rows = resolved_rows(root, version)
    if rows.num_rows == 0:
        raise ValueError(f"caption version {version!r} has no rows")
    con = duckdb.connect()
    con.register("rows", rows)
    totals = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE status = $ok), count(*) FILTER (WHERE finish_reason = 'length'), "
        "avg(attempts), sum(prompt_tokens), sum(completion_tokens) FROM rows", {"ok": CAPTION_STATUS_OK}).fetchone()
    levels = {}
    for col in LEVEL_COLUMNS:
        words = f"len(string_split(trim({col}), ' '))"
        mean, p50, p95, top, distinct, n = con.execute(
            f"SELECT avg({words}), quantile_cont({words}, 0.5), quantile_cont({words}, 0.95), max({words}), "
            f"count(DISTINCT {col}), count({col}) FROM rows WHERE status = $ok", {"ok": CAPTION_STATUS_OK}).fetchone()
        vocab = con.execute(
            f"SELECT count(DISTINCT w) FROM (SELECT unnest(regexp_extract_all(lower({col}), '[a-z0-9]+')) AS w "
            f"FROM rows WHERE status = $ok)", {"ok": CAPTION_STATUS_OK}).fetchone()[0]
        levels[col] = {
            "words_mean": round(mean or 0, 2), "words_p50": p50, "words_p95": p95, "words_max": top,
            "vocabulary": vocab, "repeated_rate": round(1 - distinct / n, 4) if n else None,
        }
    failed = dict(con.execute("SELECT split_part(coalesce(error, 'unknown'), ':', 1) AS reason, count(*) FROM rows "
                              "WHERE status <> $ok GROUP BY reason ORDER BY 2 DESC", {"ok": CAPTION_STATUS_OK}).fetchall())
    by_version = dict(con.execute("SELECT version, count(*) FROM rows GROUP BY version ORDER BY 1").fetchall())
    stats = {
        "version": version, "rows": totals[0], "ok": totals[1], "failed": failed,
        "finish_length_rate": round(totals[2] / totals[0], 4), "attempts_mean": round(totals[3] or 0, 3),
        "prompt_tokens": totals[4], "completion_tokens": totals[5], "rows_by_version": by_version,
        "levels": levels, "created_at": utc_now(),
    }
    Storage(root).write_atomic(f"{STATS_DIR}/{version}.json", (json.dumps(stats, indent=1) + "\n").encode())
    return stats


def format_stats(stats: dict) -> str:
    lines = [f"captions {stats['version']}: {stats['rows']} rows, {stats['ok']} ok, failed {stats['failed'] or 0}, "
             f"finish=length {stats['finish_length_rate']:.1%}, attempts/row {stats['attempts_mean']}",
             f"  {'level':<8}{'words':>8}{'p50':>6}{'p95':>7}{'max':>6}{'vocab':>8}{'repeated':>10}"]
    for col, s in stats["levels"].items():
        lines.append(f"  {col:<8}{s['words_mean']:>8}{s['words_p50'] or 0:>6.0f}{s['words_p95'] or 0:>7.0f}"
                     f"{s['words_max'] or 0:>6}{s['vocabulary']:>8}{s['repeated_rate'] or 0:>10.1%}")
    return "\n".join(lines)
