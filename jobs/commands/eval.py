"""`deepfusion eval scenes`: how well a checkpoint follows compositional prompts (jobs/eval_scenes.py, scenes/analyse.py)."""

from __future__ import annotations

import argparse

EPILOG = """\
examples:
  deepfusion eval scenes runs/train-small                       # 50 prompts x 2 seeds per category
  deepfusion eval scenes runs/train-small out=runs/eval per_category=100 "seeds=[0,1,2]"
  deepfusion eval scenes runs/train-small "categories=[colour,count]" steps=50 guidance=4.5
  deepfusion eval scenes reference_only=true size=64x64        # the analyser's ceiling and chance only

Categories: colour, shape, count, position (left/right/above/below) and binding (which colour
goes with which shape; prompts in attribute-swap pairs, also scored as pairs); rgb (exact values)
and shape_colourless are outside the training captions' distribution and reported apart from the
mean, as are the long prompts (colour_long, binding_long: each scene's level-5 caption). Binding is
also scored per slot (the first- and the second-named object). Position and binding are also scored conditional on both objects being found. Each image is
scored by a deterministic pixel analyser calibrated on ground-truth renders at the checkpoint's
resolution; every report also shows the model's samples for the empty prompt (unconditional), the
analyser on ground-truth renders (the ceiling) and chance (prompts judged against the other
prompts' scenes), with Wilson 95% intervals; and an image-quality number beside alignment: the
clean-scene rate (solid objects, no specks, a flat background) of the samples, of ground-truth
renders and of downscaled training-like renders. Text use (text_use=N prompts per category, 0 =
off): whether the denoiser reads each attribute at all, from its held-out losses with the right
prompt, with only the tested attribute changed and with the empty prompt (an attribute gain of
about 0: that word is not read, whatever a few samples show). Bundled configs:
jobs/configs/eval/{embedded,production}.yaml."""


def _scenes(args: argparse.Namespace) -> int:
    from jobs.profiles import config_path
    from jobs.eval_scenes import chance, evaluate, format_report, ground_truth, load_eval_config
    from scenes.eval_prompts import make_specs

    # one positional list: argparse cannot tell an optional CHECKPOINT from the first KEY=VALUE
    overrides = [a for a in args.args if "=" in a]
    checkpoints = [a for a in args.args if "=" not in a]
    if len(checkpoints) > 1:
        raise ValueError(f"eval scenes: one checkpoint at a time, got {checkpoints}")
    checkpoint = checkpoints[0] if checkpoints else None
    cfg = load_eval_config(config_path("eval", args.config), overrides)
    if cfg.reference_only:
        w, h = (int(v) for v in cfg.size.lower().split("x"))
        specs = make_specs(cfg.per_category, (w, h), cfg.prompt_seed, tuple(cfg.categories))
        report = {"checkpoint": "(no model: reference rows only)", "resolution": [w, h], "model": None,
                  "ground_truth": ground_truth(specs, (w, h)), "chance": chance(specs)}
        print(format_report(report))
        return 0
    if not checkpoint:
        raise ValueError("eval scenes: give a run dir or checkpoint, or reference_only=true")
    report = evaluate(checkpoint, cfg, cfg.out)
    print(format_report(report))
    if cfg.out:
        print(f"wrote {report['written']}, samples.png and grid_<category>.png beside it")
    return 0


def register(sub, formatter) -> None:
    from jobs.eval_scenes import EvalConfig
    from jobs.grammar import epilog

    p = sub.add_parser("eval", help="benchmarks of a trained checkpoint", description=__doc__, formatter_class=formatter)
    inner = p.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    s = inner.add_parser("scenes", help="prompt following on synthetic scenes (GenEval-like), per category",
                         description=__doc__, epilog=epilog(EPILOG, EvalConfig), formatter_class=formatter)
    s.add_argument("--config", default="embedded", help="a YAML file or a bundled profile name")
    s.add_argument("args", nargs="*", metavar="[CHECKPOINT] [key=value ...]",
                   help="a run dir (its latest checkpoint) or a checkpoints/step_* folder, then settings "
                   "such as per_category=20 seeds=[0]")
    s.set_defaults(run=_scenes)
