"""Where does a model lose the shape? The eval's shape prompts (`scenes/eval_prompts.py`), their own
ground-truth scenes rendered at 8x and downscaled as the trainer's loader does, noised to a level
sigma, then the model's sampler (Heun, the Karras schedule of `--steps` levels, guidance) run from the
first level <= sigma down to the checkpoint's sigma_min; the analyser scores the result. Starting at
sigma_max is plain sampling. A model whose samples draw no shapes either fails to read the shape
word (high sigma) or cannot keep a shape that its input already shows (low sigma); this tells which.

    .venv/bin/python benchmarks/shape_survival.py RUN_OR_CHECKPOINT [--guidance 3] [--prompts 40]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import encode_for  # noqa: E402
from scenes.analyse import calibrate, check, facts_from_image  # noqa: E402
from scenes.eval_prompts import make_specs  # noqa: E402
from scenes.render import render  # noqa: E402
from trainer.buckets import resize_to_bucket  # noqa: E402
from trainer.sampling import load_pipeline, to_pil  # noqa: E402

STARTS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="a training run dir or a checkpoints/step_* folder")
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--steps", type=int, default=16, help="levels of the full schedule (the eval's 16)")
    ap.add_argument("--prompts", type=int, default=40)
    ap.add_argument("--category", default="shape", help="an eval category, e.g. shape, colour, count")
    ap.add_argument("--seed", type=int, default=0, help="of the noise")
    args = ap.parse_args()

    pipe = load_pipeline(args.checkpoint)
    h, w = pipe.resolution
    specs = make_specs(args.prompts, (8 * w, 8 * h), 99, (args.category,))
    pixels = torch.stack([resize_to_bucket(render(s.scene), (h, w)) for s in specs]).to(pipe.device)
    x0 = pipe.codec.encode(pixels.float() / 127.5 - 1)
    calib = calibrate((w, h))

    def cond(prompts):
        texts = encode_for(pipe.dit, pipe.encoders, prompts)
        return [t.hidden for t in texts], [t.mask for t in texts]

    prompted, empty = cond([s.prompt for s in specs]), cond([""] * len(specs))

    def score(latents) -> int:
        images = pipe.codec.decode(latents).clamp(-1, 1).cpu()
        return sum(check(s, facts_from_image(to_pil(images[i]), calib)) for i, s in enumerate(specs))

    sigma_max = pipe.edm.cfg.sigma_max
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(args.seed)).to(pipe.device)
    print(f"{args.checkpoint}: {len(specs)} {args.category} prompts, guidance {args.guidance}")
    print(f"  the clean renders themselves: {score(x0)}/{len(specs)}")
    for start in (*STARTS, sigma_max):
        sigmas = pipe.edm.schedule_from(args.steps, start, pipe.device)
        x = pipe.edm.sample(pipe.dit, x0.shape, prompted, empty, steps=args.steps, guidance=args.guidance,
                            device=pipe.device, noise=noise, start=(x0, start))
        ok = score(x)
        print(f"  from sigma {float(sigmas[0]):6.2f} ({len(sigmas) - 1:2d} steps): {ok}/{len(specs)} = {ok / len(specs):.0%}",
              flush=True)


if __name__ == "__main__":
    main()
