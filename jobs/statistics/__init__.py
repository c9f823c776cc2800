"""Dataset statistics: an incremental per-shard cache, then DuckDB aggregates for the dashboard.

    refresh_cache(cfg)  -> reads only shards (and caption shards) not cached yet, by sha256
    aggregate(cfg)      -> <root>/stats/summary.json and <root>/stats/gallery.json
    run_stats(cfg)      -> both, under a lock; what `deepfusion stats` and `python -m jobs.stats` run
"""

from .config import StatsConfig, load_stats_config
from .run import format_summary, run_stats

__all__ = ["StatsConfig", "load_stats_config", "run_stats", "format_summary"]
