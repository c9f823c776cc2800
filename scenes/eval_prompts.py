"""The benchmark's prompts: per category, a prompt and the scene that answers it exactly.

In-distribution categories (phrased as the corpus's reference captions are; their mean is the
benchmark's score):
  colour    "a red circle"                                 the dominant colour
  shape     "a red triangle"                               the main object's shape
  count     "three blue squares"                           how many objects of that colour
  position  "a red circle to the left of a green square"   the relation of two objects
  binding   "a red circle and a green square"              which attribute goes with which object;
            binding prompts come in attribute-swap pairs ("a green circle and a red square" is
            the next one) and are also scored as pairs: both images of a pair must be right
Long prompts (reported apart, never in the mean): the same targets described by the scene's own
level-5 reference caption (a paragraph of ~30-50 words: the colour once, mid-sentence; the second
object's attributes late), for long-prompt and positional-bias claims (LI-DiT):
  colour_long   "A minimal flat illustration of one shape on ... A large green square sits ..."
  binding_long  "... A small pink circle sits in the bottom center. A small yellow square ..."
Binding (short and long) is also scored per slot: the first-named object right (`|first`), the
second-named right (`|second`).
Outside the training distribution (reported apart, never in the mean):
  rgb               "a circle, RGB 201, 44, 61"   an exact colour beyond the corpus's jitter
  shape_colourless  "a triangle"                  a shape with no colour named (every corpus
                                                  caption names its objects' colours)

Prompts come from their own seed (`make_specs(seed=...)`), not from any training corpus: the
phrasing matches the reference captions' vocabulary (level 1-2 and level 6), the combinations
and exact values are drawn fresh. Backgrounds are neutral, objects chromatic, as in the corpus.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from scenes.graph import BACKGROUNDS, COLORS, SHAPES, SIZES, Scene, SceneObject

IN_DISTRIBUTION = ("colour", "shape", "count", "position", "binding")
OUT_OF_DISTRIBUTION = ("rgb", "shape_colourless")
LONG_PROMPTS = ("colour_long", "binding_long")  # judged as colour / binding
CATEGORIES = IN_DISTRIBUTION + OUT_OF_DISTRIBUTION + LONG_PROMPTS
RULE = {"colour_long": "colour", "binding_long": "binding"}  # the checker rule of a category, where not its own
SLOTTED = ("binding", "binding_long")  # also scored per named object (first, second)
TWO_OBJECTS = ("position", "binding")  # also scored conditional on both objects being found
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
    pair: int | None = None  # binding: specs with the same pair number are each other's attribute swap


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
    if category in LONG_PROMPTS:
        from scenes.describe import level_5

        short = _one(RULE[category], i, rng, size)
        return Spec(category, level_5(short.scene), short.scene, short.target)
    w, h = size
    scene = _scene(f"{category}-{i:04d}", rng, size)
    placed: list = []
    big = SIZES["large"] * min(w, h)
    if category in ("colour", "shape", "shape_colourless", "rgb"):
        color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
        rgb = COLORS[color]
        while category == "rgb":  # an exact colour near the named one, still clearly chromatic
            rgb = tuple(max(0, min(255, c + rng.randint(-RGB_SPREAD, RGB_SPREAD))) for c in COLORS[color])
            if max(rgb) - min(rgb) >= MIN_TARGET_CHROMA:
                break
        cx, cy = _place(rng, w, h, big, placed, (0.3, 0.7, 0.3, 0.7))
        scene.objects.append(_obj(shape, color, rgb, "large", cx, cy, big))
        prompt = {"colour": f"{_article(color)} {color} {shape}", "shape": f"{_article(color)} {color} {shape}",
                  "shape_colourless": f"{_article(shape)} {shape}",
                  "rgb": f"{_article(shape)} {shape}, RGB {rgb[0]}, {rgb[1]}, {rgb[2]}"}[category]
        target = {"colour": {"color": color}, "shape": {"shape": shape}, "shape_colourless": {"shape": shape},
                  "rgb": {"rgb": list(rgb)}}[category]
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
                    {"a": [ca, sa], "b": [cb, sb]}, pair=i)
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


def swapped(spec: Spec) -> Spec:
    """The attribute swap of a binding spec: the same shapes in the same places, colours exchanged
    ("a red circle and a green square" -> "a green circle and a red square")."""
    (ca, sa), (cb, sb) = spec.target["a"], spec.target["b"]
    scene = Scene(spec.scene.id + "-swap", spec.scene.seed, spec.scene.width, spec.scene.height,
                  spec.scene.background, spec.scene.background_rgb)
    first, second = spec.scene.objects
    scene.objects = [_obj(first.shape, cb, COLORS[cb], first.size, first.cx, first.cy, first.r),
                     _obj(second.shape, ca, COLORS[ca], second.size, second.cx, second.cy, second.r)]
    return Spec("binding", f"{_article(cb)} {cb} {sa} and {_article(ca)} {ca} {sb}", scene,
                {"a": [cb, sa], "b": [ca, sb]}, pair=spec.pair)


OPPOSITE = {"to the left of": "to the right of", "to the right of": "to the left of", "above": "below", "below": "above"}
CHANGEABLE = ("colour", "shape", "count", "position", "binding")  # categories `changed_prompt` knows


def changed_prompt(spec: Spec, rng: random.Random) -> str:
    """The spec's prompt with the one attribute its category tests changed, everything else kept:
    colour -> another colour, shape -> another shape, count -> another number, position -> the
    opposite relation, binding -> the attribute swap. Scored against the spec's own scene, it tells
    whether a model reads that attribute from the text at all (jobs/eval_scenes.py text_use)."""
    t, c = spec.target, spec.category
    if c == "colour":
        _, color, shape = spec.prompt.split()
        other = rng.choice([k for k in COLORS if k != color])
        return f"{_article(other)} {other} {shape}"
    if c == "shape":
        article, color, shape = spec.prompt.split()
        return f"{article} {color} {rng.choice([k for k in SHAPES if k != shape])}"
    if c == "count":
        n, shape = t["n"], spec.scene.objects[0].shape
        m = rng.choice([k for k in NUMBER_WORDS if k != n])
        return f"{NUMBER_WORDS[m]} {t['color']} {shape if m == 1 else shape + 's'}"
    if c == "position":
        return spec.prompt.replace(t["relation"], OPPOSITE[t["relation"]])
    if c == "binding":
        return swapped(spec).prompt
    raise ValueError(f"no attribute change for category {c!r}; known: {CHANGEABLE}")


def make_specs(per_category: int, size: tuple[int, int] = (64, 64), seed: int = 2026,
               categories: tuple[str, ...] = CATEGORIES) -> list[Spec]:
    """`per_category` prompts of each category, deterministic in `seed` and `size` (width, height).

    Binding prompts are drawn as per_category // 2 (rounded up) pairs, each followed by its swap."""
    unknown = set(categories) - set(CATEGORIES)
    if unknown:
        raise ValueError(f"unknown categories {sorted(unknown)}; known: {list(CATEGORIES)}")
    rng = random.Random(seed)
    out: list[Spec] = []
    for c in categories:
        if c == "binding":
            group: list[Spec] = []
            for i in range(-(-per_category // 2)):
                first = _one(c, i, rng, size)
                group += [first, swapped(first)]
            out += group[:per_category]
        else:
            out += [_one(c, i, rng, size) for i in range(per_category)]
    return out
