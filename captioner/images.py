"""Images as the VLM sees them: decoded once from the shard bytes, RGB, inside a size range."""

from __future__ import annotations

import base64
import io

from PIL import Image

from .config import ImageConfig


def prepare(data: bytes, cfg: ImageConfig) -> Image.Image:
    """Shard image bytes -> RGB PIL image with long side <= max_side and short side >= min_side."""
    img = Image.open(io.BytesIO(data))
    img.load()
    if img.mode != "RGB":
        img = img.convert("RGB")
    w, h = img.size
    scale = min(1.0, cfg.max_side / max(w, h))
    scale = max(scale, cfg.min_side / min(w, h))
    if scale != 1.0:
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
    return img


def data_url(img: Image.Image, fmt: str = "jpeg") -> str:
    """An image as a data URL, for OpenAI-style chat messages."""
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.save(buf, format="JPEG", quality=92)
    elif fmt == "png":
        img.save(buf, format="PNG")
    else:
        raise ValueError(f"server.image_format must be jpeg or png, got {fmt!r}")
    return f"data:image/{fmt};base64,{base64.b64encode(buf.getvalue()).decode()}"
