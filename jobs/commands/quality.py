"""`deepfusion caption-qa` and `caption-stats`: how good a caption version is (jobs/caption_qa.py,
captioner/stats.py)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from jobs.grammar import epilog, settings, split

QA_EXAMPLES = """\
examples:
  deepfusion caption-qa /tmp/ds v1 corpus=/tmp/scenes
  deepfusion caption-qa /tmp/ds reference corpus=/tmp/scenes llm=smollm2 llm_levels=[1,6]

Questions (colour, shape, count, position, text, background) come from each scene's graph; every
caption level is asked each one. Judges: a deterministic matcher (always) and, with llm=..., an LLM
served by vLLM that picks an answer by guided choice (about a second per question and level on a
CPU: use max_keys / llm_levels there). Writes stats/caption_qa/<version>/{summary.json,
per_key.parquet}; `recaption select.qa_below=X` reads per_key.parquet.
"""


@dataclass
class CaptionQASettings:
    corpus: str = ""  # the scenes corpus the dataset was curated from (its ground truth)
    llm: str | None = None  # LLM judge: smollm2 (embedded), a local model folder or a .gguf file
    llm_levels: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5, 6])  # levels the LLM judge answers from
    max_keys: int | None = None  # judge at most about this many images

    def __post_init__(self):
        if not self.corpus:
            raise ValueError("caption-qa needs corpus=DIR (the scenes corpus with ground_truth.parquet)")


def _two(args, what: str) -> tuple[str, str, list[str]]:
    from jobs.errors import CommandError

    positionals, overrides = split(args.args)
    if len(positionals) != 2:
        raise CommandError(f"{what}: give ROOT VERSION, then key=value settings")
    return positionals[0], positionals[1], overrides


def _caption_qa(args: argparse.Namespace) -> int:
    from jobs.caption_qa import caption_qa, format_qa

    root, version, overrides = _two(args, "caption-qa")
    s = settings(CaptionQASettings, overrides)
    llm = None
    if s.llm:
        from model.text_encoder import resolve_source

        llm = str(resolve_source(s.llm))
    print(format_qa(caption_qa(root, version, s.corpus, llm, s.max_keys, tuple(s.llm_levels))))
    return 0


def _caption_stats(args: argparse.Namespace) -> int:
    from captioner.stats import caption_stats, format_stats

    root, version, _ = _two(args, "caption-stats")
    print(format_stats(caption_stats(root, version)))
    return 0


def register(sub, formatter) -> None:
    p = sub.add_parser("caption-qa", help="CapsBench-style QA of a caption version against scene graphs",
                       description=__doc__, epilog=epilog(QA_EXAMPLES, CaptionQASettings), formatter_class=formatter)
    p.add_argument("args", nargs="*", metavar="ROOT VERSION [key=value ...]",
                   help="the dataset root, the caption version (overlays resolved), then settings")
    p.set_defaults(run=_caption_qa)
    p = sub.add_parser("caption-stats", help="words per level, vocabulary and repeated-caption rate of a version",
                       description=__doc__, formatter_class=formatter,
                       epilog="example: deepfusion caption-stats runs/curated qwen2vl-v1   (writes "
                       "ROOT/stats/captions/VERSION.json; `deepfusion stats` covers every version at once)")
    p.add_argument("args", nargs="*", metavar="ROOT VERSION", help="the dataset root and the caption version")
    p.set_defaults(run=_caption_stats)
