"""Scene graphs: the ground truth of a synthetic image (shapes, colours, counts, places, text).

A scene is a few groups of identical shapes (same colour, shape and size) on a flat neutral
background, plus optionally one short word. Object colours are chromatic and backgrounds neutral,
so a pixel's colour alone says whether it belongs to an object; every group has its own colour,
so counting connected regions of one colour counts a group. That is what makes the scenes a
usable oracle for caption QA and for the prompt-following benchmark.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, field

# Named object colours with their canonical RGB; each object jitters its RGB a little around the
# canonical value, and the exact value is part of the ground truth (level-6 captions state it).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (40, 170, 60),
    "blue": (30, 80, 220),
    "yellow": (240, 210, 30),
    "orange": (245, 130, 20),
    "purple": (130, 50, 180),
    "pink": (240, 120, 190),
    "cyan": (30, 200, 210),
    "brown": (130, 80, 40),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "light gray": (200, 200, 200),
    "dark gray": (70, 70, 70),
    "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.09, "medium": 0.13, "large": 0.18}  # radius as a fraction of min(width, height)
WORDS = ("SALE", "OPEN", "HELLO", "CAFE", "STOP", "JAZZ", "NEW", "2026", "TAXI", "LOVE")
COLOR_JITTER = 10
DEFAULT_SIZES = ((256, 256), (320, 240), (240, 320))


@dataclass
class SceneObject:
    shape: str
    color: str
    rgb: tuple[int, int, int]
    size: str  # small | medium | large
    cx: float  # centre, as a fraction of width / height
    cy: float
    r: float  # radius in pixels (half side for squares, circumradius for triangles)


@dataclass
class SceneText:
    text: str
    color: str
    rgb: tuple[int, int, int]
    cx: float
    cy: float
    px: int  # font size in pixels


@dataclass
class Scene:
    id: str
    seed: int
    width: int
    height: int
    background: str
    background_rgb: tuple[int, int, int]
    objects: list[SceneObject] = field(default_factory=list)
    text: SceneText | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, blob: str | dict) -> "Scene":
        d = json.loads(blob) if isinstance(blob, str) else dict(blob)
        d["background_rgb"] = tuple(d["background_rgb"])
        d["objects"] = [SceneObject(**{**o, "rgb": tuple(o["rgb"])}) for o in d["objects"]]
        if d.get("text"):
            d["text"] = SceneText(**{**d["text"], "rgb": tuple(d["text"]["rgb"])})
        return cls(**d)

    def groups(self) -> list[list[SceneObject]]:
        """Objects grouped by (colour, shape), largest group first, then in drawing order."""
        order: dict[tuple[str, str], list[SceneObject]] = {}
        for o in self.objects:
            order.setdefault((o.color, o.shape), []).append(o)
        return sorted(order.values(), key=lambda g: -len(g))


def _jitter(rgb: tuple[int, int, int], rng: random.Random) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-COLOR_JITTER, COLOR_JITTER))) for c in rgb)


def _fits(cx: float, cy: float, r: float, w: int, h: int, placed: list[tuple[float, float, float]]) -> bool:
    x, y = cx * w, cy * h
    margin = 4
    if x - r < margin or y - r < margin or x + r > w - margin or y + r > h - margin:
        return False
    return all(math.hypot(x - px, y - py) > r + pr + margin for px, py, pr in placed)


def generate_scene(scene_id: str, seed: int, size: tuple[int, int] | None = None, text_probability: float = 0.3,
                   max_groups: int = 3, object_sizes: tuple[str, ...] = tuple(SIZES), max_count: int = 4) -> Scene:
    """A random scene, fully determined by `seed` (and `size`, `max_groups`, `max_count` when given).
    `max_count` caps the shapes per group (1: every group is one shape). The count is still drawn, so
    the first group keeps its colour, shape, size and first place and the scene its ground when only
    `max_count` changes; later groups and the word may land elsewhere (fewer places were drawn)."""
    rng = random.Random(seed)
    width, height = size or rng.choice(DEFAULT_SIZES)
    background = rng.choice(list(BACKGROUNDS))
    n_groups = rng.choices([1, 2, 3][:max_groups], weights=[4, 4, 2][:max_groups])[0]
    colors = rng.sample(list(COLORS), n_groups)  # one colour per group: colour identifies a group
    scene = Scene(scene_id, seed, width, height, background, BACKGROUNDS[background])
    placed: list[tuple[float, float, float]] = []
    budget = 6
    for g, color in enumerate(colors):
        count = min(rng.choices([1, 2, 3, 4], weights=[5, 3, 2, 1])[0], max_count, budget - (n_groups - g - 1))
        shape = rng.choice(SHAPES)
        size_name = rng.choice(list(object_sizes))
        r = SIZES[size_name] * min(width, height)
        for _ in range(count):
            for _attempt in range(200):
                cx, cy = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9)
                if _fits(cx, cy, r, width, height, placed):
                    placed.append((cx * width, cy * height, r))
                    scene.objects.append(
                        SceneObject(shape, color, _jitter(COLORS[color], rng), size_name, round(cx, 4), round(cy, 4), round(r, 2))
                    )
                    budget -= 1
                    break
            # a shape that found no room in 200 tries is left out; the ground truth is what is drawn
    if rng.random() < text_probability:
        px = max(14, int(min(width, height) * 0.12))
        word = rng.choice(WORDS)
        tr = px * len(word) * 0.35  # rough half-width of the word, as a keep-out radius
        light = sum(BACKGROUNDS[background]) > 3 * 128
        color = "black" if light else "white"
        for _attempt in range(200):
            cx, cy = rng.uniform(0.25, 0.75), rng.uniform(0.12, 0.88)
            if _fits(cx, cy, tr, width, height, placed):
                scene.text = SceneText(word, color, (0, 0, 0) if light else (255, 255, 255), round(cx, 4), round(cy, 4), px)
                break
    return scene


# -- words for places and relations, shared by captions and caption QA -------------------------
def position_phrase(cx: float, cy: float) -> str:
    col = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else "center"
    row = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else "middle"
    if col == "center" and row == "middle":
        return "center"
    if col == "center":
        return f"{row} center"
    if row == "middle":
        return col
    return f"{row} {col}"


def relation(a: tuple[float, float], b: tuple[float, float], threshold: float = 0.12) -> list[str]:
    """Spatial relations of point a to point b (fractions of the image): left of, above, ..."""
    out = []
    dx, dy = a[0] - b[0], a[1] - b[1]
    if dx < -threshold:
        out.append("to the left of")
    elif dx > threshold:
        out.append("to the right of")
    if dy < -threshold:
        out.append("above")
    elif dy > threshold:
        out.append("below")
    return out


def centroid(objs: list[SceneObject]) -> tuple[float, float]:
    return (sum(o.cx for o in objs) / len(objs), sum(o.cy for o in objs) / len(objs))
