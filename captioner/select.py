"""Which rows a regeneration run redoes: a selection over the parent version's resolved captions.

The parent is read shard by shard through the contract's CaptionSet (its own overlays applied),
and each shard's rows are filtered with duckdb, so a predicate is plain SQL and nothing larger
than a shard is held in memory. Columns a `where` condition can use:

    key, shard, level_1 .. level_6, words_1 .. words_6 (word counts), status, model, prompt_id,
    finish_reason, prompt_tokens, completion_tokens, attempts, error, version (which version in
    the chain supplied the row), qa_accuracy (level-6 caption-QA accuracy, when a QA run exists)

e.g. `finish_reason = 'length' OR words_6 < 40`, or `status = 'failed'`.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from datapipe.contract import LEVEL_COLUMNS, CaptionSet, Storage

from .config import SelectConfig

QA_DIR = "stats/caption_qa"


def qa_scores_path(version: str) -> str:
    """Where the caption-QA job leaves per-key scores of a version (read by `qa_below`)."""
    return f"{QA_DIR}/{version}/per_key.parquet"


def _qa_table(storage: Storage, version: str) -> pa.Table | None:
    rel = qa_scores_path(version)
    if not storage.exists(rel):
        return None
    with storage.open(rel) as f:
        return pq.read_table(f, columns=["key", "qa_accuracy"])


def select_rows(storage: Storage, parent: str, select: SelectConfig) -> dict[str, list[str]]:
    """Image shard id -> the keys of that shard the selection picks (shards with none are left out)."""
    parents = CaptionSet(storage, parent)
    shard_ids = parents.shard_ids()
    if select.shards is not None:
        wanted = set(select.shards)
        unknown = sorted(wanted - set(shard_ids))
        if unknown:
            raise ValueError(f"select.shards: {unknown} have no captions in version {parent!r}")
        shard_ids = [s for s in shard_ids if s in wanted]
    qa = _qa_table(storage, parent)
    if select.qa_below is not None and qa is None:
        raise ValueError(f"select.qa_below needs a caption-QA run of {parent!r} ({storage.path(qa_scores_path(parent))} "
                         "is missing): run `deepfusion caption-qa` first")
    conditions = []
    if select.where:
        conditions.append(f"({select.where})")
    if select.prompt_id:
        conditions.append("(prompt_id = $prompt_id OR split_part(prompt_id, '@', 1) = $prompt_id)")
    if select.qa_below is not None:
        conditions.append("qa_accuracy < $qa_below")
    words = ", ".join(f"CASE WHEN trim(coalesce({c}, '')) = '' THEN 0 ELSE len(string_split(trim({c}), ' ')) END "
                      f"AS words_{c.split('_')[1]}" for c in LEVEL_COLUMNS)
    query = f"SELECT key FROM (SELECT *, {words} FROM rows) WHERE {' AND '.join(conditions) or 'TRUE'} ORDER BY key"
    params = {k: v for k, v in (("prompt_id", select.prompt_id), ("qa_below", select.qa_below)) if v is not None}
    con = duckdb.connect()
    picked: dict[str, list[str]] = {}
    for sid in shard_ids:
        rows = parents.shard(sid)
        rows = rows.append_column("shard", pa.array([sid] * rows.num_rows, pa.string()))
        if qa is not None:
            rows = _join_qa(con, rows, qa)
        else:
            rows = rows.append_column("qa_accuracy", pa.nulls(rows.num_rows, pa.float64()))
        con.register("rows", rows)
        try:
            keys = [r[0] for r in con.execute(query, params).fetchall()]
        except duckdb.Error as e:
            raise ValueError(f"select.where {select.where!r} is not a valid condition: {e}") from None
        if keys:
            picked[sid] = keys
    return picked


def _join_qa(con, rows: pa.Table, qa: pa.Table) -> pa.Table:
    con.register("rows_in", rows)
    con.register("qa", qa)
    return con.sql("SELECT r.*, qa.qa_accuracy FROM rows_in r LEFT JOIN qa USING (key)").to_arrow_table()
