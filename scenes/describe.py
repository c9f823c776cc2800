"""Words from a scene graph: six reference captions (level 1 shortest ... 6 densest) and an alt text.

The reference captions are the ground truth the trainer can learn from and caption QA can be
checked against. Each level adds a kind of fact to the one before (subject -> all groups and
counts -> sizes, background, text -> positions -> relations and style -> every object with its
exact RGB, lighting), and each stays inside LEVEL_WORD_BUDGETS.
"""

from __future__ import annotations

import random

from datapipe.contract.schema import LEVEL_WORD_BUDGETS

from .graph import Scene, SceneObject, centroid, position_phrase, relation

NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
ORDINALS = {1: "first", 2: "second", 3: "third", 4: "fourth", 5: "fifth", 6: "sixth"}


def _plural(shape: str, n: int) -> str:
    return shape if n == 1 else shape + "s"


def _counted(group: list[SceneObject], article: bool = True, size: bool = False) -> str:
    o, n = group[0], len(group)
    adj = f"{o.size} {o.color}" if size else o.color
    count = (("an" if adj[0] in "aeiou" else "a") if article else "one") if n == 1 else NUMBER_WORDS[n]
    return f"{count} {adj} {_plural(o.shape, n)}"


def _join(parts: list[str]) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _where(phrase: str) -> str:
    return "in the center" if phrase == "center" else f"on the {phrase}" if phrase in ("left", "right") else f"in the {phrase}"


def _group_places(group: list[SceneObject]) -> str:
    places: list[str] = []
    for o in group:
        p = position_phrase(o.cx, o.cy)
        if p not in places:
            places.append(p)
    if len(places) == 1:
        return _where(places[0])
    return "at " + _join([f"the {p}" for p in places])


def _text_clause(scene: Scene) -> str:
    t = scene.text
    return f'the word "{t.text}" in {t.color}' if t else ""


def level_1(scene: Scene) -> str:
    if not scene.groups():
        return f"a plain {scene.background} image"
    return _counted(scene.groups()[0])


def level_2(scene: Scene) -> str:
    groups = scene.groups()
    if not groups:
        return f"a plain {scene.background} background with nothing on it"
    s = _join([_counted(g) for g in groups])
    return _cap(s) + f" on a {scene.background} background"


def level_3(scene: Scene) -> str:
    groups = scene.groups()
    s = _cap(_join([_counted(g, size=True) for g in groups]) or "nothing") + f" on a plain {scene.background} background"
    if scene.text:
        s += f", with {_text_clause(scene)}"
    return s + ", drawn as simple flat shapes."


def level_4(scene: Scene) -> str:
    sentences = [f"A simple flat picture on a plain {scene.background} background."]
    for g in scene.groups():
        verb = "is" if len(g) == 1 else "are"
        sentences.append(f"{_cap(_counted(g, size=True))} {verb} {_group_places(g)}.")
    if scene.text:
        t = scene.text
        sentences.append(f'The word "{t.text}" is written in {t.color} letters {_where(position_phrase(t.cx, t.cy))}.')
    return " ".join(sentences)


def _relations(scene: Scene, first_only: bool = False) -> list[str]:
    groups = scene.groups()
    out = []
    for i in range(1 if first_only else len(groups)):
        for j in range(i + 1, len(groups)):
            a, b = groups[i], groups[j]
            rel = relation(centroid(a), centroid(b))
            if rel:
                na = f"the {a[0].color} {_plural(a[0].shape, len(a))}"
                nb = f"the {b[0].color} {_plural(b[0].shape, len(b))}"
                verb = "is" if len(a) == 1 else "are"
                out.append(f"{_cap(na)} {verb} {' and '.join(rel)} {nb}.")
    return out


def level_5(scene: Scene) -> str:
    n = len(scene.objects)
    total = f"{NUMBER_WORDS.get(n, str(n))} {'shape' if n == 1 else 'shapes'}"
    sentences = [f"A minimal flat illustration of {total} on a plain {scene.background} background."]
    for g in scene.groups():
        verb = "sits" if len(g) == 1 else "sit"
        sentences.append(f"{_cap(_counted(g, size=True))} {verb} {_group_places(g)}.")
    sentences += _relations(scene, first_only=True)
    if scene.text:
        t = scene.text
        sentences.append(f'The word "{t.text}" appears in bold {t.color} capitals {_where(position_phrase(t.cx, t.cy))}.')
    sentences.append("Clean graphic style with solid colors.")
    return " ".join(sentences)


def level_6(scene: Scene) -> str:
    r, g, b = scene.background_rgb
    n = len(scene.objects)
    sentences = [
        f"A flat vector-style image, {scene.width} by {scene.height} pixels, with a uniform "
        f"{scene.background} background (RGB {r}, {g}, {b}) and {NUMBER_WORDS.get(n, str(n))} "
        f"solid {'shape' if n == 1 else 'shapes'}."
    ]
    for group in scene.groups():
        for k, o in enumerate(group, start=1):
            which = f"The {ORDINALS[k]} {o.color} {o.shape}" if len(group) > 1 else f"A {o.color} {o.shape}"
            sentences.append(
                f"{which}, {o.size}, RGB {o.rgb[0]}, {o.rgb[1]}, {o.rgb[2]}, is {_where(position_phrase(o.cx, o.cy))}."
            )
    sentences += _relations(scene)
    if scene.text:
        t = scene.text
        sentences.append(
            f'The word "{t.text}" is printed in {t.color} (RGB {t.rgb[0]}, {t.rgb[1]}, {t.rgb[2]}) '
            f"sans-serif capitals {_where(position_phrase(t.cx, t.cy))}."
        )
    else:
        sentences.append("There is no text in the image.")
    sentences.append(
        "Lighting is perfectly even with no shadows, gradients, textures or reflections; every "
        "edge is crisp and the composition is sparse and geometric."
    )
    return " ".join(sentences)


LEVELS = (level_1, level_2, level_3, level_4, level_5, level_6)


def reference_captions(scene: Scene) -> list[str]:
    """The six reference captions, shortest first; each within its word budget."""
    captions = [f(scene) for f in LEVELS]
    for level, text in enumerate(captions, start=1):
        words = len(text.split())
        if words > LEVEL_WORD_BUDGETS[level]:
            raise AssertionError(f"scene {scene.id}: level {level} has {words} words > budget {LEVEL_WORD_BUDGETS[level]}")
    return captions


_ALT_TEMPLATES = (
    "{color} {shape} clipart",
    "{Color} {shape}s on {background} background",
    "abstract geometric shapes",
    "IMG_{num}.png",
    "free vector {shape} icon set",
    "stock illustration {num}",
    "{shape}",
    "minimal poster design",
    "",
    "{color} and {color2} pattern, flat design",
)


def alt_text(scene: Scene) -> str:
    """A web-like alt text: short, often vague, sometimes empty or unrelated (as on the web)."""
    rng = random.Random(scene.seed ^ 0xA17)
    groups = scene.groups()
    first = groups[0][0] if groups else None
    second = groups[1][0] if len(groups) > 1 else first
    return rng.choice(_ALT_TEMPLATES).format(
        color=first.color if first else "blank",
        Color=(first.color if first else "blank").capitalize(),
        color2=second.color if second else "white",
        shape=first.shape if first else "background",
        background=scene.background,
        num=rng.randint(1000, 9999),
    )
