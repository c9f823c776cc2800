"""What reading the shape word is worth to an ideal denoiser: the ceiling for `eval scenes`'s
text-use row of the shape category (jobs/eval_scenes.py text_use).

    .venv/bin/python benchmarks/shape_gain_ceiling.py [--size 32] [--candidates 1500] [--images 60]

The eval's shape scenes (one large object of a known colour on a known background, its centre
anywhere in the middle 40% of each side) rendered at 8x and downscaled as the trainer's loader
does. For each noise level of text_use, the posterior mean over a candidate set of such renders
(random centres, the same colour, background and size) is the ideal denoiser; once with
candidates of the right shape only (the shape is known), once with all three shapes (it is not).
Prints one JSON line per noise level: both EDM-weighted losses and the gain of knowing the shape,
absolute and relative. The candidate set is finite, so at low noise the posterior settles on the
nearest candidate and both losses are the set's own discretisation error (no gain there either
way: the shape is visible in the noisy image).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=32, help="image side in pixels (the model's resolution)")
    p.add_argument("--candidates", type=int, default=1500, help="candidate renders per shape")
    p.add_argument("--images", type=int, default=60, help="noisy test images per noise level")
    p.add_argument("--scale", type=float, default=1.333, help="the pixel codec's latent scale (the demo's)")
    args = p.parse_args()

    import torch

    from jobs.eval_scenes import TEXT_USE_SIGMAS
    from scenes.eval_prompts import _obj
    from scenes.graph import BACKGROUNDS, COLORS, SHAPES, SIZES, Scene
    from scenes.render import render
    from trainer.buckets import resize_to_bucket

    rng = random.Random(0)
    big, size = 8 * args.size, args.size

    def image(shape: str, color: str, background: str) -> torch.Tensor:
        scene = Scene("x", 0, big, big, background, BACKGROUNDS[background])
        r = SIZES["large"] * big
        scene.objects.append(_obj(shape, color, COLORS[color], "large", rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), r))
        return (resize_to_bucket(render(scene), (size, size)).float() / 127.5 - 1) * args.scale

    color, background = "red", "white"
    candidates = {s: torch.stack([image(s, color, background) for _ in range(args.candidates)]) for s in SHAPES}
    every = torch.cat(list(candidates.values()))

    def posterior_mean(x: torch.Tensor, pool: torch.Tensor, sigma: float) -> torch.Tensor:
        weights = torch.softmax(-((pool - x) ** 2).flatten(1).sum(1) / (2 * sigma**2), 0)
        return (weights[:, None, None, None] * pool).sum(0)

    for sigma in TEXT_USE_SIGMAS:
        weight = (sigma**2 + 1) / sigma**2  # EDM's loss weight (sigma_data = 1), as text_use's losses
        known, unknown = [], []
        for k in range(args.images):
            shape = SHAPES[k % len(SHAPES)]
            x0 = image(shape, color, background)
            x = x0 + sigma * torch.randn(x0.shape, generator=torch.Generator().manual_seed(k))
            known.append(weight * float(((posterior_mean(x, candidates[shape], sigma) - x0) ** 2).mean()))
            unknown.append(weight * float(((posterior_mean(x, every, sigma) - x0) ** 2).mean()))
        kn, un = sum(known) / len(known), sum(unknown) / len(unknown)
        print(json.dumps({"sigma": round(sigma, 4), "loss_shape_known": round(kn, 5), "loss_shape_unknown": round(un, 5),
                          "shape_gain": round(un - kn, 5), "relative": round((un - kn) / un, 3)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
