"""Ray job entrypoint for captioning; the same job `deepfusion caption` / `recaption` runs embedded.

    python -m jobs.caption --config embedded root=/data/ds version=v1 model=/models/tiny-qwen2-vl
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python -m jobs.caption --config production root=/data/ds version=qwen2vl-7b-v1 model=/models/Qwen2-VL-7B

Inside `ray job submit` the driver joins the job's cluster; elsewhere it starts a local Ray.
Exit code 0: done (or nothing left to do); 1: the job failed with a message (a rerun resumes).
"""

from __future__ import annotations

import sys


def run(config: str, overrides: list[str]) -> dict:
    from captioner.config import load_caption_config
    from captioner.run import caption

    from jobs.commands import config_path

    return caption(load_caption_config(config_path("caption", config), overrides))


def main(argv: list[str] | None = None) -> int:
    from captioner.backends.openai_server import ServerUnavailable
    from captioner.run import format_summary

    from jobs.entry import job_main

    return job_main("python -m jobs.caption", __doc__, run, format_summary, argv, known_errors=(ServerUnavailable,))


if __name__ == "__main__":
    sys.exit(main())
