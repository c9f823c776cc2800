"""Score a checkpoint on the benchmark: images per prompt with fixed seeds, accuracy per category.

Beside the model's row, every report carries two reference rows computed in the same run:
- `ground truth`: the analyser on renders of each prompt's own scene (the ceiling; ~100%);
- `chance`: each prompt judged against the true scene graphs of the other prompts of its
  category, all pairs (what an image that ignores its prompt would score).
Intervals are Wilson 95% score intervals over the prompt x seed images of a category.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from common.config import load_yaml_config
from scenes.render import render

from scenes.analyse import calibrate, check, facts_from_image, facts_from_scene
from scenes.eval_prompts import CATEGORIES, Spec, make_specs


@dataclass
class EvalConfig:
    per_category: int = 50  # prompts per category
    seeds: list[int] = field(default_factory=lambda: [0, 1])  # images per prompt, one per seed
    prompt_seed: int = 2026  # which prompts (held out from any training corpus by construction)
    steps: int = 24  # Heun sampler steps
    guidance: float = 3.0
    batch: int = 16
    categories: list[str] = field(default_factory=lambda: list(CATEGORIES))
    out: str | None = None  # write report.json, samples.png and per-category grids here
    reference_only: bool = False  # no model: the analyser's ground-truth and chance rows only
    size: str = "64x64"  # WxH of the reference rows when reference_only

    def __post_init__(self):
        unknown = set(self.categories) - set(CATEGORIES)
        if unknown or not self.categories:
            raise ValueError(f"eval: categories must be a non-empty subset of {list(CATEGORIES)}, got {self.categories}")
        if self.per_category < 1 or not self.seeds:
            raise ValueError("eval: per_category must be >= 1 and seeds non-empty")


def load_eval_config(path: str | None, overrides: list[str] | None = None) -> EvalConfig:
    return load_yaml_config(EvalConfig, path, overrides)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def summarise(specs: list[Spec], hits: list[bool]) -> dict:
    """{category: {n, correct, accuracy, ci}} plus "overall" (the mean of category accuracies)."""
    out = {}
    for c in dict.fromkeys(s.category for s in specs):
        got = [h for s, h in zip(specs, hits) if s.category == c]
        k = sum(got)
        out[c] = {"n": len(got), "correct": k, "accuracy": round(k / len(got), 4),
                  "ci95": [round(v, 4) for v in wilson(k, len(got))]}
    out["overall"] = {"accuracy": round(sum(v["accuracy"] for v in out.values()) / len(out), 4)}
    return out


def chance(specs: list[Spec]) -> dict:
    """Each prompt against every other scene of its category (by the scene graphs): all pairs."""
    truth = [facts_from_scene(s.scene) for s in specs]
    pairs_specs, pairs_hits = [], []
    for i, s in enumerate(specs):
        for j, other in enumerate(specs):
            if i != j and other.category == s.category:
                pairs_specs.append(s)
                pairs_hits.append(check(s, truth[j]))
    return summarise(pairs_specs, pairs_hits)


def ground_truth(specs: list[Spec], size: tuple[int, int]) -> dict:
    calib = calibrate(size)
    return summarise(specs, [check(s, facts_from_image(render(s.scene), calib)) for s in specs])


def evaluate(checkpoint: str, cfg: EvalConfig, out: str | Path | None = None) -> dict:
    """Generate, analyse, score; with `out`, also write report.json and one grid PNG per category."""
    from trainer.sampling import load_pipeline, save_grid, to_pil

    pipe = load_pipeline(checkpoint)
    h, w = pipe.resolution
    categories = tuple(cfg.categories)
    specs = make_specs(cfg.per_category, (w, h), cfg.prompt_seed, categories)
    calib = calibrate((w, h))
    runs = [(s, seed) for s in specs for seed in cfg.seeds]
    images = pipe.generate([s.prompt for s, _ in runs], [seed for _, seed in runs], steps=cfg.steps,
                           guidance=cfg.guidance, size=(h, w), batch=cfg.batch)
    hits = [check(s, facts_from_image(to_pil(img), calib)) for (s, _), img in zip(runs, images)]
    report = {
        "checkpoint": str(checkpoint), "resolution": [w, h], "config": cfg.__dict__,
        "calibration": calib.to_dict(), "model": summarise([s for s, _ in runs], hits),
        "ground_truth": ground_truth(specs, (w, h)), "chance": chance(specs),
        "examples": [{"category": s.category, "prompt": s.prompt, "seed": seed, "followed": hit}
                     for (s, seed), hit in zip(runs, hits)],
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        cols = len(cfg.seeds)
        for c in categories:
            idx = [i for i, (s, _) in enumerate(runs) if s.category == c][: 8 * cols]
            save_grid(images[idx], len(idx) // cols, cols, out / f"grid_{c}.png")
        # one overview: a row per category, its first prompts at the first seed
        per_row = min(6, cfg.per_category)
        rows = [[i for i, (s, seed) in enumerate(runs) if s.category == c and seed == cfg.seeds[0]][:per_row]
                for c in categories]
        save_grid(images[[i for row in rows for i in row]], len(rows), per_row, out / "samples.png")
        report["samples_grid"] = {"path": str(out / "samples.png"),
                                  "rows": [[runs[i][0].prompt for i in row] for row in rows]}
        (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        report["written"] = str(out / "report.json")
    return report


def format_report(report: dict) -> str:
    rows = [(name, report[key]) for name, key in (("model", "model"), ("ground truth", "ground_truth"),
                                                    ("chance", "chance")) if report.get(key)]
    cats = [c for c in report["ground_truth"] if c != "overall"]
    n = (report.get("model") or report["ground_truth"])[cats[0]]["n"]
    lines = [f"eval scenes: {report['checkpoint']} at {report['resolution'][0]}x{report['resolution'][1]}, "
             f"{n} images per category",
             f"  {'':<14}" + "".join(f"{c:>20}" for c in cats) + f"{'overall':>10}"]
    for name, r in rows:
        cells = "".join(f"{r[c]['accuracy']:>8.1%} [{r[c]['ci95'][0]:.2f},{r[c]['ci95'][1]:.2f}]" for c in cats)
        lines.append(f"  {name:<14}{cells}{r['overall']['accuracy']:>10.1%}")
    return "\n".join(lines)
