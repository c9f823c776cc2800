"""`deepfusion eval scenes`: how well a checkpoint follows compositional prompts (trainer/eval_scenes)."""

from __future__ import annotations

import argparse

EPILOG = """\
examples:
  deepfusion eval scenes runs/train-small                      # 50 prompts x 2 seeds per category
  deepfusion eval scenes runs/train-small --per-category 100 --seeds 0 1 2 --out runs/eval
  deepfusion eval scenes --reference-only --size 64x64         # the analyser's ceiling and chance only

Categories: colour, rgb (exact values), shape, count, position (left/right/above/below) and
binding (which colour goes with which shape). Each image is scored by a deterministic pixel
analyser calibrated on ground-truth renders at the checkpoint's resolution; every report also
shows the analyser on ground-truth renders (the ceiling) and chance (prompts judged against the
other prompts' scenes), with Wilson 95% intervals.
"""


def _scenes(args: argparse.Namespace) -> int:
    from trainer.eval_scenes import CATEGORIES
    from trainer.eval_scenes.run import EvalConfig, chance, evaluate, format_report, ground_truth
    from trainer.eval_scenes.specs import make_specs

    categories = tuple(args.categories or CATEGORIES)
    cfg = EvalConfig(per_category=args.per_category, seeds=args.seeds, prompt_seed=args.prompt_seed,
                     steps=args.steps, guidance=args.guidance)
    if args.reference_only:
        w, h = (int(v) for v in args.size.lower().split("x"))
        specs = make_specs(cfg.per_category, (w, h), cfg.prompt_seed, categories)
        gt, ch = ground_truth(specs, (w, h)), chance(specs)
        report = {"checkpoint": "(no model: reference rows only)", "resolution": [w, h], "model": None,
                  "ground_truth": gt, "chance": ch}
        print(format_report(report))
        return 0
    if not args.checkpoint:
        raise ValueError("eval scenes: give a run dir or checkpoint, or --reference-only")
    report = evaluate(args.checkpoint, cfg, args.out, categories)
    print(format_report(report))
    if args.out:
        print(f"wrote {report['written']} and grid_<category>.png beside it")
    return 0


def register(sub, formatter) -> None:
    p = sub.add_parser("eval", help="benchmarks of a trained checkpoint", description=__doc__, formatter_class=formatter)
    inner = p.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    s = inner.add_parser("scenes", help="prompt following on synthetic scenes (GenEval-like), per category",
                         description=__doc__, epilog=EPILOG, formatter_class=formatter)
    s.add_argument("checkpoint", nargs="?", help="a run dir (its latest checkpoint) or a checkpoints/step_* folder")
    s.add_argument("--per-category", type=int, default=50, help="prompts per category")
    s.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="one image per prompt and seed")
    s.add_argument("--prompt-seed", type=int, default=2026, help="which held-out prompts")
    s.add_argument("--steps", type=int, default=24, help="Heun sampler steps")
    s.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale")
    s.add_argument("--categories", nargs="+", help="a subset of: colour rgb shape count position binding")
    s.add_argument("--out", help="write report.json and example grids here")
    s.add_argument("--reference-only", action="store_true", help="no model: the ground-truth and chance rows")
    s.add_argument("--size", default="64x64", help="WxH for --reference-only")
    s.set_defaults(run=_scenes)
