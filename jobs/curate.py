"""Ray job entrypoint for curation; the same job `deepfusion curate` runs embedded.

    python -m jobs.curate --config jobs/configs/curate/embedded.yaml input.paths=[urls.parquet] output=/data/ds
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python -m jobs.curate --config jobs/configs/curate/production.yaml output=/data/ds

Inside `ray job submit` the driver joins the job's cluster; elsewhere it starts a local Ray.
Exit code 0: done (or nothing left to do); 1: the job failed with a message.
"""

from __future__ import annotations

import sys


def run(config: str, overrides: list[str]) -> dict:
    from datapipe.config import load_curate_config
    from datapipe.curate import curate

    from jobs.commands import config_path

    return curate(load_curate_config(config_path("curate", config), overrides))


def main(argv: list[str] | None = None) -> int:
    from datapipe.curate import format_summary

    from jobs.entry import job_main

    return job_main("python -m jobs.curate", __doc__, run, format_summary, argv)


if __name__ == "__main__":
    sys.exit(main())
