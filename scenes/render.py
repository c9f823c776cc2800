"""Draw a scene graph as an RGB image: flat colours, no anti-aliasing, so pixels are the truth."""

from __future__ import annotations

from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from .graph import Scene


@lru_cache(maxsize=16)
def _font(px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=px)  # Pillow's embedded font: the same on every machine


def render(scene: Scene) -> Image.Image:
    img = Image.new("RGB", (scene.width, scene.height), scene.background_rgb)
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        x, y, r = o.cx * scene.width, o.cy * scene.height, o.r
        if o.shape == "circle":
            draw.ellipse((x - r, y - r, x + r, y + r), fill=o.rgb)
        elif o.shape == "square":
            draw.rectangle((x - r, y - r, x + r, y + r), fill=o.rgb)
        elif o.shape == "triangle":
            draw.polygon([(x, y - r), (x - 0.866 * r, y + 0.5 * r), (x + 0.866 * r, y + 0.5 * r)], fill=o.rgb)
        else:
            raise ValueError(f"unknown shape {o.shape!r}")
    if scene.text is not None:
        t = scene.text
        draw.fontmode = "1"  # no anti-aliasing for text either
        draw.text((t.cx * scene.width, t.cy * scene.height), t.text, fill=t.rgb, font=_font(t.px), anchor="mm")
    return img
