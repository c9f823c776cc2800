"""Pixel analysis of scene-like images: which named colours they show, decided from pixels alone.

Object colours in the scenes are chromatic and backgrounds neutral (graph.py), so a pixel with a
large channel spread belongs to an object, and its nearest canonical colour names it. Used to
score generated images against their prompts (no model, no judgement by eye).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .graph import COLORS

_NAMES = list(COLORS)
_RGB = np.array([COLORS[n] for n in _NAMES], dtype=np.float32)


def color_histogram(image: Image.Image | np.ndarray, min_chroma: int = 60) -> dict[str, int]:
    """Pixels per named colour, counting only chromatic pixels (max - min channel >= min_chroma)."""
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    px = arr.reshape(-1, 3)
    px = px[(px.max(1) - px.min(1)) >= min_chroma]
    if not len(px):
        return {}
    nearest = ((px[:, None, :] - _RGB[None]) ** 2).sum(-1).argmin(1)
    counts = np.bincount(nearest, minlength=len(_NAMES))
    return {name: int(c) for name, c in zip(_NAMES, counts) if c}


def dominant_color(image: Image.Image | np.ndarray, min_pixels: int = 4) -> str | None:
    """The named colour with the most chromatic pixels, or None when there are fewer than min_pixels."""
    hist = color_histogram(image)
    if not hist or max(hist.values()) < min_pixels:
        return None
    return max(hist, key=hist.get)
