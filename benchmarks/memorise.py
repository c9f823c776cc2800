"""Can a training recipe fit a handful of scenes? A capacity check for the DiT and its trainer.

Train a recipe on a tiny dataset (a few scenes, seen hundreds of times each), then run this on the
run: the EDM loss of the dataset's own images with their own level-3 captions, at fixed noise levels
with fixed noise, and a grid of samples (four seeds) for the first prompts. A recipe that can draw
a circle, square or triangle at all reproduces its training scenes here: low loss at every level and
the training images in the grid. If it cannot, prompt following on a real corpus is not the
question yet.

    deepfusion scenes make M n=16 seed=3 max_groups=1 text_probability=0 "object_sizes=[large]" "sizes=[[256,256]]"
    deepfusion scenes dataset M DS
    deepfusion train --config demo run_dir=RUN data.root=DS steps=600 text_cache_mb=64
    .venv/bin/python benchmarks/memorise.py RUN DS [--grid RUN/memorise.png]
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datapipe.contract import CAPTION_STATUS_OK, Dataset  # noqa: E402
from jobs.eval_scenes import fixed_noise_losses  # noqa: E402
from trainer.buckets import resize_to_bucket  # noqa: E402
from trainer.sampling import load_pipeline, save_grid  # noqa: E402

SIGMAS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)


def training_scenes(root: str, size: tuple[int, int], level: int = 3) -> tuple[torch.Tensor, list[str]]:
    """Every committed sample of the dataset (read through its contract, as the trainer does) that
    has an ok reference caption: the image resized as the trainer's loader does (uint8 [N, 3, h, w])
    and its caption at `level`."""
    dataset = Dataset(root)
    captions = dataset.captions("reference")
    images, prompts = [], []
    for sid in dataset.manifest.shard_ids:
        text = {r["key"]: r[f"level_{level}"] for r in captions.shard(sid).to_pylist()  # empty if uncaptioned
                if r["status"] == CAPTION_STATUS_OK and r[f"level_{level}"]}
        if not text:
            continue
        for sample in dataset.samples(sid):
            if sample.key in text:
                with Image.open(io.BytesIO(sample.image)) as image:
                    images.append(resize_to_bucket(image, size))
                prompts.append(text[sample.key])
    if not images:
        raise SystemExit(f"{root}: no sample with an ok level-{level} reference caption")
    return torch.stack(images), prompts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a training run dir or a checkpoints/step_* folder")
    ap.add_argument("dataset", help="the dataset it was trained on")
    ap.add_argument("--grid", help="where to write the sample grid (default: RUN/memorise.png)")
    ap.add_argument("--rows", type=int, default=8, help="prompts in the grid")
    args = ap.parse_args()

    pipe = load_pipeline(args.run)
    pixels, prompts = training_scenes(args.dataset, pipe.resolution)
    x0 = pipe.codec.encode(pixels.to(pipe.device).float() / 127.5 - 1)
    losses = fixed_noise_losses(pipe, x0, prompts, SIGMAS, noise_seed=0).mean(0)
    print(f"{args.run}: {len(prompts)} training scenes, EDM loss at fixed noise (their level-3 captions)")
    print("  " + "  ".join(f"sigma {s:g}: {v:.4f}" for s, v in zip(SIGMAS, losses.tolist())) + f"  mean {losses.mean():.4f}")

    rows = prompts[: args.rows]
    seeds = list(range(4))
    images = pipe.generate([p for p in rows for _ in seeds], seeds * len(rows), steps=16, guidance=3.0)
    grid = Path(args.grid) if args.grid else Path(args.run) / "memorise.png"
    save_grid(images, len(rows), len(seeds), grid, row_labels=rows)
    print(f"  samples (4 seeds per prompt, 16 steps, guidance 3): {grid}")


if __name__ == "__main__":
    main()
