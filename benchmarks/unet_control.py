"""A control for issue 20: does a small convolutional U-Net learn the shapes where the DiT does not?

Trains a class-conditional diffusers `UNet2DModel` with the project's EDM (model/edm.py: the same
preconditioning, loss, noise distribution and Heun sampler as the DiT) on a scene corpus's images,
conditioned on the (colour, shape) of each image's single object read from its scene graph (learned
embeddings added to the noise embedding: the most direct conditioning there is; 10% dropped for
classifier-free guidance). Then it draws the eval's colour and shape prompts (the same specs, seeds
and analyser as `deepfusion eval scenes`) and scores them.

If this model draws the named shapes at the DiT's budget and the DiT does not, the DiT's design
(its tokens, its text path) is what fails; if it does not either, that points at the budget (the
number of training images).

    deepfusion scenes make C n=2048 seed=5 max_groups=1 max_count=1 text_probability=0 "object_sizes=[large]" "sizes=[[256,256]]"
    .venv/bin/python benchmarks/unet_control.py C --out OUT [--steps 1400 --batch 16 --lr 2e-3]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers import UNet2DModel  # noqa: E402

from model.edm import EDM  # noqa: E402
from scenes.analyse import calibrate, check, clean_scene, facts_from_image  # noqa: E402
from scenes.eval_prompts import make_specs  # noqa: E402
from jobs.profiles import config_path  # noqa: E402
from scenes.graph import COLORS, SHAPES  # noqa: E402
from trainer.buckets import resize_to_bucket  # noqa: E402
from trainer.config import load_config  # noqa: E402
from trainer.sampling import save_grid  # noqa: E402
from trainer.train import model_configs  # noqa: E402

COLOUR_NAMES = list(COLORS)


def single_object_scenes(corpus: str, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N, 3, h, w] (resized as the trainer's loader does) and (colour, shape) ids [N, 2]
    of every ok row of a scene corpus whose scene graph has exactly one object."""
    images, labels = [], []
    for row in pq.read_table(Path(corpus) / "ground_truth.parquet").to_pylist():
        objects = json.loads(row["scene"])["objects"]
        if row["kind"] != "ok" or len(objects) != 1:
            continue
        with Image.open(Path(corpus) / "images" / f"{row['scene_id']}.png") as image:
            images.append(resize_to_bucket(image, size))
        labels.append((COLOUR_NAMES.index(objects[0]["color"]), SHAPES.index(objects[0]["shape"])))
    if not images:
        raise SystemExit(f"{corpus}: no ok row with a one-object scene graph")
    return torch.stack(images), torch.tensor(labels)


class ConditionedUNet(torch.nn.Module):
    """F(x, c_noise, labels): a UNet2DModel whose class embedding is colour + shape embeddings (index
    len(...) of each is the dropped label, the unconditional branch)."""

    def __init__(self, channels: tuple[int, ...], layers_per_block: int):
        super().__init__()
        self.unet = UNet2DModel(
            sample_size=32, in_channels=3, out_channels=3, block_out_channels=channels,
            layers_per_block=layers_per_block, class_embed_type="identity",
            down_block_types=("DownBlock2D",) * (len(channels) - 1) + ("AttnDownBlock2D",),
            up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (len(channels) - 1),
            attention_head_dim=32, norm_num_groups=min(32, channels[0]))
        emb = channels[0] * 4
        self.colour = torch.nn.Embedding(len(COLOUR_NAMES) + 1, emb)
        self.shape = torch.nn.Embedding(len(SHAPES) + 1, emb)

    def forward(self, x, c_noise, labels):
        c = self.colour(labels[:, 0]) + self.shape(labels[:, 1])
        return self.unet(x, c_noise * 16, class_labels=c).sample


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", help="a scene corpus folder (deepfusion scenes make)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=1400)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--channels", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--layers-per-block", type=int, default=1)
    ap.add_argument("--per-category", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--p-mean", type=float, help="training ln(sigma) mean (default: the demo's, 0.5; EDM's: -1.2)")
    ap.add_argument("--p-std", type=float, help="training ln(sigma) spread (default: the demo's, 1.5; EDM's: 1.2)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    size = (32, 32)

    # the demo's pixel scale and EDM settings (jobs/configs/train/demo.yaml), the noise distribution overridable
    _, _, codec, edm_cfg = model_configs(load_config(config_path("train", "demo")))
    scale = codec.scale
    edm_cfg.p_mean = edm_cfg.p_mean if args.p_mean is None else args.p_mean
    edm_cfg.p_std = edm_cfg.p_std if args.p_std is None else args.p_std
    edm = EDM(edm_cfg)
    pixels, labels = single_object_scenes(args.corpus, size)
    x_all = (pixels.float() / 127.5 - 1) * scale
    print(f"{len(labels)} one-object scenes at {size[0]}x{size[1]}")
    net = ConditionedUNet(tuple(args.channels), args.layers_per_block)
    ema = ConditionedUNet(tuple(args.channels), args.layers_per_block)
    ema.load_state_dict(net.state_dict())
    ema.requires_grad_(False)
    params = sum(p.numel() for p in net.parameters())
    print(f"U-Net {args.channels} x{args.layers_per_block}: {params / 1e6:.2f}M parameters")
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.0)
    warmup = 50
    gen = torch.Generator().manual_seed(args.seed)
    null = torch.tensor([len(COLOUR_NAMES), len(SHAPES)])
    t0, losses = time.time(), []
    for step in range(args.steps):
        lr = args.lr * min(1.0, (step + 1) / warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(len(labels), (args.batch,), generator=gen)
        x0, lab = x_all[idx], labels[idx].clone()
        if torch.rand(1, generator=gen).item() < 0.5:  # the loader's horizontal flip
            x0 = x0.flip(-1)
        drop = torch.rand(args.batch, generator=gen) < 0.1
        lab[drop] = null
        loss, _ = edm.loss(net, x0, lab, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.mean().backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        beta = 0.5 ** (args.batch / 1000)  # the demo's EMA half-life: 1,000 images
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p, 1 - beta)
        losses.append(loss.mean().item())
        if (step + 1) % 200 == 0:
            print(f"step {step + 1}: loss {np.mean(losses[-200:]):.4f}  {time.time() - t0:.0f}s", flush=True)
    train_s = time.time() - t0
    ema.eval()

    calib = calibrate(size)
    specs = make_specs(args.per_category, size=size, categories=("colour", "shape"))
    result = {"train_s": round(train_s, 1), "params": params, "steps": args.steps, "batch": args.batch,
              "lr": args.lr, "channels": args.channels, "p_mean": edm_cfg.p_mean, "p_std": edm_cfg.p_std}
    per_shape = {s: [0, 0] for s in SHAPES}
    clean, grid_images, grid_labels = [], [], []
    for category in ("colour", "shape"):
        cat_specs = [s for s in specs if s.category == category]
        hits = []
        for seed in (0, 1):
            for spec in cat_specs:
                colour, shape = spec.scene.objects[0].color, spec.scene.objects[0].shape  # the one object named
                lab = torch.tensor([[COLOUR_NAMES.index(colour), SHAPES.index(shape)]])
                noise = torch.randn((1, 3, *size), generator=torch.Generator().manual_seed(seed))
                x = edm.sample(ema, noise.shape, (lab,), (null[None],), steps=16, guidance=3.0, noise=noise)
                img = ((x[0] / scale).clamp(-1, 1).add(1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
                image = Image.fromarray(img)
                facts = facts_from_image(image, calib)
                ok = check(spec, facts)
                hits.append(ok)
                clean.append(clean_scene(image, calib))
                if category == "shape":
                    per_shape[shape][0] += ok
                    per_shape[shape][1] += 1
                    if len(grid_images) < 24:
                        grid_images.append((x[0] / scale).clamp(-1, 1))
                        grid_labels.append(f"{spec.prompt[2:]}{' +' if ok else ''}")
        result[category] = float(np.mean(hits))
    result["per_shape_right"] = {s: f"{a}/{n}" for s, (a, n) in per_shape.items()}
    result["clean_scenes"] = float(np.mean(clean))
    save_grid(torch.stack(grid_images), 4, 6, out / "grid_shape.png", labels=grid_labels)
    (out / "report.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
