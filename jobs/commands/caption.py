"""`deepfusion caption` / `recaption`: six caption levels per image into captions/<version>/."""

from __future__ import annotations

import argparse

from jobs.commands import CommandError

CAPTION_EPILOG = """\
examples:
  # a local VLM folder through the vLLM engine on a local Ray (CPU profile)
  deepfusion caption root=/tmp/ds version=v1 model=/models/Qwen2-VL-2B-Instruct
  # a dry run with a tiny random Qwen2-VL built into /tmp/tiny-vlm (its words are noise)
  deepfusion caption --tiny-model /tmp/tiny-vlm root=/tmp/ds version=tiny-v1
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
Bundled configs: jobs/configs/caption/{embedded,production}.yaml; see captioner/config.py.
"""

RECAPTION_EPILOG = """\
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


def _caption(args: argparse.Namespace) -> int:
    from captioner.backends.openai_server import ServerUnavailable
    from captioner.run import format_summary

    from jobs.caption import run

    overrides = list(args.overrides)
    if args.tiny_model:
        from captioner.tiny_vlm import build_tiny_qwen2_vl

        overrides.append(f"model={build_tiny_qwen2_vl(args.tiny_model)}")
    try:
        summary = run(args.config, overrides)
    except ServerUnavailable as e:
        raise CommandError(f"{e} -- the committed shards are kept; re-run the same command to resume") from None
    print(format_summary(summary))
    return 0


def _recaption(args: argparse.Namespace) -> int:
    if not any(o.startswith("parent=") for o in args.overrides):
        raise CommandError("recaption needs parent=<version> (the version whose rows it regenerates)")
    return _caption(args)


QA_EPILOG = """\
examples:
  deepfusion caption-qa /tmp/ds v1 --corpus /tmp/scenes
  deepfusion caption-qa /tmp/ds reference --corpus /tmp/scenes --llm smollm2 --llm-levels 1,6

Questions (colour, shape, count, position, text, background) come from each scene's graph; every
caption level is asked each one. Judges: a deterministic matcher (always) and, with --llm, an LLM
served by vLLM that picks an answer by guided choice (about a second per question and level on a
CPU: use --max-keys / --llm-levels there). Writes stats/caption_qa/<version>/{summary.json,
per_key.parquet}; `recaption select.qa_below=X` reads per_key.parquet.
"""


def _caption_qa(args: argparse.Namespace) -> int:
    from captioner.qa import caption_qa, format_qa

    llm = None
    if args.llm:
        from model.text_encoder import resolve_source

        llm = str(resolve_source(args.llm))
    levels = tuple(int(v) for v in args.llm_levels.split(","))
    print(format_qa(caption_qa(args.root, args.version, args.corpus, llm, args.max_keys, levels)))
    return 0


def _caption_stats(args: argparse.Namespace) -> int:
    from captioner.stats import caption_stats, format_stats

    print(format_stats(caption_stats(args.root, args.version)))
    return 0


def _add(sub, formatter, name: str, help: str, epilog: str, handler) -> None:
    p = sub.add_parser(name, help=help, description=__doc__, epilog=epilog, formatter_class=formatter)
    p.add_argument("--config", default="embedded", help="a YAML file or a bundled profile name")
    p.add_argument("--tiny-model", metavar="DIR", help="build a tiny random Qwen2-VL in DIR and use it as model")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. root=/data/ds version=v1")
    p.set_defaults(run=handler)


def register(sub, formatter) -> None:
    _add(sub, formatter, "caption", "caption committed shards with a VLM (vLLM engine or server) or alt/reference",
         CAPTION_EPILOG, _caption)
    _add(sub, formatter, "recaption", "regenerate a selected subset of a caption version as an overlay version",
         RECAPTION_EPILOG, _recaption)
    p = sub.add_parser("caption-qa", help="CapsBench-style QA of a caption version against scene graphs",
                       description=__doc__, epilog=QA_EPILOG, formatter_class=formatter)
    p.add_argument("root", help="the dataset root")
    p.add_argument("version", help="the caption version to judge (overlays resolved)")
    p.add_argument("--corpus", required=True, help="the scenes corpus the dataset was curated from")
    p.add_argument("--llm", help="LLM judge: 'smollm2' (embedded), a local model folder or a .gguf file")
    p.add_argument("--llm-levels", default="1,2,3,4,5,6", help="levels the LLM judge answers from")
    p.add_argument("--max-keys", type=int, help="judge at most about this many images")
    p.set_defaults(run=_caption_qa)
    p = sub.add_parser("caption-stats", help="words per level, vocabulary and repeated-caption rate of a version",
                       description=__doc__, formatter_class=formatter,
                       epilog="example: deepfusion caption-stats runs/curated qwen2vl-v1   (writes "
                       "ROOT/stats/captions/VERSION.json; `deepfusion stats` covers every version at once)")
    p.add_argument("root", help="the dataset root")
    p.add_argument("version", help="the caption version (overlays resolved)")
    p.set_defaults(run=_caption_stats)
