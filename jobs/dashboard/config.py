"""Settings of `deepfusion dashboard` (jobs/configs/dashboard/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass

from common.config import load_yaml_config


@dataclass
class DashboardConfig:
    host: str = "127.0.0.1"
    port: int = 8765  # 0: any free port
    refresh_s: float = 5
    stats_every: float = 10
    stats_config: str = "embedded"  # the statistics profile (or YAML file) the page re-runs
    export: str | None = None  # write the page as one self-contained offline HTML file here, then exit
    run_stats: bool = True  # run the statistics first (false: serve what stats/ already holds)
    trace_run: str | None = None  # a training run dir: the search box's traces also list its steps
    export_traces: int = 200  # rows whose traces an export holds (its gallery's, then reject examples)

    def __post_init__(self):
        if self.refresh_s <= 0:
            raise ValueError(f"dashboard: refresh_s must be > 0, got {self.refresh_s}")


def load_dashboard_config(path: str | None, overrides: list[str] | None = None) -> DashboardConfig:
    return load_yaml_config(DashboardConfig, path, overrides)
