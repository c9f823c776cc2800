"""The statistics job: `deepfusion stats ROOT` embedded, `python -m jobs.stats` as a Ray job.

    deepfusion stats /data/ds
    python -m jobs.stats --config production root=/data/ds
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python -m jobs.stats --config production root=/data/ds

DuckDB over a slim per-shard cache: a rerun reads only shards committed since the last run.
Writes <root>/stats/summary.json and gallery.json, which the dashboard reads.
Exit code 0: done; 1: the job failed with a one-line message.
"""

from __future__ import annotations

import sys

EXAMPLES = """\
examples:
  deepfusion stats /data/ds                     # writes /data/ds/stats/{summary,gallery}.json
  deepfusion stats /data/ds --config production bins=50
  deepfusion stats /data/ds rebuild=true        # ignore the cache, read every shard again

Incremental: the slim per-shard cache under <root>/stats/cache/ is keyed by each shard's sha256
in the manifest, so a rerun reads only shards (and caption shards) committed since. Counts:
inputs, samples, rejects by stage and reason, pass rate per stage, resolution / aspect / score
histograms, duplicates, caption coverage and words per level per version, shard progress.
Bundled configs: jobs/configs/stats/{embedded,production}.yaml."""


def run(config: str, overrides: list[str]) -> dict:
    from .profiles import config_path
    from .statistics import load_stats_config, run_stats

    return run_stats(load_stats_config(config_path("stats", config), overrides))


def _root_first(overrides: list[str]) -> list[str]:
    """`deepfusion stats ROOT key=value ...`: the positional root is the root= setting."""
    return [o if "=" in o else f"root={o}" for o in overrides]


def register(sub, formatter) -> None:
    from .entry import add_job_command
    from .statistics import format_summary
    from .statistics.config import StatsConfig

    add_job_command(sub, formatter, "stats", "dataset statistics with DuckDB into <root>/stats/ (incremental)",
                    __doc__, EXAMPLES, StatsConfig, run, format_summary, _root_first)


def main(argv: list[str] | None = None) -> int:
    from .entry import job_main
    from .statistics import format_summary

    return job_main("python -m jobs.stats", __doc__, lambda c, o: run(c, _root_first(o)), format_summary, argv)


if __name__ == "__main__":
    sys.exit(main())
