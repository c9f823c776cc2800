"""Decode stage: the one place an image is decoded. Validity, mode normalisation, size filters.

For each downloaded row: read the header (decompression-bomb guard before any pixel is decoded),
decode, apply EXIF orientation, normalise to 8-bit RGB (CMYK, 16-bit, palette, alpha over white,
first frame of an animation), reject too small / too elongated originals, downscale past
`max_side`, and keep the original bytes whenever none of that changed a pixel. While the pixels are
at hand it also computes the perceptual hash and the copies the CLIP and NSFW models read, so no
later stage decodes again.
"""

from __future__ import annotations

import io
import struct
import warnings
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image, ImageOps, UnidentifiedImageError

from ..config import DecodeConfig
from ..rows import live, reject, to_table
from common.messages import safe_message

from ..sniff import describe_payload
from .phash import NEW_DATASET_METHOD, phash_hex

STORED_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB with a clean `info` (no transparency, ICC or EXIF carried along);
    transparency (alpha, tRNS on RGB/L/P, palette transparency) is composited over white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        finite = arr[np.isfinite(arr)]
        top = 65535.0 if finite.size and finite.max() > 255 else 255.0
        arr = np.nan_to_num(arr, nan=0.0, posinf=top, neginf=0.0)
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    transparent = "transparency" in img.info
    if img.mode == "RGB" and not transparent:
        out = img.copy() if img.info else img
    elif img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or transparent:
        try:
            rgba = img.convert("RGBA")
        except (ValueError, TypeError, OSError):  # a tRNS chunk that does not fit the mode: ignore it
            img.info.pop("transparency", None)
            rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        out = Image.alpha_composite(white, rgba).convert("RGB")
    else:
        out = img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV
    out.info = {}
    return out


def clip_view(img: Image.Image, size: int) -> bytes:
    """CLIP's own preprocessing geometry: shortest side to `size` (bicubic), centre crop."""
    w, h = img.size
    scale = size / min(w, h)
    resized = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    return resized.crop((left, top, left + size, top + size)).tobytes()


_LOADED: set[str] = set()


def load_plugins(specs: list[str]) -> None:
    """Import (and call) extra decoder plugins once per process: "module" or "module:function"."""
    import importlib

    for spec in specs:
        if spec in _LOADED:
            continue
        module, _, function = spec.partition(":")
        loaded = importlib.import_module(module)
        if function:
            getattr(loaded, function)()
        _LOADED.add(spec)


class DecodeStage:
    """Decodes blocks of ROW_SCHEMA rows (a shard task calls it on each block it downloaded)."""

    def __init__(self, cfg: DecodeConfig, clip_size: int | None = None, resize: bool = True, nsfw: bool = False):
        load_plugins(cfg.plugins)
        self.cfg = cfg
        self.clip_size = clip_size
        self.nsfw = nsfw  # cut open_nsfw's view too (datapipe/filters/nsfw.py)
        self.resize = resize  # resize_mode keep: our stage enforces max_side
        # the curate job resolves "auto" per dataset before any task runs; on its own, auto is box
        self.phash_method = NEW_DATASET_METHOD if cfg.phash_method == "auto" else cfg.phash_method

    def __call__(self, batch: pa.Table) -> pa.Table:
        Image.MAX_IMAGE_PIXELS = self.cfg.max_pixels  # PIL's own guard at the same limit
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return to_table([self.decode(r) if live(r) else r for r in batch.to_pylist()])

    def decode(self, row: dict[str, Any]) -> dict[str, Any]:
        """One row; whatever goes wrong, the row comes back (as a sample or a reject), never an exception."""
        try:
            return self._decode(row)
        except Exception as e:  # noqa: BLE001 - fault isolation: one row's failure is that row's reject
            return reject(row, "decode", "internal_error", safe_message(e))

    def _decode(self, row: dict[str, Any]) -> dict[str, Any]:
        cfg = self.cfg
        data = row["image"]
        try:
            img = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            return reject(row, "decode", "decompression_bomb", safe_message(e))
        except UnidentifiedImageError:
            return reject(row, "decode", "not_an_image", "no image decoder recognises it: "
                          + describe_payload(data, row.get("content_type")))
        except (OSError, SyntaxError, ValueError, TypeError, struct.error, EOFError) as e:
            return reject(row, "decode", "corrupt", f"{safe_message(e)} ({describe_payload(data, row.get('content_type'))})")
        w, h = img.size
        if w * h > cfg.max_pixels:
            return reject(row, "decode", "decompression_bomb", f"{w}x{h} = {w * h} pixels > max_pixels {cfg.max_pixels}")
        if w < 1 or h < 1:
            return reject(row, "decode", "corrupt", f"declared size {w}x{h}")
        fmt = img.format
        if not cfg.enabled:  # filters off: header only
            if fmt not in STORED_FORMATS:
                return reject(row, "decode", "unsupported_format", f"{fmt} is not one of {sorted(STORED_FORMATS)}")
            ow, oh = row["original_width"] or w, row["original_height"] or h
            row.update(ext=STORED_FORMATS[fmt], width=w, height=h, original_width=ow, original_height=oh)
            return row
        try:
            img.load()  # the first frame of an animation
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            return reject(row, "decode", "decompression_bomb", safe_message(e))
        except (OSError, SyntaxError, ValueError, TypeError, struct.error, EOFError, IndexError, KeyError) as e:
            reason = "truncated" if "truncat" in str(e).lower() else "corrupt"
            return reject(row, "decode", reason, safe_message(e))
        rotated = _has_rotation(img)
        oriented = img
        if rotated:
            try:
                oriented = ImageOps.exif_transpose(img)
            except Exception:  # noqa: BLE001 - a broken EXIF block is not a broken image: keep it unrotated
                rotated = False
        rgb = to_rgb(oriented)
        changed = (rotated or oriented.mode != "RGB" or "transparency" in oriented.info or fmt not in STORED_FORMATS
                   or getattr(img, "is_animated", False))

        ow = row["original_width"] or rgb.width  # img2dataset resize modes report the original size
        oh = row["original_height"] or rgb.height
        if min(ow, oh) < cfg.min_side:
            return reject(row, "filter", "too_small", f"{ow}x{oh}: shortest side < min_side {cfg.min_side}")
        if max(ow, oh) / min(ow, oh) > cfg.max_aspect:
            return reject(row, "filter", "bad_aspect", f"{ow}x{oh}: aspect {max(ow, oh) / min(ow, oh):.2f} > {cfg.max_aspect}")
        if self.resize and max(rgb.size) > cfg.max_side:
            scale = cfg.max_side / max(rgb.size)
            rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), Image.LANCZOS)
            changed = True

        if changed:
            ext = "jpg" if fmt == "JPEG" else "png"  # lossy stays lossy; everything else lossless
            buf = io.BytesIO()
            rgb.save(buf, "JPEG", quality=cfg.jpeg_quality) if ext == "jpg" else rgb.save(buf, "PNG")
            row["image"] = buf.getvalue()
        else:
            ext = STORED_FORMATS[fmt]
        row.update(ext=ext, width=rgb.width, height=rgb.height, original_width=ow, original_height=oh)
        if cfg.phash:
            row["phash"] = phash_hex(rgb, cfg.phash_size, self.phash_method)
        if self.clip_size:
            row["clip_pixels"] = clip_view(rgb, self.clip_size)
        if self.nsfw:
            from .nsfw import nsfw_view

            row["nsfw_pixels"] = nsfw_view(rgb)
        return row


def _has_rotation(img: Image.Image) -> bool:
    try:
        return img.getexif().get(0x0112, 1) not in (1, None)
    except Exception:  # noqa: BLE001 - a broken EXIF block is not a broken image
        return False
