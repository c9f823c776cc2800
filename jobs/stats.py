"""Ray job entrypoint for dataset statistics; `deepfusion stats` runs the same job.

    python -m jobs.stats --config embedded root=/data/ds
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python -m jobs.stats --config production root=/data/ds

DuckDB over a slim per-shard cache: a rerun reads only shards committed since the last run.
Writes <root>/stats/summary.json and gallery.json, which the dashboard reads.
Exit code 0: done; 1: the job failed with a one-line message.
"""

from __future__ import annotations

import sys


def run(config: str, overrides: list[str]) -> dict:
    from jobs.commands import config_path
    from jobs.statistics import load_stats_config, run_stats

    return run_stats(load_stats_config(config_path("stats", config), overrides))


def main(argv: list[str] | None = None) -> int:
    from jobs.entry import job_main
    from jobs.statistics import format_summary

    return job_main("python -m jobs.stats", __doc__, run, format_summary, argv)


if __name__ == "__main__":
    sys.exit(main())
