"""Aspect-ratio buckets: a few image shapes of about equal area, and the nearest one for an image.

Every image is resized to cover its bucket and centre-cropped, so a batch is one tensor and
nothing is padded. Buckets are chosen from metadata (the sidecar's width and height), before any
image is decoded, which is what lets every rank agree on the bucket of each global batch.
"""

from __future__ import annotations

import math

import torch
from PIL import Image


def make_buckets(resolution: int, multiple: int, max_aspect: float) -> list[tuple[int, int]]:
    """(height, width) pairs, sides multiples of `multiple`, area ~ resolution^2, aspect <= max_aspect."""
    area = resolution * resolution
    out = set()
    side = multiple
    while side <= resolution * max_aspect + multiple:
        other = max(multiple, int(round(area / side / multiple)) * multiple)
        for h, w in ((side, other), (other, side)):
            if max(h / w, w / h) <= max_aspect + 1e-9:
                out.add((h, w))
        side += multiple
    # keep, per aspect ratio, the shape whose area is closest to the target
    best: dict[float, tuple[int, int]] = {}
    for h, w in out:
        ratio = round(h / w, 6)
        if ratio not in best or abs(h * w - area) < abs(best[ratio][0] * best[ratio][1] - area):
            best[ratio] = (h, w)
    return sorted(best.values(), key=lambda hw: hw[0] / hw[1])


def nearest_bucket(buckets: list[tuple[int, int]], height: int, width: int) -> int:
    target = math.log(height / width)
    return min(range(len(buckets)), key=lambda i: abs(math.log(buckets[i][0] / buckets[i][1]) - target))


def resize_to_bucket(image: Image.Image, bucket: tuple[int, int]) -> torch.Tensor:
    """Cover the bucket (keeping the aspect ratio), centre-crop; uint8 [3, h, w]."""
    h, w = bucket
    image = image.convert("RGB")
    scale = max(h / image.height, w / image.width)
    size = (max(w, round(image.width * scale)), max(h, round(image.height * scale)))
    if size != image.size:
        image = image.resize(size, Image.Resampling.BICUBIC if scale > 1 else Image.Resampling.BOX)
    left, top = (image.width - w) // 2, (image.height - h) // 2
    image = image.crop((left, top, left + w, top + h))
    return torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(h, w, 3).permute(2, 0, 1).contiguous()
