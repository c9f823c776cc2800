"""`deepfusion stats` over 100k synthetic sidecar rows: a cold run, reruns, and a bare DuckDB baseline.

    .venv/bin/python benchmarks/stats_scale.py --shards 50 --rows 2000

The dataset (jobs/statistics/synthetic.py): `--shards` committed shards of `--rows` input rows
each (about 1 in 7 a reject), tiny PNGs, caption versions v1 (every key) and v1-fix (an overlay of
half the keys). Measured in one run, same machine:

- baseline: one hand-written DuckDB query over all sidecars and rejects (the headline counts and
  a resolution histogram only), what a user would write without the stats job;
- cold: the stats job on an empty cache (reads every shard, caption shard and gallery thumbnail);
- rerun: nothing new committed (the incremental path: manifest check, aggregation over the cache);
- +1 shard: one shard (and its v1 captions) committed, then the stats job again.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=50)
    ap.add_argument("--rows", type=int, default=2000, help="input rows per shard")
    ap.add_argument("--workdir", help="keep the dataset here (default: a temporary folder)")
    args = ap.parse_args()

    import duckdb

    from datapipe.contract import Storage
    from jobs.statistics import load_stats_config, run_stats
    from scenes.stats_dataset import make_dataset, write_captions, write_shard

    work = Path(args.workdir or tempfile.mkdtemp(prefix="stats-bench-"))
    root = work / "ds"
    if root.exists():
        shutil.rmtree(root)
    t_make, keys = timed(lambda: make_dataset(str(root), args.shards, args.rows, image_side=8))
    rows = sum(len(k) for k in keys.values())
    print(f"dataset: {args.shards} shards, {args.shards * args.rows} input rows, {rows} samples, "
          f"captions v1 + v1-fix, made in {t_make:.1f}s under {root}")

    def baseline():
        con = duckdb.connect()
        con.execute(f"SELECT count(*), avg(greatest(original_width, original_height)) FROM read_parquet('{root}/shards/*.parquet')").fetchall()
        con.execute(f"SELECT stage, reason, count(*) FROM read_parquet('{root}/rejects/*.parquet') GROUP BY ALL").fetchall()
        return con.execute(f"SELECT floor(greatest(original_width, original_height) / 16) AS b, count(*) "
                           f"FROM read_parquet('{root}/shards/*.parquet') GROUP BY b").fetchall()

    cfg = load_stats_config(str(ROOT / "jobs/configs/stats/embedded.yaml"), [f"root={root}"])
    t_base, _ = timed(baseline)
    t_cold, cold = timed(lambda: run_stats(cfg, progress=False))
    t_rerun, rerun = timed(lambda: run_stats(cfg, progress=False))
    new = write_shard(Storage(str(root)), args.shards, args.rows, image_side=8, seed=1)
    write_captions(Storage(str(root)), "v1", {f"{args.shards:06d}": new}, seed=7)
    t_plus, plus = timed(lambda: run_stats(cfg, progress=False))
    assert rerun["shards_read"] == 0 and plus["shards_read"] == 1, (rerun, plus)
    assert cold["headline"]["inputs"] == args.shards * args.rows

    print(f"{'':<34}{'seconds':>9}{'rows/s':>12}{'vs baseline':>13}")
    for name, t in (("baseline: bare DuckDB (3 queries)", t_base), ("stats job, cold cache", t_cold),
                    ("stats job, rerun (nothing new)", t_rerun), ("stats job, +1 shard", t_plus)):
        print(f"{name:<34}{t:>9.2f}{args.shards * args.rows / t:>12,.0f}{t / t_base:>12.1f}x")
    print(f"cold run split: cache {cold['seconds']['cache']}s, aggregate {cold['seconds']['aggregate']}s; "
          f"rerun split: cache {rerun['seconds']['cache']}s, aggregate {rerun['seconds']['aggregate']}s")
    if not args.workdir:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
