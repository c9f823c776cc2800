"""What does the denoiser make of a noisy scene, with the right prompt, a wrong one and none?

The eval's shape prompts (`scenes/eval_prompts.py`), their own ground-truth scenes rendered at 8x and
downscaled as the trainer's loader does, noised at each --sigmas level with fixed noise. One row per
(level, prompt), six columns: the clean render, the noisy input (rescaled to unit variance), the
denoised estimate D(x; sigma) with the right prompt, with the shape word changed (circle -> square
-> triangle -> circle), with the empty prompt, and the sampler's result from that level (Heun,
guidance 3, down to sigma_min). Prints the mean squared error of each estimate per level. Where the
right and the changed prompt give the same picture, the model does not draw from that word at that
noise level, whatever its loss says.

It also measures what the shape word changes, over --mass-prompts prompts: the renderer draws every
shape at the same radius, so a square covers 4 r^2, a circle 3.14 r^2 and a triangle 1.30 r^2, and
a model can lower its loss by reading the word as a size. Per level: the object's mass in each
estimate (the colour distance from the scene's background, summed over pixels), the log of its ratio
(shape changed / right) against the log of the two shapes' area ratio (correlation and slope: slope 1
is a mass that follows the area exactly, 0 a word that changes nothing), and the mean ratio per change.
An ideal denoiser's mass follows the area too; what tells a size from an outline is the samples: the
last lines give their object pixels per named shape (pixels far from the corner colour, two sampling
seeds), whose ratios a model that draws the named area as a blob reproduces.

    .venv/bin/python benchmarks/denoised_estimates.py RUN_OR_CHECKPOINT OUT.png [--sigmas 2 8] [--prompts 8]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import encode_for  # noqa: E402
from scenes.analyse import SHAPE_AREA as AREA  # noqa: E402  (per r^2, as scenes/render.py draws them)
from scenes.eval_prompts import make_specs  # noqa: E402
from scenes.graph import SHAPES  # noqa: E402
from scenes.render import render  # noqa: E402
from trainer.buckets import resize_to_bucket  # noqa: E402
from trainer.sampling import load_pipeline, to_pil  # noqa: E402

COLUMNS = ("clean", "noisy", "right prompt", "shape changed", "empty prompt", "sampled from here")


def other_shape(prompt: str) -> str:
    for i, shape in enumerate(SHAPES):
        if shape in prompt:
            return prompt.replace(shape, SHAPES[(i + 1) % len(SHAPES)])
    return prompt


def shape_of(prompt: str) -> str:
    return next(shape for shape in SHAPES if shape in prompt)


def shape_scenes(pipe, n: int):
    """The eval's first n shape prompts, their scenes as the loader sees them (uint8 pixels) and as latents."""
    h, w = pipe.resolution
    specs = make_specs(n, (8 * w, 8 * h), 99, ("shape",))
    pixels = torch.stack([resize_to_bucket(render(s.scene), (h, w)) for s in specs]).to(pipe.device)
    return specs, pixels, pipe.codec.encode(pixels.float() / 127.5 - 1)


def mass_vs_area(pipe, cond, scenes, sigmas: list[float]) -> None:
    """How much the shape word moves the estimate's mass, against how much it changes the area."""
    specs, pixels, x0 = scenes
    background = (pixels[:, :, 0, 0].float() / 127.5 - 1)[:, :, None, None]  # every scene's corner is its ground
    right, changed = cond([s.prompt for s in specs]), cond([other_shape(s.prompt) for s in specs])
    area = np.log([AREA[shape_of(other_shape(s.prompt))] / AREA[shape_of(s.prompt)] for s in specs])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1)).to(pipe.device)

    def mass(latents):
        return (pipe.codec.decode(latents).clamp(-1, 1) - background).abs().sum(1).flatten(1).sum(1).cpu()

    print(f"what the shape word changes ({len(specs)} prompts): log(mass changed / mass right) against log(area ratio)")
    for sigma in sigmas:
        s = torch.full((len(specs),), sigma, device=pipe.device)
        noisy = x0 + noise * sigma
        ratio = torch.log(mass(pipe.edm.denoise(pipe.dit, noisy, s, *changed)) / mass(pipe.edm.denoise(pipe.dit, noisy, s, *right))).numpy()
        per_change = "; ".join(
            f"{a}->{b} x{np.exp(ratio[[i for i, p in enumerate(specs) if shape_of(p.prompt) == a]].mean()):.2f}"
            f" (area x{AREA[b] / AREA[a]:.2f})" for a, b in zip(SHAPES, SHAPES[1:] + SHAPES[:1]))
        print(f"  sigma {sigma:5.2f}: correlation {np.corrcoef(ratio, area)[0, 1]:.2f}, slope {np.polyfit(area, ratio, 1)[0]:.2f}; {per_change}")


def sampled_areas(pipe, cond, scenes, guidance: float, steps: int) -> None:
    """Object pixels of plain samples (from sigma_max) per named shape."""
    specs, _, x0 = scenes
    right, empty = cond([s.prompt for s in specs]), cond([""] * len(specs))
    shape = x0.shape
    pixels: dict[str, list[float]] = {}
    for seed in (0, 1):
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(pipe.device)
        images = pipe.codec.decode(pipe.edm.sample(pipe.dit, shape, right, empty, steps=steps, guidance=guidance,
                                                   device=pipe.device, noise=noise)).clamp(-1, 1)
        ground = images[:, :, :2, :2].mean((2, 3), keepdim=True)
        counts = ((images - ground).abs().sum(1) > 0.6).flatten(1).sum(1).cpu()
        for spec, count in zip(specs, counts):
            pixels.setdefault(shape_of(spec.prompt), []).append(float(count))
    base = np.mean(pixels.get("circle", [np.nan]))
    print(f"samples' object pixels per named shape ({len(specs)} prompts x 2 seeds; ratio to circle, the renderer's area ratio):")
    for name in SHAPES:
        if name in pixels:
            print(f"  {name:8s} {np.mean(pixels[name]):6.1f} px  x{np.mean(pixels[name]) / base:.2f} (area x{AREA[name] / AREA['circle']:.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="a training run dir or a checkpoints/step_* folder")
    ap.add_argument("out", help="the grid (PNG)")
    ap.add_argument("--sigmas", nargs="+", type=float, default=[1.0, 2.0, 4.0, 8.0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--zoom", type=int, default=4, help="pixels per image pixel in the grid")
    ap.add_argument("--mass-prompts", type=int, default=60, help="prompts for the mass-vs-area measure (0: off)")
    args = ap.parse_args()

    pipe = load_pipeline(args.checkpoint)
    h, w = pipe.resolution
    specs, _, x0 = shape_scenes(pipe, args.prompts)

    def cond(prompts):
        texts = encode_for(pipe.dit, pipe.encoders, prompts)
        return [t.hidden for t in texts], [t.mask for t in texts]

    right, changed = cond([s.prompt for s in specs]), cond([other_shape(s.prompt) for s in specs])
    empty = cond([""] * len(specs))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)).to(pipe.device)
    rows = []
    print(f"{args.checkpoint}: {len(specs)} shape prompts; mean squared error of D(x; sigma) against the clean latents")
    with torch.no_grad():
        for sigma in args.sigmas:
            s = torch.full((len(specs),), sigma, device=pipe.device)
            noisy = x0 + noise * sigma
            estimates = [pipe.edm.denoise(pipe.dit, noisy, s, *c) for c in (right, changed, empty)]
            sampled = pipe.edm.sample(pipe.dit, x0.shape, right, empty, steps=args.steps, guidance=args.guidance,
                                      device=pipe.device, noise=noise, start=(x0, sigma))
            err = [float(((d - x0) ** 2).mean()) for d in estimates]
            print(f"  sigma {sigma:5.2f}: right {err[0]:.4f}  shape changed {err[1]:.4f}  empty {err[2]:.4f}")
            rows.append([x0, noisy / (1 + sigma**2) ** 0.5, *estimates, sampled])
    z = args.zoom
    grid = Image.new("RGB", (len(COLUMNS) * w * z, len(rows) * len(specs) * h * z), "white")
    for r, columns in enumerate(rows):
        images = [pipe.codec.decode(c).clamp(-1, 1).cpu() for c in columns]
        for i in range(len(specs)):
            for k, im in enumerate(images):
                tile = to_pil(im[i]).resize((w * z, h * z), Image.NEAREST)
                grid.paste(tile, (k * w * z, (r * len(specs) + i) * h * z))
    grid.save(args.out)
    if args.mass_prompts:
        scenes = shape_scenes(pipe, args.mass_prompts)  # rendered once for both measures
        with torch.no_grad():
            mass_vs_area(pipe, cond, scenes, [s for s in args.sigmas if s >= 4] or args.sigmas)
            sampled_areas(pipe, cond, scenes, args.guidance, args.steps)
    print(f"wrote {args.out}: rows = sigma {args.sigmas} x prompts {[s.prompt for s in specs]}; columns = {list(COLUMNS)}")


if __name__ == "__main__":
    main()
