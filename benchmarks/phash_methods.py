"""The two perceptual-hash methods (datapipe/filters/phash.py) side by side: cost and robustness.

    python benchmarks/phash_methods.py --n 600

Images: scenes renders (flat shapes on flat backgrounds, the corpus the other benchmarks serve) and
"photo-like" ones (smooth random colour fields plus grain), at several sizes. For each method:
  - CPU-ms per hash, from the decoded RGB image (what the decode stage has at hand);
  - bits moved by what a web copy goes through: JPEG re-encodes (q80, q50), a downscale to half,
    an upscale by 1.5, a 4% border crop: median, 99th percentile and max, and the share within
    `dedup.phash_distance` (the recall of near-duplicate dedup at that threshold);
  - distances between different images: 1st percentile and min, and the share within the
    threshold (false duplicates);
and, across methods, the bits that differ between the two hashes of the same image.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from datapipe.filters.phash import phash_bits  # noqa: E402

METHODS = ("lanczos", "box")


def scenes_images(n: int, seed: int) -> list[Image.Image]:
    from scenes.graph import generate_scene
    from scenes.render import render

    sizes = [(256, 256), (320, 192), (512, 384), (640, 640)]
    return [render(generate_scene(f"s{i}", seed * 1_000_003 + i, sizes[i % len(sizes)])).convert("RGB")
            for i in range(n)]


def photo_like(n: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    sizes = [(256, 256), (400, 300), (800, 600), (1024, 768)]
    out = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        field = rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)  # a coarse random colour field ...
        img = Image.fromarray(field).resize((w, h), Image.BICUBIC).filter(ImageFilter.GaussianBlur(w / 40))
        grain = rng.normal(0, 12, (h, w, 3))  # ... plus sensor-like grain
        out.append(Image.fromarray(np.clip(np.asarray(img, np.float64) + grain, 0, 255).astype(np.uint8)))
    return out


def jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


TRANSFORMS = {
    "jpeg q80": lambda im: jpeg(im, 80),
    "jpeg q50": lambda im: jpeg(im, 50),
    "half size": lambda im: im.resize((max(1, im.width // 2), max(1, im.height // 2)), Image.LANCZOS),
    "1.5x size": lambda im: im.resize((round(im.width * 1.5), round(im.height * 1.5)), Image.BICUBIC),
    "crop 4%": lambda im: im.crop((im.width // 50, im.height // 50, im.width - im.width // 50, im.height - im.height // 50)),
}


def distance(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.count_nonzero(a != b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=600, help="images per family")
    parser.add_argument("--size", type=int, default=16, help="hash side (decode.phash_size)")
    parser.add_argument("--threshold", type=int, default=32, help="dedup.phash_distance")
    parser.add_argument("--pairs", type=int, default=20000, help="random pairs of different images")
    args = parser.parse_args()

    families = {"scenes": scenes_images(args.n, 0), "photo-like": photo_like(args.n, 1)}
    rng = np.random.default_rng(2)
    print(f"{args.n} images per family, {args.size * args.size}-bit hashes, threshold {args.threshold} bits\n")
    for family, images in families.items():
        print(f"== {family}")
        hashes = {}
        for method in METHODS:
            phash_bits(images[0], args.size, method)  # imports and caches outside the timing
            t0 = time.process_time()
            hashes[method] = [phash_bits(im, args.size, method) for im in images]
            ms = (time.process_time() - t0) / len(images) * 1e3
            print(f"  {method:8s} {ms:6.3f} CPU-ms per hash")
        cross = [distance(a, b) for a, b in zip(hashes["lanczos"], hashes["box"])]
        print(f"  box vs lanczos on the same image: mean {np.mean(cross):.1f} bits, p99 {np.percentile(cross, 99):.0f}, "
              f"max {max(cross)}")
        i, j = rng.integers(0, len(images), (2, args.pairs))
        keep = i != j
        i, j = i[keep], j[keep]
        for name, fn in TRANSFORMS.items():
            copies = [fn(im) for im in images]
            cells = []
            for method in METHODS:
                d = np.array([distance(h, phash_bits(c, args.size, method)) for h, c in zip(hashes[method], copies)])
                cells.append(f"{method} p50 {np.median(d):3.0f} p99 {np.percentile(d, 99):3.0f} max {d.max():3d} "
                             f"within {np.mean(d <= args.threshold) * 100:5.1f}%")
            print(f"  {name:10s} " + " | ".join(cells))
        cells = []
        for method in METHODS:
            h = hashes[method]
            d = np.array([distance(h[a], h[b]) for a, b in zip(i, j)])
            cells.append(f"{method} p1 {np.percentile(d, 1):3.0f} min {d.min():3d} within {np.mean(d <= args.threshold) * 100:5.2f}%")
        print(f"  {'different':10s} " + " | ".join(cells) + f"  ({len(i)} pairs)")
        print()


if __name__ == "__main__":
    main()
