"""The caption job: `deepfusion caption` / `recaption` embedded, `python -m jobs.caption` as a Ray job.

    deepfusion caption root=/data/ds version=v1 model=/models/tiny-qwen2-vl
    python -m jobs.caption --config production root=/data/ds version=qwen2vl-7b-v1 model=/models/Qwen2-VL-7B
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python -m jobs.caption --config production root=/data/ds version=qwen2vl-7b-v1 model=/models/Qwen2-VL-7B

Six caption levels per image into captions/<version>/. Inside `ray job submit` the driver joins
the job's cluster; elsewhere it starts a local Ray. Exit code 0: done (or nothing left to do);
1: the job failed with a message (a rerun resumes).
"""

from __future__ import annotations

import sys

CAPTION_EXAMPLES = """\
examples:
  # a local VLM folder through the vLLM engine on a local Ray (CPU profile)
  deepfusion caption root=/tmp/ds version=v1 model=/models/Qwen2-VL-2B-Instruct
  # a dry run with a tiny random Qwen2-VL built into /tmp/tiny-vlm (its words are noise)
  deepfusion caption tiny_model=/tmp/tiny-vlm root=/tmp/ds version=tiny-v1
  # a vLLM server you run (python -m vllm.entrypoints.openai.api_server --model M --port 8000)
  deepfusion caption root=/tmp/ds version=srv-v1 backend=openai model=M server.base_url=http://127.0.0.1:8000/v1
  # the source alt text / the scenes ground truth as caption versions
  deepfusion caption root=/tmp/ds version=alt backend=alt
  deepfusion caption root=/tmp/ds version=reference backend=reference corpus=/tmp/scenes
  # keep captioning shards a running curation job commits
  deepfusion caption root=/tmp/ds version=v1 model=... follow.enabled=true

A version name means one set of settings (backend, model, prompt set, sampling): re-run the same
command after a crash and finished shards are skipped; other settings need another version name.
Every key gets one row: ok, or failed with its reason and the raw answer (after max_attempts).
Bundled configs: jobs/configs/caption/{embedded,production}.yaml. Besides the keys below,
tiny_model=DIR builds a tiny random Qwen2-VL in DIR and captions with it (a dry run).
"""

RECAPTION_EXAMPLES = """\
examples:
  # redo the answers that hit max_tokens or whose densest level is short
  deepfusion recaption root=/tmp/ds parent=v1 version=v1-fix model=... \\
      "select.where=finish_reason = 'length' OR words_6 < 120"
  # redo failed rows, or rows written with an older prompt set, or two shards
  deepfusion recaption root=/tmp/ds parent=v1 version=v1-r2 model=... "select.where=status = 'failed'"
  deepfusion recaption root=/tmp/ds parent=v1 version=v1-p2 model=... select.prompt_id=six-levels-v0
  deepfusion recaption root=/tmp/ds parent=v1 version=v1-s model=... select.shards=[000003,000007]
  # rows whose caption-QA accuracy (level 6) is below 0.5 (needs `deepfusion caption-qa` first)
  deepfusion recaption root=/tmp/ds parent=v1 version=v1-qa model=... select.qa_below=0.5

The new version holds only the selected rows and names its parent; readers of the new version
see the parent with those rows replaced (a failed regeneration never hides a good parent row).
Columns for select.where: key, shard, level_1..6, words_1..6, status, model, prompt_id,
finish_reason, prompt_tokens, completion_tokens, attempts, error, version, qa_accuracy.
"""


def run(config: str, overrides: list[str]) -> dict:
    from captioner.config import load_caption_config
    from captioner.run import caption

    from .profiles import config_path

    return caption(load_caption_config(config_path("caption", config), overrides))


def _with_tiny_model(overrides: list[str]) -> list[str]:
    """The command-only key tiny_model=DIR: build a tiny random Qwen2-VL there and use it as model."""
    out = []
    for item in overrides:
        if item.startswith("tiny_model="):
            from captioner.tiny_vlm import build_tiny_qwen2_vl

            out.append(f"model={build_tiny_qwen2_vl(item.split('=', 1)[1])}")
        else:
            out.append(item)
    return out


def _needs_parent(overrides: list[str]) -> list[str]:
    from .errors import CommandError

    if not any(o.startswith("parent=") for o in overrides):
        raise CommandError("recaption needs parent=<version> (the version whose rows it regenerates)")
    return _with_tiny_model(overrides)


def _run_or_explain(config: str, overrides: list[str]) -> dict:
    from captioner.backends.openai_server import ServerUnavailable

    from .errors import CommandError

    try:
        return run(config, overrides)
    except ServerUnavailable as e:
        raise CommandError(f"{e} -- the committed shards are kept; re-run the same command to resume") from None


def register(sub, formatter) -> None:
    from captioner.config import CaptionConfig
    from captioner.run import format_summary

    from .entry import add_job_command

    add_job_command(sub, formatter, "caption", "caption committed shards with a VLM (vLLM engine or server) or "
                    "alt/reference", __doc__, CAPTION_EXAMPLES, CaptionConfig, _run_or_explain, format_summary,
                    _with_tiny_model)
    add_job_command(sub, formatter, "recaption", "regenerate a selected subset of a caption version as an overlay "
                    "version", __doc__, RECAPTION_EXAMPLES, CaptionConfig, _run_or_explain, format_summary,
                    _needs_parent)


def main(argv: list[str] | None = None) -> int:
    from captioner.backends.openai_server import ServerUnavailable
    from captioner.run import format_summary

    from .entry import job_main

    return job_main("python -m jobs.caption", __doc__, run, format_summary, argv, known_errors=(ServerUnavailable,))


if __name__ == "__main__":
    sys.exit(main())
