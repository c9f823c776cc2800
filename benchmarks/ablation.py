"""The conditioning ablation at equal compute: deep fusion vs last layer vs LI-DiT refiner, and
caption-level sampling vs level-6-only, each trained on the same data and scored by `eval scenes`.

    .venv/bin/python benchmarks/ablation.py --n 1500 --steps 400 --workdir /tmp/ablation

One synthetic scenes dataset (reference captions, 1-2 object groups, 64x64 renders); every arm
trains the same DiT shape with the same steps, batch, optimiser, seed and data order, reading the
real SmolLM2-135M (jobs/configs/train/demo.yaml, 32x32 pixels), and differs only in the named
override. Equal compute means equal DiT steps x batch; the encoder is frozen and shared. Then
`eval scenes` on held-out prompts (colour, exact RGB, shape, count, position, binding) with the
same prompts and seeds for every arm; the table lists accuracy per category with Wilson 95%
intervals, the analyser's ground-truth ceiling and chance. An arm that is rerun resumes (or
reuses) its finished training run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Every arm reads levels 1-6 with the same token budget, except the level-6-only arm.
# The text-state cache (4 GB of host memory) sends each caption through the frozen LLM once per
# arm: every arm reads the states an uncached run would (to float round-off), at a fraction of the cost.
COMMON = ["data.level_weights={'1': 1, '2': 1, '3': 1, '4': 1, '5': 1, '6': 1}", "model.text_encoder.max_tokens=64",
          "checkpoint.every_steps=500", "sample.prompts=[]", "text_cache_mb=4096"]
ARMS = {
    "deep fusion (6 of 30 layers), levels 1-6": ["model.dit.conditioning=deep_fusion"],
    "last layer only, levels 1-6": ["model.dit.conditioning=last_layer"],
    "LI-DiT refiner, levels 1-6": ["model.dit.conditioning=refiner"],
    "deep fusion, level 6 only": ["model.dit.conditioning=deep_fusion", "data.level_weights={'6': 1}"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1500, help="scenes in the training set")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--per-category", type=int, default=30, help="held-out prompts per category")
    ap.add_argument("--workdir", default="/tmp/ablation")
    ap.add_argument("--arms", nargs="+", help="a subset of the arm names (default: all)")
    args = ap.parse_args()

    from jobs.eval_scenes import EvalConfig, evaluate

    work = Path(args.workdir)
    corpus, dataset = work / "corpus", work / "dataset"
    cli = [sys.executable, "-m", "jobs.cli"]
    if not (dataset / "manifest.json").exists():
        subprocess.run([*cli, "scenes", "make", "--n", str(args.n), "--sizes", "64x64", "--max-groups", "2",
                        "--text-probability", "0", "--out", str(corpus)], check=True)
        subprocess.run([*cli, "scenes", "dataset", str(corpus), str(dataset)], check=True)
    rows = []
    for name in args.arms or ARMS:
        run_dir = work / "runs" / name.split(",")[0].replace(" ", "_").replace("(", "").replace(")", "")
        run_dir = run_dir.with_name(run_dir.name + ("_l6" if "level 6 only" in name else ""))
        t0 = time.time()
        subprocess.run([*cli, "train", "--config", "demo", f"run_dir={run_dir}", f"data.root={dataset}",
                        f"steps={args.steps}", *COMMON, *ARMS[name]], check=True)
        train_s = time.time() - t0
        report = evaluate(str(run_dir), EvalConfig(per_category=args.per_category, seeds=[0]), run_dir / "eval")
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        rows.append((name, report, train_s, sum(m["loss"] for m in metrics[-5:]) / 5))
        print(f"{name}: overall {report['model']['overall']['accuracy']:.1%} (training {train_s:.0f}s)", flush=True)

    cats = [c for c in rows[0][1]["model"] if c != "overall"]
    cell = lambda r: f"{r['accuracy']:.0%} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]"  # noqa: E731
    print("\n| arm | " + " | ".join(cats) + " | mean | final loss | train s |")
    print("|---" * (len(cats) + 4) + "|")
    for name, report, train_s, loss in rows:
        m = report["model"]
        print(f"| {name} | " + " | ".join(cell(m[c]) for c in cats) + f" | {m['overall']['accuracy']:.1%} | {loss:.3f} | {train_s:.0f} |")
    for label, key in (("ground truth (analyser ceiling)", "ground_truth"), ("chance", "chance")):
        r = rows[0][1][key]
        print(f"| {label} | " + " | ".join(cell(r[c]) for c in cats) + f" | {r['overall']['accuracy']:.1%} | | |")


if __name__ == "__main__":
    main()
