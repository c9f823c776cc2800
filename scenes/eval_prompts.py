"""The benchmark's prompts: per category, a prompt and the scene that answers it exactly.

Categories (each tests one thing a text encoder must carry into the image):
  colour    "a red circle"                           the dominant colour
  rgb       "a circle, RGB 201, 44, 61"              the exact colour, within a tolerance
  shape     "a triangle"                             the main object's shape
  count     "three blue squares"                     how many objects of that colour
  position  "a red circle to the left of a green square"   the relation of two objects
  binding   "a red circle and a green square"        which attribute goes with which object

Prompts come from their own seed (`make_specs(seed=...)`), not from any training corpus: the
phrasing matches the reference captions' vocabulary (level 1-2 and level 6), the combinations
and exact values are drawn fresh. Backgrounds are neutral, objects chromatic, as in the corpus.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from scenes.graph import BACKGROUNDS, COLORS, SHAPES, SIZES, Scene, SceneObject

CATEGORIES = ("colour", "rgb", "shape", "count", "position", "binding")
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
RELATIONS = ("to the left of", "to the right of", "above", "below")
RGB_SPREAD = 40  # exact-RGB targets lie within this distance (per channel) of a named colour
MIN_TARGET_CHROMA = 90  # and keep a channel spread well above the analyser's object threshold (60)


@dataclass
class Spec:
    category: str
    prompt: str
    scene: Scene  # a ground-truth answer to the prompt
    target: dict = field(default_factory=dict)  # what the checker looks for


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


ANYWHERE = (0.12, 0.88, 0.12, 0.88)


def _place(rng: random.Random, w: int, h: int, r: float, placed: list, box=ANYWHERE) -> tuple[float, float]:
    """A centre inside `box` (fractions) keeping one radius from the edges and radius + 4 px from other objects.

    Distances use the circumradius of a square (r * sqrt 2), so no two shapes' pixels can touch."""
    x0, x1, y0, y1 = box
    r = r * 1.415
    for _ in range(100):
        cx, cy = rng.uniform(x0, x1), rng.uniform(y0, y1)
        x, y = cx * w, cy * h
        if x - r < 1 or y - r < 1 or x + r > w - 1 or y + r > h - 1:
            continue
        if all(((x - px) ** 2 + (y - py) ** 2) ** 0.5 > r + pr + 4 for px, py, pr in placed):
            placed.append((x, y, r))
            return round(cx, 4), round(cy, 4)
    raise ValueError(f"no room for an object of radius {r:.1f}px in {w}x{h}")


def _layout(rng: random.Random, w: int, h: int, r: float, boxes: list) -> list[tuple[float, float]]:
    """Centres for len(boxes) objects of radius r, one per box; the whole layout is redrawn when a
    later object finds no room where the earlier ones went."""
    for _ in range(100):
        placed: list = []
        try:
            return [_place(rng, w, h, r, placed, box) for box in boxes]
        except ValueError:
            continue
    raise ValueError(f"cannot lay out {len(boxes)} objects of radius {r:.1f}px in {w}x{h}")


def _scene(sid: str, rng: random.Random, size: tuple[int, int]) -> Scene:
    bg = rng.choice(list(BACKGROUNDS))
    return Scene(sid, 0, size[0], size[1], bg, BACKGROUNDS[bg])


def _obj(shape, color, rgb, size_name, cx, cy, r) -> SceneObject:
    return SceneObject(shape, color, tuple(rgb), size_name, cx, cy, round(r, 2))


def _one(category: str, i: int, rng: random.Random, size: tuple[int, int]) -> Spec:
    w, h = size
    scene = _scene(f"{category}-{i:04d}", rng, size)
    placed: list = []
    big = SIZES["large"] * min(w, h)
    if category in ("colour", "shape", "rgb"):
        color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
        rgb = COLORS[color]
        while category == "rgb":  # an exact colour near the named one, still clearly chromatic
            rgb = tuple(max(0, min(255, c + rng.randint(-RGB_SPREAD, RGB_SPREAD))) for c in COLORS[color])
            if max(rgb) - min(rgb) >= MIN_TARGET_CHROMA:
                break
        cx, cy = _place(rng, w, h, big, placed, (0.3, 0.7, 0.3, 0.7))
        scene.objects.append(_obj(shape, color, rgb, "large", cx, cy, big))
        prompt = {"colour": f"{_article(color)} {color} {shape}", "shape": f"{_article(shape)} {shape}",
                  "rgb": f"{_article(shape)} {shape}, RGB {rgb[0]}, {rgb[1]}, {rgb[2]}"}[category]
        target = {"colour": {"color": color}, "shape": {"shape": shape}, "rgb": {"rgb": list(rgb)}}[category]
        return Spec(category, prompt, scene, target)
    if category == "count":
        color, shape, n = rng.choice(list(COLORS)), rng.choice(SHAPES), rng.randint(1, 4)
        r = SIZES["small"] * min(w, h)
        for cx, cy in _layout(rng, w, h, r, [ANYWHERE] * n):
            scene.objects.append(_obj(shape, color, COLORS[color], "small", cx, cy, r))
        noun = shape if n == 1 else shape + "s"
        return Spec(category, f"{NUMBER_WORDS[n]} {color} {noun}", scene, {"color": color, "n": n})
    (ca, cb), (sa, sb) = rng.sample(list(COLORS), 2), (rng.choice(SHAPES), rng.choice(SHAPES))
    two = "medium" if min(w, h) >= 48 else "small"  # two medium shapes barely fit side by side in 32 px
    r = SIZES[two] * min(w, h)
    if category == "binding":
        sa, sb = rng.sample(SHAPES, 2)  # distinct shapes: swapping attributes is then detectable
        for (c, s), (cx, cy) in zip(((ca, sa), (cb, sb)), _layout(rng, w, h, r, [ANYWHERE] * 2)):
            scene.objects.append(_obj(s, c, COLORS[c], two, cx, cy, r))
        return Spec(category, f"{_article(ca)} {ca} {sa} and {_article(cb)} {cb} {sb}", scene,
                    {"a": [ca, sa], "b": [cb, sb]})
    rel = rng.choice(RELATIONS)
    near, far = (0.12, 0.38), (0.62, 0.88)
    if rel in ("to the left of", "above"):
        first, second = near, far
    else:
        first, second = far, near
    boxes = [(*span, 0.15, 0.85) if "of" in rel else (0.15, 0.85, *span) for span in (first, second)]
    for (c, s), (cx, cy) in zip(((ca, sa), (cb, sb)), _layout(rng, w, h, r, boxes)):
        scene.objects.append(_obj(s, c, COLORS[c], two, cx, cy, r))
    return Spec(category, f"{_article(ca)} {ca} {sa} {rel} {_article(cb)} {cb} {sb}", scene,
                {"a": ca, "b": cb, "relation": rel})


def make_specs(per_category: int, size: tuple[int, int] = (64, 64), seed: int = 2026,
               categories: tuple[str, ...] = CATEGORIES) -> list[Spec]:
    """`per_category` prompts of each category, deterministic in `seed` and `size` (width, height)."""
    unknown = set(categories) - set(CATEGORIES)
    if unknown:
        raise ValueError(f"unknown categories {sorted(unknown)}; known: {list(CATEGORIES)}")
    rng = random.Random(seed)
    return [_one(c, i, rng, size) for c in categories for i in range(per_category)]
