"""`deepfusion stats` and `deepfusion dashboard`: dataset statistics and the page that shows them."""

from __future__ import annotations

import argparse
import json
import time

STATS_EPILOG = """\
examples:
  deepfusion stats /data/ds                     # writes /data/ds/stats/{summary,gallery}.json
  deepfusion stats /data/ds --config production bins=50
  deepfusion stats /data/ds rebuild=true        # ignore the cache, read every shard again

Incremental: the slim per-shard cache under <root>/stats/cache/ is keyed by each shard's sha256
in the manifest, so a rerun reads only shards (and caption shards) committed since. Counts:
inputs, samples, rejects by stage and reason, pass rate per stage, resolution / aspect / score
histograms, duplicates, caption coverage and words per level per version, shard progress.
Bundled configs: jobs/configs/stats/{embedded,production}.yaml.
"""

DASHBOARD_EPILOG = """\
examples:
  deepfusion dashboard /data/ds                 # http://127.0.0.1:8765/, refreshes as shards arrive
  deepfusion dashboard /data/ds port=0          # any free port (printed)
  deepfusion dashboard /data/ds --export ds.html   # one offline HTML file, then exit

The page needs no network: Plotly is bundled from the installed plotly package. The server binds
127.0.0.1 only; use an SSH tunnel to look at a remote cluster's dataset. Every dataset text is
shown as text, never as HTML. Bundled configs: jobs/configs/dashboard/{embedded,production}.yaml.
"""


def _stats(args: argparse.Namespace) -> int:
    from jobs.commands import config_path
    from jobs.statistics import format_summary, load_stats_config, run_stats

    cfg = load_stats_config(config_path("stats", args.config), [f"root={args.root}", *args.overrides])
    run = run_stats(cfg)
    print(format_summary(run))
    if args.summary_json:
        with open(args.summary_json, "w") as f:
            json.dump(run, f, indent=1)
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    from jobs.commands import config_path
    from jobs.dashboard import DashboardServer, export_html
    from jobs.dashboard.config import load_dashboard_config
    from jobs.statistics import load_stats_config, run_stats

    cfg = load_dashboard_config(config_path("dashboard", args.config), args.overrides)
    stats_cfg = config_path("stats", cfg.stats_config)
    if not args.no_stats:
        run_stats(load_stats_config(stats_cfg, [f"root={args.root}"]))
    if args.export:
        out = export_html(args.root, args.export)
        print(f"dashboard: wrote {out} ({out.stat().st_size / 1e6:.1f} MB, self-contained, works offline)")
        return 0
    server = DashboardServer(args.root, cfg.host, cfg.port, cfg.refresh_s, cfg.stats_every,
                             stats_config=stats_cfg).start()
    print(f"dashboard: serving {args.root} at {server.url} (statistics every {cfg.stats_every}s; Ctrl-C stops)",
          flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        server.stop()


def register(sub, formatter) -> None:
    p = sub.add_parser("stats", help="dataset statistics with DuckDB into <root>/stats/ (incremental)",
                       description=__doc__, epilog=STATS_EPILOG, formatter_class=formatter)
    p.add_argument("root", help="the dataset root")
    p.add_argument("--config", default="embedded", help="a YAML file or a bundled profile name")
    p.add_argument("--summary-json", help="also write the run summary to this file")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. bins=50")
    p.set_defaults(run=_stats)

    p = sub.add_parser("dashboard", help="serve the dataset dashboard on 127.0.0.1, or export it as one HTML file",
                       description=__doc__, epilog=DASHBOARD_EPILOG, formatter_class=formatter)
    p.add_argument("root", help="the dataset root")
    p.add_argument("--config", default="embedded", help="a YAML file or a bundled profile name")
    p.add_argument("--export", metavar="FILE", help="write one self-contained HTML file and exit")
    p.add_argument("--no-stats", action="store_true", help="do not run the statistics first (serve what is there)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. port=0 stats_every=0")
    p.set_defaults(run=_dashboard)
