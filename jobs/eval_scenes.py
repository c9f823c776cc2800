"""Score a checkpoint on the benchmark: images per prompt with fixed seeds, accuracy per category.

Beside the model's row, every report carries reference rows computed in the same run:
- `ground truth`: the analyser on renders of each prompt's own scene (the ceiling; ~100%);
- `unconditional`: the model's own samples for the empty prompt, judged against the prompts
  (what this model draws when it ignores the text, through the same analyser);
- `chance`: each prompt judged against the true scene graphs of the other prompts of its
  category, all pairs (what an image that ignores its prompt would score).
Per row: each category (Wilson 95% intervals over its prompt x seed images); position and
binding again conditional on both named objects being found (`|found`, with how often they
were); binding's attribute-swap pairs scored as pairs (both right); `overall`, the mean over the
in-distribution categories with a normal-approximation interval. Out-of-distribution categories
(rgb, shape_colourless) are reported apart and are not in the mean. `quality`: the clean-scene
rate (scenes/analyse.py clean_scene, prompt-independent) of the model's samples next to that of
ground-truth renders and of the downscaled renders a trainer sees. `text_use`: whether the
denoiser reads each attribute from the prompt at all (held-out losses with the right prompt, with
only that attribute changed, and with none; text_use()).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from common.config import load_yaml_config
from scenes.analyse import (ANALYSER, Fact, both_found, calibrate, check, clean_scene, facts_from_image, facts_from_scene,
                            slot_hits)
from scenes.eval_prompts import (CATEGORIES, IN_DISTRIBUTION, LONG_PROMPTS, OUT_OF_DISTRIBUTION, SLOTTED, TWO_OBJECTS,
                                 Spec, make_specs)
from scenes.render import render


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
    unconditional: int = 16  # samples of the empty prompt: the `unconditional` row
    text_use: int = 12  # held-out prompts per category for the text-use losses (text_use(); 0 = off)

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


def _cell(k: int, n: int) -> dict:
    return {"n": n, "correct": k, "accuracy": round(k / n, 4) if n else 0.0, "ci95": [round(v, 4) for v in wilson(k, n)]}


def summarise(specs: list[Spec], hits: list[bool], found: list[bool] | None = None,
              pair_keys: list | None = None) -> dict:
    """One report row. `found[i]`: both named objects were there (two-object categories);
    `pair_keys[i]`: images with the same key form an attribute-swap pair (None: not in a pair)."""
    out: dict = {}
    cats = list(dict.fromkeys(s.category for s in specs))
    for c in cats:
        got = [h for s, h in zip(specs, hits) if s.category == c]
        out[c] = _cell(sum(got), len(got))
    if found is not None:
        for c in (c for c in TWO_OBJECTS if c in cats):
            idx = [i for i, s in enumerate(specs) if s.category == c]
            seen = [i for i in idx if found[i]]
            out[f"{c}|found"] = {**_cell(sum(hits[i] for i in seen), len(seen)),
                                 "found_rate": round(len(seen) / len(idx), 4)}
    if pair_keys is not None:
        pairs: dict = {}
        for key, hit in zip(pair_keys, hits):
            if key is not None:
                pairs.setdefault(key, []).append(hit)
        complete = [all(v) for v in pairs.values() if len(v) == 2]
        if complete:
            out["binding_pairs"] = _cell(sum(complete), len(complete))
    inside = [c for c in IN_DISTRIBUTION if c in cats]
    if inside:
        mean = sum(out[c]["accuracy"] for c in inside) / len(inside)
        se = math.sqrt(sum(out[c]["accuracy"] * (1 - out[c]["accuracy"]) / out[c]["n"] for c in inside)) / len(inside)
        out["overall"] = {"accuracy": round(mean, 4), "ci95": [round(max(0.0, mean - 1.96 * se), 4),
                                                               round(min(1.0, mean + 1.96 * se), 4)],
                          "categories": inside}
    return out


def score(specs: list[Spec], facts: list[list[Fact]], pair_keys: list | None = None,
          hits: list[bool] | None = None) -> dict:
    """Every spec against the facts of its image (same order), through one checker (`hits`:
    the checker's answers when the caller already has them)."""
    hits = hits if hits is not None else [check(s, f) for s, f in zip(specs, facts)]
    found = [both_found(s, f) if s.category in TWO_OBJECTS else False for s, f in zip(specs, facts)]
    out = summarise(specs, hits, found, pair_keys if pair_keys is not None else [s.pair for s in specs])
    for c in SLOTTED:  # the first- and the second-named object on their own: a positional bias shows here
        slots = [slot_hits(s, f) for s, f in zip(specs, facts) if s.category == c]
        if slots:
            out[f"{c}|first"] = _cell(sum(a for a, _ in slots), len(slots))
            out[f"{c}|second"] = _cell(sum(b for _, b in slots), len(slots))
    return out


def chance(specs: list[Spec]) -> dict:
    """Each prompt against every other scene of its category (by the scene graphs): all pairs.
    A swap pair is judged against every other pair's two scenes."""
    truth = [facts_from_scene(s.scene) for s in specs]
    members: dict = {}
    for k, sp in enumerate(specs):
        if sp.pair is not None:
            members.setdefault((sp.category, sp.pair), []).append(k)
    slot = {k: n for ks in members.values() if len(ks) == 2 for n, k in enumerate(ks)}  # first or second of a pair
    scored, facts, keys = [], [], []
    for i, s in enumerate(specs):
        for j, other in enumerate(specs):
            if other.category != s.category or i == j:
                continue
            key = None
            if s.pair is not None:
                # the first of a pair against the first of every other pair, second against second
                if i not in slot or j not in slot or other.pair == s.pair or slot[i] != slot[j]:
                    continue
                key = (s.pair, other.pair)
            scored.append(s)
            facts.append(truth[j])
            keys.append(key)
    return score(scored, facts, keys)


def ground_truth(specs: list[Spec], size: tuple[int, int], renders: list | None = None) -> dict:
    """The analyser on each prompt's own scene (`renders`: those images when the caller has them)."""
    calib = calibrate(size)
    renders = renders if renders is not None else [render(s.scene) for s in specs]
    return score(specs, [facts_from_image(img, calib) for img in renders])


def quality(model_clean: list[bool], uncond_clean: list[bool], renders: list, size: tuple[int, int],
            cfg: EvalConfig) -> dict:
    """The clean-scene rate (scenes/analyse.py clean_scene), an image-quality number beside the
    alignment rows: the model's prompted and unprompted samples, the ground-truth renders at this
    resolution, and `data`: the same scenes rendered at 8x and downscaled as the trainer's loader
    does (what the model was shown: blended edges, small objects below the analyser's minimum)."""
    from PIL import Image

    from trainer.buckets import resize_to_bucket

    w, h = size
    calib = calibrate((w, h))
    truth = [clean_scene(img, calib) for img in renders]
    large = make_specs(cfg.per_category, (8 * w, 8 * h), cfg.prompt_seed, tuple(cfg.categories))
    data = [clean_scene(Image.fromarray(resize_to_bucket(render(s.scene), (h, w)).permute(1, 2, 0).numpy()), calib)
            for s in large]
    return {"model": _cell(sum(model_clean), len(model_clean)),
            "unconditional": _cell(sum(uncond_clean), len(uncond_clean)),
            "ground_truth": _cell(sum(truth), len(truth)), "data": _cell(sum(data), len(data))}


def evaluate(checkpoint: str, cfg: EvalConfig, out: str | Path | None = None) -> dict:
    """Generate, analyse, score; with `out`, also write report.json, samples.png and one grid PNG
    per category, each image labelled with its prompt."""
    from trainer.sampling import load_pipeline, save_grid, to_pil

    pipe = load_pipeline(checkpoint)
    h, w = pipe.resolution
    categories = tuple(cfg.categories)
    specs = make_specs(cfg.per_category, (w, h), cfg.prompt_seed, categories)
    calib = calibrate((w, h))
    runs = [(s, seed) for s in specs for seed in cfg.seeds]
    n_uncond = max(cfg.unconditional, 1)
    prompts = [s.prompt for s, _ in runs] + [""] * n_uncond
    seeds = [seed for _, seed in runs] + [10_000 + k for k in range(n_uncond)]
    images = pipe.generate(prompts, seeds, steps=cfg.steps, guidance=cfg.guidance, size=(h, w), batch=cfg.batch)
    pils = [to_pil(img) for img in images]
    facts = [facts_from_image(p, calib) for p in pils]
    clean = [clean_scene(p, calib) for p in pils]
    renders = [render(s.scene) for s in specs]  # each prompt's own scene: the ceiling rows
    model_facts, uncond_facts = facts[: len(runs)], facts[len(runs):]
    run_specs = [s for s, _ in runs]
    pair_keys = [None if s.pair is None else (s.pair, seed) for s, seed in runs]
    hits = [check(s, f) for s, f in zip(run_specs, model_facts)]
    model = score(run_specs, model_facts, pair_keys, hits)
    report = {
        "checkpoint": str(checkpoint), "resolution": [w, h], "config": cfg.__dict__,
        "analyser": ANALYSER, "calibration": calib.to_dict(), "model": model,
        # the empty prompt's samples in place of each prompt's: image k of the runs -> uncond k mod n
        "unconditional": score(run_specs, [uncond_facts[k % n_uncond] for k in range(len(runs))], pair_keys),
        "ground_truth": ground_truth(specs, (w, h), renders), "chance": chance(specs),
        "quality": quality(clean[: len(runs)], clean[len(runs):], renders, (w, h), cfg),
        "examples": [{"category": s.category, "prompt": s.prompt, "seed": seed, "followed": hit, "clean": ok}
                     for (s, seed), hit, ok in zip(runs, hits, clean)],
    }
    if cfg.text_use:
        report["text_use"] = text_use(pipe, cfg.text_use)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        cols = len(cfg.seeds)
        for c in categories:
            idx = [i for i, (s, _) in enumerate(runs) if s.category == c][: 8 * cols]
            save_grid(images[idx], len(idx) // cols, cols, out / f"grid_{c}.png",
                      labels=[_label(runs[i][0], hits[i]) for i in idx])
        # one overview: a row per category, its first prompts at the first seed
        per_row = min(6, cfg.per_category)
        rows = [[i for i, (s, seed) in enumerate(runs) if s.category == c and seed == cfg.seeds[0]][:per_row]
                for c in categories]
        cells = [i for row in rows for i in row]
        save_grid(images[cells], len(rows), per_row, out / "samples.png", labels=[_label(runs[i][0], hits[i]) for i in cells])
        report["samples_grid"] = {"path": str(out / "samples.png"),
                                  "rows": [[runs[i][0].prompt for i in row] for row in rows]}
        (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        report["written"] = str(out / "report.json")
    return report


def heldout_loss(checkpoint: str | Path, prompts: int = 64, prompt_seed: int = 4242, noise_seed: int = 0,
                 levels: int = 7, categories: tuple[str, ...] = tuple(IN_DISTRIBUTION)) -> dict:
    """The EDM denoising loss on held-out pairs, the same inputs for every checkpoint: eval-style
    prompts of the in-distribution categories (drawn with another seed than the benchmark's) with
    their own ground-truth renders, each at `levels` fixed noise levels (the training noise
    distribution's quantiles at z = -1.5 .. 1.5) with fixed noise. Lower is a better denoiser of
    prompt-conditioned scenes; comparable between models of the same codec and EDM settings.
    `categories`: the in-distribution categories the prompts come from (a model trained on single
    objects is scored on colour and shape prompts only)."""
    unknown = set(categories) - set(IN_DISTRIBUTION)
    if unknown or not categories:
        raise ValueError(f"heldout_loss: categories must be a non-empty subset of {list(IN_DISTRIBUTION)}, got {list(categories)}")
    import torch

    from trainer.buckets import resize_to_bucket
    from trainer.sampling import load_pipeline

    pipe = load_pipeline(checkpoint)
    h, w = pipe.resolution
    per_category = max(1, math.ceil(prompts / len(categories)))
    specs = make_specs(per_category, (w, h), prompt_seed, tuple(categories))[:prompts]
    pixels = torch.stack([resize_to_bucket(render(s.scene), (h, w)) for s in specs]).to(pipe.device)
    x0 = pipe.codec.encode(pixels.float() / 127.5 - 1)
    cfg = pipe.edm.cfg
    zs = torch.linspace(-1.5, 1.5, levels)
    sigmas = [math.exp(cfg.p_mean + cfg.p_std * float(z)) for z in zs]
    losses = fixed_noise_losses(pipe, x0, [s.prompt for s in specs], sigmas, noise_seed, batch=len(specs))
    per_level = [float(losses[:, k].contiguous().mean()) for k in range(len(sigmas))]
    return {"loss": round(sum(per_level) / len(per_level), 5), "prompts": len(specs),
            "per_sigma": {f"{sigma:.3g}": round(v, 5) for sigma, v in zip(sigmas, per_level)}}


def fixed_noise_losses(pipe, x0, prompts: list[str], sigmas, noise_seed: int, batch: int = 16):
    """The EDM loss of each prompt's clean latent `x0[i]` at each of `sigmas`, with the same noise
    for every model (seeded by `noise_seed` and the level): a float32 tensor [prompts, levels]."""
    import torch

    from model import encode_for

    noises = [torch.randn(x0.shape, generator=torch.Generator().manual_seed(noise_seed * 1000 + k)).to(pipe.device)
              for k in range(len(sigmas))]
    per_level = [[] for _ in sigmas]
    with torch.no_grad():
        for start in range(0, len(prompts), batch):
            sl = slice(start, start + batch)
            texts = encode_for(pipe.dit, pipe.encoders, prompts[sl])
            cond = ([t.hidden for t in texts], [t.mask for t in texts])
            for k, sigma in enumerate(sigmas):
                loss, _ = pipe.edm.loss(pipe.dit, x0[sl], *cond, noise=noises[k][sl],
                                        sigma=torch.full((len(prompts[sl]),), sigma, device=pipe.device))
                per_level[k].append(loss.cpu())
    return torch.stack([torch.cat(row) for row in per_level], 1)


# Noise levels of text_use, the same for every model (comparable across EDM settings). What a
# prompt adds shows from about sigma 2 up: below it the scene is visible through the noise.
TEXT_USE_SIGMAS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


def text_use(pipe, per_category: int = 16, prompt_seed: int = 4243, noise_seed: int = 0) -> dict:
    """Does the model read each attribute from the prompt? A measurement of the denoiser itself,
    far less noisy than accuracy over a few samples: held-out scenes of each category (renders at
    8x, downscaled as the trainer's loader does), each noised at fixed levels with fixed noise, and
    the EDM loss (at TEXT_USE_SIGMAS) with (a) the right prompt, (b) the prompt with only the category's attribute
    changed (scenes/eval_prompts.py changed_prompt: another colour, shape or number, the opposite
    relation, the attribute swap), (c) the empty prompt. Per category: the three losses, and
    `attribute_gain` = (b) - (a), what reading that attribute is worth (~0: the model ignores
    it), with a 95% interval over prompts; `prompt_gain` = (c) - (a), what the whole prompt is worth."""
    import random

    import torch

    from scenes.eval_prompts import CHANGEABLE, changed_prompt
    from trainer.buckets import resize_to_bucket

    h, w = pipe.resolution
    specs = make_specs(per_category, (8 * w, 8 * h), prompt_seed, CHANGEABLE)
    rng = random.Random(prompt_seed)
    variants = {"right": [s.prompt for s in specs], "changed": [changed_prompt(s, rng) for s in specs],
                "empty": [""] * len(specs)}
    pixels = torch.stack([resize_to_bucket(render(s.scene), (h, w)) for s in specs]).to(pipe.device)
    x0 = pipe.codec.encode(pixels.float() / 127.5 - 1)
    sigmas = TEXT_USE_SIGMAS
    losses = {name: fixed_noise_losses(pipe, x0, prompts, sigmas, noise_seed).double()  # [prompts, levels]
              for name, prompts in variants.items()}
    out = {"sigmas": [round(v, 4) for v in sigmas], "prompts_per_category": per_category}
    for c in CHANGEABLE:
        idx = [i for i, s in enumerate(specs) if s.category == c]
        right, changed, empty = (losses[k][idx] for k in ("right", "changed", "empty"))
        gain = (changed - right).mean(1)  # per prompt, over the noise levels
        half = 1.96 * float(gain.std()) / math.sqrt(len(idx)) if len(idx) > 1 else float("nan")
        out[c] = {"right": round(float(right.mean()), 5), "changed": round(float(changed.mean()), 5),
                  "empty": round(float(empty.mean()), 5),
                  "attribute_gain": round(float(gain.mean()), 5),
                  "ci95": [round(float(gain.mean()) - half, 5), round(float(gain.mean()) + half, 5)],
                  "prompt_gain": round(float((empty - right).mean()), 5),
                  "attribute_gain_per_sigma": [round(float(v), 5) for v in (changed - right).mean(0)],
                  "example": [variants["right"][idx[0]], variants["changed"][idx[0]]]}
    return out


def format_text_use(t: dict) -> list[str]:
    lines = ["  text use: held-out loss with the right prompt, with only the tested attribute changed, and "
             "with the empty prompt (lower is better; gain ~0: the attribute is not read)",
             f"  {'':<18}{'right':>9}{'changed':>9}{'empty':>9}{'attribute gain [95%]':>28}{'prompt gain':>13}"]
    for c in (k for k in t if isinstance(t[k], dict)):
        v = t[c]
        gain = f"{v['attribute_gain']:+.4f} [{v['ci95'][0]:+.4f},{v['ci95'][1]:+.4f}]"
        lines.append(f"  {c:<18}{v['right']:>9.4f}{v['changed']:>9.4f}{v['empty']:>9.4f}{gain:>28}"
                     f"{v['prompt_gain']:>+13.4f}")
    return lines


def _label(spec: Spec, followed: bool) -> str:
    return f"{'+' if followed else '-'} {spec.prompt}"


ROWS = (("model", "model"), ("unconditional", "unconditional"), ("ground truth", "ground_truth"), ("chance", "chance"))


def format_report(report: dict) -> str:
    """A metric per line, a column per row of the report (model, unconditional, ground truth, chance)."""
    columns = [(name, report[key]) for name, key in ROWS if report.get(key)]
    first = columns[0][1]
    cats = [c for c in first if c != "overall"]
    n = first[cats[0]]["n"]
    lines = [f"eval scenes: {report['checkpoint']} at {report['resolution'][0]}x{report['resolution'][1]}, "
             f"{n} images per category",
             f"  {'':<18}" + "".join(f"{name:>24}" for name, _ in columns)]

    def line(label: str, key: str) -> str:
        cells = []
        for _, r in columns:
            v = r.get(key)
            if v is None:
                cells.append(f"{'-':>24}")
                continue
            text = f"{v['accuracy']:.1%} [{v['ci95'][0]:.2f},{v['ci95'][1]:.2f}]"
            if "found_rate" in v:
                text = f"{v['accuracy']:.0%} [{v['ci95'][0]:.2f},{v['ci95'][1]:.2f}] f{v['found_rate']:.0%}"
            cells.append(f"{text:>24}")
        return f"  {label:<18}" + "".join(cells)

    order = [m for c in IN_DISTRIBUTION for m in (c, f"{c}|found", *(["binding_pairs", "binding|first", "binding|second"]
                                                                     if c == "binding" else []))]
    inside = [c for c in order if c in cats]
    lines += [line(c, c) for c in inside]
    if "overall" in first:
        lines.append(line("overall (mean)", "overall"))
    outside = [c for c in cats if c in OUT_OF_DISTRIBUTION]
    if outside:
        lines.append("  outside the training distribution (not in the mean):")
        lines += [line(c, c) for c in outside]
    long = [m for c in LONG_PROMPTS if c in cats for m in (c, f"{c}|first", f"{c}|second") if m in cats]
    if long:
        lines.append("  long prompts, the scene's level-5 caption (not in the mean):")
        lines += [line(c, c) for c in long]
    q = report.get("quality")
    if q:
        cell = lambda v: f"{v['accuracy']:.0%} [{v['ci95'][0]:.2f},{v['ci95'][1]:.2f}]"  # noqa: E731
        lines.append(f"  image quality, clean scenes: model {cell(q['model'])}, unconditional {cell(q['unconditional'])}, "
                     f"ground-truth renders {cell(q['ground_truth'])}, downscaled training-like renders {cell(q['data'])}")
    if report.get("text_use"):
        lines += format_text_use(report["text_use"])
    lines.append("  |found: among images where both named objects were found (f: how often they were); "
                 "binding_pairs: both prompts of an attribute-swap pair right; "
                 "|first, |second: the first- or second-named object right")
    return "\n".join(lines)
