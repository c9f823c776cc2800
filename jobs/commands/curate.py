"""`deepfusion curate`: URL lists -> a filtered, deduplicated dataset of committed shards (Ray + img2dataset)."""

from __future__ import annotations

import argparse

EPILOG = """\
examples:
  # the synthetic corpus, served by `deepfusion scenes serve /tmp/scenes`
  deepfusion curate input.paths=[/tmp/scenes/urls.parquet] output=/tmp/ds
  # a LAION-style parquet folder, CLIP filters on, on the Ray cluster you are attached to
  deepfusion curate --config production input.paths=[s3://bucket/laion/] output=s3://bucket/ds \\
      work_dir=/scratch/i2d clip.weights=/models/ViT-L-14.pt
  # the same job submitted to a cluster
  ray job submit --working-dir . -- python -m jobs.curate --config production ...

Every input row ends as a sample (shards/<id>.tar + .parquet) or a reject (rejects/<id>.parquet,
with stage and reason). Re-run the same command after a crash: committed shards are skipped.
Bundled configs: jobs/configs/curate/{embedded,production}.yaml; see datapipe/config.py for every key.
"""


def _curate(args: argparse.Namespace) -> int:
    from jobs.curate import run

    from datapipe.curate import format_summary

    summary = run(args.config, args.overrides)
    print(format_summary(summary))
    return 0


def register(sub, formatter) -> None:
    p = sub.add_parser("curate", help="download, filter and deduplicate URL lists into dataset shards",
                       description=__doc__, epilog=EPILOG, formatter_class=formatter)
    p.add_argument("--config", default="embedded", help="a YAML file or a bundled profile name")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. output=/data/ds shard_size=500")
    p.set_defaults(run=_curate)
