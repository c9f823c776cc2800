"""The curation job: `deepfusion curate` embedded, `python -m jobs.curate` as a Ray job.

    deepfusion curate input.paths=[urls.parquet] output=/data/ds
    python -m jobs.curate --config production input.paths=[s3://bucket/urls/] output=s3://bucket/ds
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python -m jobs.curate --config production output=/data/ds work_dir=/scratch/i2d

URL lists -> img2dataset on Ray -> decode/size/CLIP/heads filters -> dedup across the dataset ->
committed shards + rejects. Inside `ray job submit` the driver joins the job's cluster; elsewhere
it starts a local Ray. Exit code 0: done (or nothing left to do); 1: the job failed with a message.
"""

from __future__ import annotations

import sys

EXAMPLES = """\
examples:
  # the synthetic corpus, served by `deepfusion scenes serve /tmp/scenes` on 127.0.0.1:8765
  deepfusion curate input.paths=[/tmp/scenes/urls.parquet] output=/tmp/ds download.url_policy.allow=[127.0.0.1:8765]
  # a LAION-style parquet folder, CLIP filters on, on the Ray cluster you are attached to
  deepfusion curate --config production input.paths=[s3://bucket/laion/] output=s3://bucket/ds \\
      work_dir=/scratch/i2d clip.weights=/models/ViT-L-14.pt
  # the same job submitted to a cluster
  ray job submit --working-dir . -- python -m jobs.curate --config production ...

Every input row ends as a sample (shards/<id>.tar + .parquet) or a reject (rejects/<id>.parquet,
with stage and reason). Re-run the same command after a crash: committed shards are skipped.
Bundled configs: jobs/configs/curate/{embedded,production}.yaml."""


def run(config: str, overrides: list[str]) -> dict:
    from datapipe.config import load_curate_config
    from datapipe.curate import curate

    from .profiles import config_path

    return curate(load_curate_config(config_path("curate", config), overrides))


def register(sub, formatter) -> None:
    from datapipe.config import CurateConfig
    from datapipe.curate import format_summary

    from .entry import add_job_command

    add_job_command(sub, formatter, "curate", "download, filter and deduplicate URL lists into dataset shards",
                    __doc__, EXAMPLES, CurateConfig, run, format_summary)


def main(argv: list[str] | None = None) -> int:
    from datapipe.curate import format_summary

    from .entry import job_main

    return job_main("python -m jobs.curate", __doc__, run, format_summary, argv)


if __name__ == "__main__":
    sys.exit(main())
