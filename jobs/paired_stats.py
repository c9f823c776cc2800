"""Paired comparisons of `eval scenes` reports: arms that were scored on the same prompts.

An arm is one or more training runs (seeds); each run's report lists every image it was scored
on (`examples`: category, prompt, sampling seed, followed). Every arm of a study is evaluated with
the same EvalConfig, so image k of one arm and image k of another answer the same prompt with the
same sampling seed: the comparison is paired.

- `arm_outcomes`: an arm as a 0/1 matrix [training runs, images] over the shared image keys.
- `category_mean`: the headline number, the mean over categories of each category's accuracy
  (as `eval scenes`' `overall`).
- `bootstrap_mean`: that mean with a 95% interval that covers both sources of variance: the
  prompts (resampled within each category, a prompt's sampling seeds together) and the training
  runs (resampled with replacement).
- `paired_bootstrap`: the difference of two arms' means, the prompts resampled once for both arms
  (the pairing), each arm's training runs resampled on their own; its 95% interval and a
  two-sided bootstrap p-value (twice the share of resampled differences on the far side of zero).
- `mcnemar`: the exact McNemar test on discordant images, training run i of one arm paired with
  run i of the other (same seed, same data order), pooled over runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Key = tuple[str, str, int, int]  # (category, prompt, sampling seed, occurrence: a prompt text may recur)


@dataclass
class ArmOutcomes:
    keys: list[Key]  # the images, in a fixed order shared by every arm of a comparison
    hits: np.ndarray  # [runs, images] 0/1

    @property
    def categories(self) -> list[str]:
        return list(dict.fromkeys(k[0] for k in self.keys))


def report_outcomes(report: dict) -> dict[Key, bool]:
    """Image -> followed. Two prompts of a category can have the same text (another scene drawn
    for the same words): the k-th occurrence of (category, prompt, seed) is its own image, and
    every arm, evaluated with the same settings, lists them in the same order."""
    out: dict[Key, bool] = {}
    seen: dict[tuple, int] = {}
    for e in report["examples"]:
        base = (e["category"], e["prompt"], int(e["seed"]))
        k = seen[base] = seen.get(base, -1) + 1
        out[(*base, k)] = bool(e["followed"])
    return out


def arm_outcomes(reports: list[dict], categories: list[str] | None = None, keys: list[Key] | None = None) -> ArmOutcomes:
    """The runs of one arm over `keys` (default: the first report's images, in its order),
    restricted to `categories`. Every report must hold every key: a report scored on other
    prompts cannot be paired and is refused by name."""
    if not reports:
        raise ValueError("paired_stats: an arm needs at least one report")
    per_run = [report_outcomes(r) for r in reports]
    if keys is None:
        keys = list(per_run[0])
    if categories is not None:
        keys = [k for k in keys if k[0] in categories]
    for i, run in enumerate(per_run):
        missing = [k for k in keys if k not in run]
        if missing:
            raise ValueError(f"paired_stats: report {i} ({reports[i].get('checkpoint', '?')}) lacks {len(missing)} of the "
                             f"shared images, e.g. {missing[0]}: evaluate every arm with the same eval settings")
    hits = np.array([[run[k] for k in keys] for run in per_run], dtype=np.float64)
    return ArmOutcomes(keys, hits)


def _groups(keys: list[Key]) -> dict[str, list[np.ndarray]]:
    """Per category, the image indices of each prompt (its sampling seeds stay together)."""
    by_prompt: dict[tuple[str, str, int], list[int]] = {}
    for i, (cat, prompt, _, k) in enumerate(keys):
        by_prompt.setdefault((cat, prompt, k), []).append(i)
    out: dict[str, list[np.ndarray]] = {}
    for (cat, _, _), idx in by_prompt.items():
        out.setdefault(cat, []).append(np.array(idx))
    return out


def category_mean(hits: np.ndarray, keys: list[Key]) -> float:
    """Mean over categories of the accuracy over every (run, image) of that category."""
    cats = _groups(keys)
    return float(np.mean([hits[:, np.concatenate(groups)].mean() for groups in cats.values()]))


def _resampled_columns(groups: dict[str, list[np.ndarray]], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One bootstrap draw of the prompts: per category, as many prompts as it has, with replacement."""
    return {cat: np.concatenate([g[j] for j in rng.integers(0, len(g), len(g))]) for cat, g in groups.items()}


def _mean_on(hits: np.ndarray, rows: np.ndarray, cols: dict[str, np.ndarray]) -> float:
    sub = hits[rows]
    return float(np.mean([sub[:, c].mean() for c in cols.values()]))


def bootstrap_mean(arm: ArmOutcomes, n_boot: int = 2000, seed: int = 0) -> dict:
    groups = _groups(arm.keys)
    rng = np.random.default_rng(seed)
    runs = arm.hits.shape[0]
    draws = [_mean_on(arm.hits, rng.integers(0, runs, runs), _resampled_columns(groups, rng)) for _ in range(n_boot)]
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return {"mean": round(category_mean(arm.hits, arm.keys), 4), "ci95": [round(float(lo), 4), round(float(hi), 4)],
            "runs": runs}


def paired_bootstrap(a: ArmOutcomes, b: ArmOutcomes, n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean(a) - mean(b) over the shared images, with its 95% interval and two-sided p-value."""
    if a.keys != b.keys:
        raise ValueError("paired_stats: the two arms were not scored on the same images in the same order")
    groups = _groups(a.keys)
    rng = np.random.default_rng(seed)
    ra, rb = a.hits.shape[0], b.hits.shape[0]
    diffs = np.empty(n_boot)
    for t in range(n_boot):
        cols = _resampled_columns(groups, rng)  # the same prompts for both arms: the pairing
        diffs[t] = _mean_on(a.hits, rng.integers(0, ra, ra), cols) - _mean_on(b.hits, rng.integers(0, rb, rb), cols)
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    tail = min(float(np.mean(diffs <= 0)), float(np.mean(diffs >= 0)))
    return {"diff": round(category_mean(a.hits, a.keys) - category_mean(b.hits, b.keys), 4),
            "ci95": [round(float(lo), 4), round(float(hi), 4)],
            "p": round(max(min(1.0, 2 * tail), 1.0 / n_boot), 4), "n_boot": n_boot}


def mcnemar(a: ArmOutcomes, b: ArmOutcomes, category: str | None = None) -> dict:
    """Exact two-sided McNemar test: images a got right and b wrong (`a_only`) vs the reverse,
    run i of a paired with run i of b (the first min(runs) runs of each), pooled."""
    if a.keys != b.keys:
        raise ValueError("paired_stats: the two arms were not scored on the same images in the same order")
    cols = np.array([i for i, k in enumerate(a.keys) if category is None or k[0] == category], dtype=int)
    runs = min(a.hits.shape[0], b.hits.shape[0])
    x, y = a.hits[:runs][:, cols], b.hits[:runs][:, cols]
    a_only, b_only = int(((x == 1) & (y == 0)).sum()), int(((x == 0) & (y == 1)).sum())
    return {"a_only": a_only, "b_only": b_only, "pairs": int(x.size), "p": round(exact_binomial_two_sided(a_only, a_only + b_only), 4)}


def exact_binomial_two_sided(k: int, n: int) -> float:
    """P(a Binomial(n, 1/2) count at least as far from n/2 as k), both tails; 1.0 when n == 0."""
    if n == 0:
        return 1.0
    low = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(low + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)
