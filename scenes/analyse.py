"""Facts about an image (objects: colour, shape, centre, RGB, area), and the per-category checks.

Two sources of facts go through the same checker:
- `facts_from_scene`: from a scene graph (the truth; used to compute what chance is);
- `facts_from_image`: from pixels alone. A pixel with a large channel spread is an object pixel
  (backgrounds are neutral); its nearest named colour labels it; 8-connected regions of one
  label are objects; specks below a minimum area are noise. The shape is the one of the three, as
  scenes/render.py draws it, that overlaps the region best (highest intersection over union) when
  placed at the region's centroid with the region's area. A fit to the whole outline is not thrown
  by what a person also looks past: a stray pixel on an edge, a soft or ragged border, a rounded
  corner (a rule on the bounding box's fill called a square with one speck on its edge a circle).
  The minimum area is calibrated on ground-truth renders at the resolution being scored, and the
  calibration refuses a resolution at which the fit does not tell the shapes apart.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
from PIL import Image
from scipy import ndimage

from scenes.graph import COLORS, SHAPES, SIZES, Scene
from scenes.render import render

from .eval_prompts import RULE, Spec, _obj, _place, _scene

# Which analyser scored a report: changed when a change to it moves scores, so that numbers made
# with another one are not compared with or reused for its own (benchmarks/ablation.py).
# bbox-fill (until 2026-12-06): the shape from how much of its bounding box a region fills.
ANALYSER = "shape-fit-1"
NAMES = list(COLORS)
CANONICAL = np.array([COLORS[n] for n in NAMES], dtype=np.float32)
MIN_CHROMA = 60
RGB_TOLERANCE = 12  # per channel: an exact-RGB prompt is followed if the object is this close
RELATION_MARGIN = 0.08  # centres must differ by this fraction of the image to count as left/above


@dataclass(frozen=True)
class Fact:
    color: str
    shape: str
    cx: float  # centre as a fraction of width / height
    cy: float
    area: float  # pixels
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class Calibration:
    size: tuple[int, int]
    min_area: float  # smaller regions are noise
    shape_accuracy: float  # of the shape fit on the calibration renders

    def to_dict(self) -> dict:
        return asdict(self)


# Each shape as scenes/render.py draws it around a centre with "radius" r: its area in units of r^2,
# and whether offsets (dx, dy) from the centre are inside it (the triangle points up, centroid at
# the centre).
SHAPE_AREA = {"circle": math.pi, "square": 4.0, "triangle": 3 * math.sqrt(3) / 4}
_INSIDE = {
    "circle": lambda dx, dy, r: dx * dx + dy * dy <= r * r,
    "square": lambda dx, dy, r: (np.abs(dx) <= r) & (np.abs(dy) <= r),
    "triangle": lambda dx, dy, r: (dy >= -r) & (dy <= r / 2) & (np.abs(dx) <= (dy + r) / math.sqrt(3)),
}
SUBPIXELS = 4  # per side: a template covers each pixel in steps of 1/16


def shape_fits(ys: np.ndarray, xs: np.ndarray, image_hw: tuple[int, int]) -> dict[str, float]:
    """Intersection over union of a region (the row and column indices of its pixels in an image of
    `image_hw`) with each shape placed at the region's centroid with the region's area, the template
    rasterised as coverage fractions per pixel and cut at the image's edges."""
    cy, cx, area = ys.mean() + 0.5, xs.mean() + 0.5, len(ys)  # pixel i spans [i, i + 1)
    offsets = (np.arange(SUBPIXELS) + 0.5) / SUBPIXELS
    fits = {}
    for shape, unit_area in SHAPE_AREA.items():
        r = math.sqrt(area / unit_area)
        reach = int(math.ceil(1.5 * r)) + 2
        y0, y1 = max(int(cy) - reach, 0), min(int(cy) + reach + 1, image_hw[0])
        x0, x1 = max(int(cx) - reach, 0), min(int(cx) + reach + 1, image_hw[1])
        py = (np.arange(y0, y1)[:, None] + offsets).reshape(-1, 1) - cy
        px = (np.arange(x0, x1)[:, None] + offsets).reshape(1, -1) - cx
        cover = _INSIDE[shape](px, py, r).reshape(y1 - y0, SUBPIXELS, x1 - x0, SUBPIXELS).mean((1, 3))
        inside = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
        window = np.zeros(cover.shape, dtype=bool)
        window[ys[inside] - y0, xs[inside] - x0] = True
        outside = area - int(inside.sum())  # region pixels beyond the window: in the union only
        fits[shape] = float(np.minimum(window, cover).sum() / (np.maximum(window, cover).sum() + outside))
    return fits


def regions(image: Image.Image | np.ndarray, min_area: float = 1):
    """(colour, area, shape, x, y, mean RGB) of every 8-connected region of object pixels of one
    named colour with at least `min_area` pixels; shape is the best fit (shape_fits); x, y are
    pixel centroids."""
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    chromatic = (arr.max(-1) - arr.min(-1)) >= MIN_CHROMA
    nearest = ((arr[..., None, :] - CANONICAL) ** 2).sum(-1).argmin(-1)
    for idx in np.unique(nearest[chromatic]):
        labels, n = ndimage.label(chromatic & (nearest == idx), structure=np.ones((3, 3)))
        areas = np.bincount(labels.ravel(), minlength=n + 1)
        boxes = ndimage.find_objects(labels)
        for k in np.nonzero(areas[1:] >= min_area)[0] + 1:  # noise makes thousands of specks: skip them cheaply
            box_y, box_x = boxes[k - 1]
            ys, xs = np.nonzero(labels[box_y, box_x] == k)
            ys, xs = ys + box_y.start, xs + box_x.start
            fits = shape_fits(ys, xs, labels.shape)
            rgb = tuple(int(round(v)) for v in arr[ys, xs].mean(0))
            yield NAMES[idx], int(areas[k]), max(fits, key=fits.get), float(xs.mean()), float(ys.mean()), rgb


@lru_cache(maxsize=8)
def calibrate(size: tuple[int, int], n: int = 40, seed: int = 7) -> Calibration:
    """The minimum area of an object from rendered ground-truth shapes (every size, random places)
    at `size`, and how often the shape fit names their shapes right (at least 90%, or the shapes
    cannot be told apart at this resolution)."""
    rng = random.Random(seed)
    right, areas = [], []
    w, h = size
    for i in range(n):
        for shape in SHAPES:
            for size_name, frac in SIZES.items():
                scene = _scene(f"cal-{i}", rng, size)
                color = rng.choice(NAMES)
                r = frac * min(w, h)
                cx, cy = _place(rng, w, h, r, [])
                scene.objects.append(_obj(shape, color, COLORS[color], size_name, cx, cy, r))
                for _, area, fitted, _, _, _ in regions(render(scene)):
                    right.append(fitted == shape)
                    areas.append(area)
    accuracy = float(np.mean(right))
    if accuracy < 0.9:
        raise ValueError(f"at {w}x{h} the shapes cannot be told apart: the shape fit names {accuracy:.0%} of "
                         f"rendered shapes right")
    return Calibration(size=tuple(size), min_area=0.4 * float(min(areas)), shape_accuracy=accuracy)


def facts_from_image(image: Image.Image, calib: Calibration | None = None) -> list[Fact]:
    calib = calib or calibrate(tuple(image.size))
    w, h = image.size
    facts = []
    for color, area, shape, x, y, rgb in regions(image, calib.min_area):
        facts.append(Fact(color, shape, (x + 0.5) / w, (y + 0.5) / h, float(area), rgb))
    return sorted(facts, key=lambda f: -f.area)


CLEAN_OBJECT_SHARE = 0.8  # of the object pixels, in regions of at least the calibrated minimum area
CLEAN_BACKGROUND_DEVIATION = 4.0  # mean absolute deviation (0-255) of the background from its median


def clean_scene(image: Image.Image, calib: Calibration | None = None) -> bool:
    """A prompt-independent image-quality check: the image looks like a scene of the corpus, i.e.
    at least one object region; at least CLEAN_OBJECT_SHARE of its object (chromatic) pixels in
    regions the analyser counts as objects, not specks; and a flat background (the neutral pixels
    away from objects deviate from their median by at most CLEAN_BACKGROUND_DEVIATION on average).
    Ground-truth renders are all clean; noise and speckle are not."""
    calib = calib or calibrate(tuple(image.size))
    arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    chromatic = (arr.max(-1) - arr.min(-1)) >= MIN_CHROMA
    in_objects = sum(area for _, area, *_ in regions(image, calib.min_area))
    if in_objects == 0 or in_objects < CLEAN_OBJECT_SHARE * chromatic.sum():
        return False
    background = arr[~ndimage.binary_dilation(chromatic, structure=np.ones((3, 3)))]
    if len(background) == 0:
        return False
    return float(np.abs(background - np.median(background, 0)).mean()) <= CLEAN_BACKGROUND_DEVIATION


def facts_from_scene(scene: Scene) -> list[Fact]:
    facts = [Fact(o.color, o.shape, o.cx, o.cy, SHAPE_AREA[o.shape] * o.r**2, tuple(o.rgb)) for o in scene.objects]
    return sorted(facts, key=lambda f: -f.area)


def _largest(facts: list[Fact], color: str) -> Fact | None:
    return next((f for f in facts if f.color == color), None)


def check(spec: Spec, facts: list[Fact]) -> bool:
    """Does an image with these facts follow the prompt? One rule per category."""
    return bool(_check(spec, facts))


def both_found(spec: Spec, facts: list[Fact]) -> bool:
    """For a two-object prompt (position, binding): are objects of both named colours there? The
    relation or the binding can only be judged when they are."""
    t = spec.target
    ca, cb = (t["a"][0], t["b"][0]) if spec.category == "binding" else (t["a"], t["b"])
    return _largest(facts, ca) is not None and _largest(facts, cb) is not None


def slot_hits(spec: Spec, facts: list[Fact]) -> tuple[bool, bool]:
    """For a binding prompt: (the first-named object is there with its shape, the second is)."""
    t = spec.target
    a, b = _largest(facts, t["a"][0]), _largest(facts, t["b"][0])
    return (a is not None and a.shape == t["a"][1], b is not None and b.shape == t["b"][1])


def _check(spec: Spec, facts: list[Fact]) -> bool:
    t, c = spec.target, RULE.get(spec.category, spec.category)
    if c == "colour":
        totals: dict[str, float] = {}
        for f in facts:
            totals[f.color] = totals.get(f.color, 0) + f.area
        return bool(totals) and max(totals, key=totals.get) == t["color"]
    if c == "rgb":
        return bool(facts) and max(abs(a - b) for a, b in zip(facts[0].rgb, t["rgb"])) <= RGB_TOLERANCE
    if c in ("shape", "shape_colourless"):
        return bool(facts) and facts[0].shape == t["shape"]
    if c == "count":
        return sum(f.color == t["color"] for f in facts) == t["n"]
    if c == "binding":
        a, b = _largest(facts, t["a"][0]), _largest(facts, t["b"][0])
        return a is not None and b is not None and a.shape == t["a"][1] and b.shape == t["b"][1]
    if c == "position":
        a, b = _largest(facts, t["a"]), _largest(facts, t["b"])
        if a is None or b is None:
            return False
        dx, dy, m = a.cx - b.cx, a.cy - b.cy, RELATION_MARGIN
        return {"to the left of": dx < -m, "to the right of": dx > m, "above": dy < -m, "below": dy > m}[t["relation"]]
    raise ValueError(f"unknown category {c!r}")


# -- named colours of whole images (tests and the trainer's learning check) -----------------
_HIST_NAMES = list(COLORS)
_HIST_RGB = np.array([COLORS[n] for n in _HIST_NAMES], dtype=np.float32)


def color_histogram(image: Image.Image | np.ndarray, min_chroma: int = 60) -> dict[str, int]:
    """Pixels per named colour, counting only chromatic pixels (max - min channel >= min_chroma)."""
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    px = arr.reshape(-1, 3)
    px = px[(px.max(1) - px.min(1)) >= min_chroma]
    if not len(px):
        return {}
    nearest = ((px[:, None, :] - _HIST_RGB[None]) ** 2).sum(-1).argmin(1)
    counts = np.bincount(nearest, minlength=len(_HIST_NAMES))
    return {name: int(c) for name, c in zip(_HIST_NAMES, counts) if c}


def dominant_color(image: Image.Image | np.ndarray, min_pixels: int = 4) -> str | None:
    """The named colour with the most chromatic pixels, or None when there are fewer than min_pixels."""
    hist = color_histogram(image)
    if not hist or max(hist.values()) < min_pixels:
        return None
    return max(hist, key=hist.get)
