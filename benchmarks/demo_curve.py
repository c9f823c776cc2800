"""Prompt following and image quality vs training images, for one training run with several checkpoints.

    .venv/bin/deepfusion train --config demo data.root=demo/dataset run_dir=/tmp/curve steps=4200 \\
        checkpoint.every_steps=700 checkpoint.keep_last=10
    .venv/bin/python benchmarks/demo_curve.py /tmp/curve            # -> /tmp/curve/curve/{curve.png,curve.json}

Every checkpoint under RUN/checkpoints is scored by `eval scenes` (the demo's eval settings: 20
prompts per in-distribution category, one sampling seed, 16 Heun steps, guidance 3); a checkpoint
whose RUN/curve/STEP/report.json exists is read, not scored again. Prints a markdown table (each
category, the mean with its interval, the clean-scene rate) and draws the mean, shape, count,
position and clean-scene rate against the images the checkpoint had seen.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CATEGORIES = ["colour", "shape", "count", "position", "binding"]


def drawn(categories: list[str]) -> list[str]:
    """The lines of the plot: the mean, every scored category but colour and binding, clean scenes."""
    return ["mean"] + [c for c in categories if c not in ("colour", "binding")] + ["clean scenes"]


def score(run: Path, out: Path, overrides: list[str], categories: list[str]) -> list[dict]:
    from jobs.eval_scenes import evaluate, load_eval_config

    cfg = load_eval_config(None, overrides)
    points = []
    for ckpt in sorted((run / "checkpoints").glob("step_*")):
        report_path = out / ckpt.name / "report.json"
        if report_path.exists():
            report = json.loads(report_path.read_text())
        else:
            report = evaluate(str(ckpt), cfg, out / ckpt.name)
        images = json.loads((ckpt / "inference.json").read_text())["images"]
        model = report["model"]
        points.append({"step": int(ckpt.name.split("_")[1]), "images": images,
                       **{c: model[c]["accuracy"] for c in categories if c in model},
                       "mean": model["overall"]["accuracy"], "mean_ci95": model["overall"]["ci95"],
                       "clean scenes": report["quality"]["model"]["accuracy"]})
    return points


def table(points: list[dict], categories: list[str]) -> str:
    lines = ["| images seen | " + " | ".join(categories) + " | mean [95%] | clean scenes |",
             "|---" * (len(categories) + 3) + "|"]
    for p in points:
        lo, hi = p["mean_ci95"]
        cells = [f"{p[c]:.0%}" if c in p else "-" for c in categories]
        lines.append(f"| {p['images']:,} | " + " | ".join(cells) + f" | {p['mean']:.1%} [{lo:.2f},{hi:.2f}] | "
                     f"{p['clean scenes']:.0%} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a training run dir with checkpoints/step_*")
    ap.add_argument("--out", type=Path, default=None, help="default: RUN/curve")
    ap.add_argument("--per-category", type=int, default=20)
    ap.add_argument("--seeds", default="0", help="sampling seeds, comma-separated")
    ap.add_argument("--steps", type=int, default=16, help="Heun sampler steps")
    ap.add_argument("--categories", nargs="+", default=CATEGORIES, choices=CATEGORIES,
                    help="in-distribution categories to score (the mean is over these); e.g. colour shape for a "
                         "corpus of single shapes")
    a = ap.parse_args()
    out = a.out or a.run / "curve"
    overrides = [f"per_category={a.per_category}", f"seeds=[{a.seeds}]", f"steps={a.steps}",
                 f"categories=[{','.join(a.categories)}]"]
    points = score(a.run, out, overrides, a.categories)
    if not points:
        raise SystemExit(f"no checkpoints under {a.run / 'checkpoints'}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "curve.json").write_text(json.dumps({"run": str(a.run), "eval": overrides, "points": points}, indent=1))
    from benchmarks.ablation import plot_curves

    plot_curves({name: [[{"images": p["images"], "mean": p[name]} for p in points]] for name in drawn(a.categories)},
                out / "curve.png", title=f"eval scenes vs training images: {a.run.name}")
    print(table(points, a.categories))
    print(f"\n{out / 'curve.png'}")


if __name__ == "__main__":
    main()
