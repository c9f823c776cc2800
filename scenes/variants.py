"""Encodings of a scene image that real web images come in, good and bad.

Each variant turns the base RGB render into bytes plus a content type. `EXPECT` says what a
curation pipeline must make of it: `sample` (it decodes, possibly after mode normalisation) or a
reject at a stage. The fault-injecting server serves these; datapipe tests check against EXPECT.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from functools import lru_cache

from PIL import Image

PNG, JPEG, GIF = "image/png", "image/jpeg", "image/gif"


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png(img: Image.Image) -> bytes:
    return _save(img, "PNG", optimize=False, compress_level=6)


def jpeg(img: Image.Image, quality: int = 95) -> bytes:
    return _save(img, "JPEG", quality=quality)


def cmyk_jpeg(img: Image.Image) -> bytes:
    return _save(img.convert("CMYK"), "JPEG", quality=95)


def gray16_png(img: Image.Image) -> bytes:
    gray = img.convert("L")
    return _save(gray.convert("I;16").point(lambda v: v * 257), "PNG")


def palette_png(img: Image.Image) -> bytes:
    return _save(img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64), "PNG")


def alpha_png(img: Image.Image) -> bytes:
    """RGBA with a fully transparent 4-pixel frame; the scene itself stays opaque."""
    rgba = img.convert("RGBA")
    alpha = Image.new("L", img.size, 0)
    alpha.paste(255, (4, 4, img.width - 4, img.height - 4))
    rgba.putalpha(alpha)
    return _save(rgba, "PNG")


def animated_gif(img: Image.Image) -> bytes:
    """Two frames; the first is the scene (what a decoder should keep)."""
    second = Image.new("RGB", img.size, (0, 0, 0))
    return _save(img, "GIF", save_all=True, append_images=[second], duration=200, loop=0)


def exif_rotated_jpeg(img: Image.Image) -> bytes:
    """Pixels stored rotated 90 degrees, with EXIF Orientation=6 saying how to turn them upright."""
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    return _save(img.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif)


def large_png(img: Image.Image, side: int = 2048) -> bytes:
    scale = side / max(img.size)
    return png(img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.NEAREST))


def tiny_png(img: Image.Image, side: int = 24) -> bytes:
    return png(img.resize((side, side), Image.Resampling.NEAREST))


def extreme_aspect_png(img: Image.Image) -> bytes:
    return png(img.resize((1024, 64), Image.Resampling.NEAREST))  # 16:1 whatever the scene's shape


def truncated(img: Image.Image) -> bytes:
    data = png(img)
    return data[: len(data) // 2]


def corrupt(img: Image.Image, seed: int = 0) -> bytes:
    """A PNG signature followed by noise: looks like an image until a decoder reads it."""
    rng = random.Random(seed)
    return b"\x89PNG\r\n\x1a\n" + bytes(rng.getrandbits(8) for _ in range(4096))


@lru_cache(maxsize=1)
def decompression_bomb(side: int = 40_000) -> bytes:
    """A valid 1-bit PNG of side x side pixels (1.6 G pixels) in ~200 KB.

    Decoding it would need gigabytes; PIL refuses it (DecompressionBombError) from the header
    alone. Any decoder that does not check declared dimensions first will try to allocate it.
    """
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    row = b"\x00" + b"\x00" * ((side + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


# name -> (encoder, content type). Encoders take the base RGB image.
ENCODINGS = {
    "png": (png, PNG),
    "jpeg": (jpeg, JPEG),
    "cmyk": (cmyk_jpeg, JPEG),
    "gray16": (gray16_png, PNG),
    "palette": (palette_png, PNG),
    "alpha": (alpha_png, PNG),
    "animated": (animated_gif, GIF),
    "exif_rotate": (exif_rotated_jpeg, JPEG),
    "large": (large_png, PNG),
    "tiny": (tiny_png, PNG),
    "extreme_aspect": (extreme_aspect_png, PNG),
    "truncated_image": (truncated, PNG),
    "corrupt": (corrupt, PNG),
    "bomb": (lambda img: decompression_bomb(), PNG),
    "near_duplicate": (lambda img: jpeg(img, quality=80), JPEG),
}
