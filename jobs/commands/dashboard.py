"""`deepfusion dashboard ROOT`: the dataset dashboard on 127.0.0.1, or one offline HTML file."""

from __future__ import annotations

import argparse
import time

from jobs.grammar import epilog, split

EXAMPLES = """\
examples:
  deepfusion dashboard /data/ds                 # http://127.0.0.1:8765/, refreshes as shards arrive
  deepfusion dashboard /data/ds port=0          # any free port (printed)
  deepfusion dashboard /data/ds export=ds.html  # one offline HTML file, then exit
  deepfusion dashboard /data/ds trace_run=runs/train   # the search box's traces list training steps

The page needs no network: Plotly is bundled from the installed plotly package. The server binds
127.0.0.1 only; use an SSH tunnel to look at a remote cluster's dataset. Every dataset text is
shown as text, never as HTML. The search box traces one row by key or URL (`deepfusion trace`);
an export holds the traces of the rows it shows. Bundled configs: jobs/configs/dashboard/{embedded,production}.yaml."""


def _dashboard(args: argparse.Namespace) -> int:
    from jobs.dashboard import DashboardServer, export_html
    from jobs.dashboard.config import load_dashboard_config
    from jobs.errors import CommandError
    from jobs.profiles import config_path
    from jobs.statistics import load_stats_config, run_stats

    (root, *extra), overrides = split(args.args) if args.args else ([None], [])
    if root is None or extra:
        raise CommandError("dashboard: give one dataset root, then key=value settings")
    cfg = load_dashboard_config(config_path("dashboard", args.config), overrides)
    stats_cfg = config_path("stats", cfg.stats_config)
    if cfg.run_stats:
        run_stats(load_stats_config(stats_cfg, [f"root={root}"]))
    if cfg.export:
        out = export_html(root, cfg.export, traces=cfg.export_traces)
        print(f"dashboard: wrote {out} ({out.stat().st_size / 1e6:.1f} MB, self-contained, works offline)")
        return 0
    server = DashboardServer(root, cfg.host, cfg.port, cfg.refresh_s, cfg.stats_every, stats_config=stats_cfg,
                             trace_run=cfg.trace_run).start()
    print(f"dashboard: serving {root} at {server.url} (statistics every {cfg.stats_every}s; Ctrl-C stops)", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        server.stop()


def register(sub, formatter) -> None:
    from jobs.dashboard.config import DashboardConfig

    p = sub.add_parser("dashboard", help="serve the dataset dashboard on 127.0.0.1, or export it as one HTML file",
                       description=__doc__, epilog=epilog(EXAMPLES, DashboardConfig), formatter_class=formatter)
    p.add_argument("--config", default="embedded", help="a YAML file or a bundled profile name")
    p.add_argument("args", nargs="*", metavar="ROOT [key=value ...]", help="the dataset root, then settings")
    p.set_defaults(run=_dashboard)
