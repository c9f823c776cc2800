"""Perceptual hashes for near-duplicate dedup: the DCT hash (pHash), two ways of getting there.

    phash_hex(img, size=16, method="box")   -> "9e31..." (size*size bits, row-major, as hex)

Both methods take the grey image down to a (4*size)^2 square, take its 2D DCT-II, keep the
size x size lowest frequencies and set a bit where a coefficient is above their median (the
hash of imagehash.phash, https://www.hackerfactor.com/blog/index.php?/archives/432-Looks-Like-It.html).
They differ in the downscale, and so in their bits:

    lanczos  imagehash.phash itself: a LANCZOS downscale (a 3-lobe window over the whole source),
             then scipy's DCT. What every dataset curated before `decode.phash_method` was
             hashed with.
    box      a box filter (each output pixel the area-weighted mean of the source pixels it
             covers: anti-aliased, no ringing) and the DCT as one small matrix product. 3x
             cheaper per image (benchmarks/phash_methods.py measures both, and how far each
             moves under JPEG re-encoding and resizing).

The two are not comparable with each other (the same image differs by a few bits on average and
by tens on some), so a dataset keeps the method it was started with (datapipe/curate.py checks).
"""

from __future__ import annotations

import functools
from typing import Literal

import numpy as np
from PIL import Image

PhashMethod = Literal["box", "lanczos"]
NEW_DATASET_METHOD: PhashMethod = "box"  # what decode.phash_method "auto" means for a dataset without shards
HIGHFREQ_FACTOR = 4  # the square the image is reduced to is HIGHFREQ_FACTOR x the hash side (imagehash's default)


@functools.lru_cache(maxsize=8)
def _dct_rows(size: int, n: int) -> np.ndarray:
    """The first `size` rows of the (unnormalised, scipy type-II) DCT matrix of length n."""
    k = np.arange(size)[:, None]
    i = np.arange(n)[None, :]
    return 2.0 * np.cos(np.pi * k * (2 * i + 1) / (2 * n))


def bits_to_hex(bits: np.ndarray) -> str:
    """A bool array -> hex, most significant bit first: imagehash's str of an ImageHash, through
    np.packbits when the bits fill whole bytes (30x faster than imagehash's bit string)."""
    bits = np.asarray(bits, bool)
    if bits.size % 8:
        import imagehash

        return str(imagehash.ImageHash(bits))
    return np.packbits(bits.ravel()).tobytes().hex()


def phash_bits(img: Image.Image, size: int = 16, method: PhashMethod = "box") -> np.ndarray:
    """The size x size bool hash of `img` (any mode)."""
    if size < 2:
        raise ValueError(f"phash size {size}: at least 2")
    if method == "lanczos":
        import imagehash

        return imagehash.phash(img, hash_size=size, highfreq_factor=HIGHFREQ_FACTOR).hash
    if method != "box":
        raise ValueError(f"phash method {method!r}: one of box, lanczos")
    n = size * HIGHFREQ_FACTOR
    grey = img.convert("L") if img.mode != "L" else img
    # one BOX pass, no reducing_gap: Pillow's integer pre-reduce would make the result depend on
    # how the source size divides (a half-size copy moved up to 56 bits on photo-like images)
    small = np.asarray(grey.resize((n, n), Image.BOX), np.float64)
    d = _dct_rows(size, n)
    low = (d @ small @ d.T).ravel()
    return (low > _median(low)).reshape(size, size)


def _median(values: np.ndarray) -> float:
    """np.median of a flat array (the same value), without its per-call overhead (10 us, as much as
    the DCT)."""
    k = values.size // 2
    if values.size % 2:
        return float(np.partition(values, k)[k])
    part = np.partition(values, (k - 1, k))
    return float((part[k - 1] + part[k]) / 2)


def phash_hex(img: Image.Image, size: int = 16, method: PhashMethod = "box") -> str:
    return bits_to_hex(phash_bits(img, size, method))
