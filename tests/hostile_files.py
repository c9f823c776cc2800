"""Malformed and unusual image files, made by the tests (no downloads): seeded mutations of valid
PNG, JPEG, WebP, GIF and TIFF files, and hand-made odd files of the kinds image libraries keep in
their own test suites. Every file carries MARKER somewhere in its bytes, so a test can check that
no reject detail or log ever quotes a file's contents.
"""

from __future__ import annotations

import io
import random
import struct
import zlib

from PIL import Image, PngImagePlugin

MARKER = b"ZQXSECRETZQX"


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos + 8 <= len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        out.append((kind, data[pos + 8 : pos + 8 + n]))
        pos += 12 + n
    return out


def png_from_chunks(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"".join(png_chunk(k, b) for k, b in chunks)


def raw_png(width: int, height: int, color_type: int, depth: int, pixel: bytes, extra: list | None = None) -> bytes:
    """A PNG written by hand (modes PIL cannot write: 16-bit RGBA/LA), with extra chunks before IDAT."""
    rows = b"".join(b"\x00" + pixel * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    chunks = [(b"IHDR", ihdr), *(extra or []), (b"tEXt", b"Comment\x00" + MARKER), (b"IDAT", zlib.compress(rows)),
              (b"IEND", b"")]
    return png_from_chunks(chunks)


def _scene(seed: int, size=(80, 72)) -> Image.Image:
    rng = random.Random(seed)
    img = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    for _ in range(4):
        x, y = rng.randrange(size[0] - 20), rng.randrange(size[1] - 20)
        img.paste(tuple(rng.randrange(256) for _ in range(3)), (x, y, x + 20, y + 20))
    return img


def valid_files(seed: int = 0) -> dict[str, bytes]:
    """Valid files of every container the fuzzer mutates, in several modes; each carries MARKER."""
    base = _scene(seed)
    out = {}
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", MARKER.decode())
    for mode in ("RGB", "RGBA", "L", "P", "LA", "I;16", "1"):
        buf = io.BytesIO()
        base.convert(mode if mode != "I;16" else "I").convert(mode).save(buf, "PNG", pnginfo=info)
        out[f"png-{mode}"] = buf.getvalue()
    for mode, kw in (("RGB", {}), ("L", {}), ("CMYK", {}), ("RGB", {"progressive": True})):
        buf = io.BytesIO()
        exif = Image.Exif()
        exif[0x010E] = MARKER.decode()  # ImageDescription
        exif[0x0112] = 6
        base.convert(mode).save(buf, "JPEG", quality=85, exif=exif.tobytes(), **kw)
        out[f"jpeg-{mode}{'-prog' if kw else ''}"] = buf.getvalue()
    for lossless in (False, True):
        buf = io.BytesIO()
        base.convert("RGBA").save(buf, "WEBP", lossless=lossless, exif=MARKER)
        out[f"webp-{'lossless' if lossless else 'lossy'}"] = buf.getvalue()
    buf = io.BytesIO()
    base.convert("P").save(buf, "GIF", save_all=True, append_images=[_scene(seed + 1).convert("P")], comment=MARKER)
    out["gif-animated"] = buf.getvalue()
    buf = io.BytesIO()
    base.convert("P").save(buf, "GIF", transparency=3, comment=MARKER)
    out["gif-transparent"] = buf.getvalue()
    for mode, compression in (("RGB", None), ("RGBA", "tiff_deflate"), ("CMYK", "tiff_lzw"), ("L", "packbits")):
        buf = io.BytesIO()
        base.convert(mode).save(buf, "TIFF", compression=compression, description=MARKER.decode())
        out[f"tiff-{mode}"] = buf.getvalue()
    return out


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One seeded mutation: byte flips, truncation, a duplicated or dropped range, or (PNG) a
    duplicated, dropped or swapped chunk."""
    kind = rng.randrange(7)
    b = bytearray(data)
    if kind == 0:  # flip a few bytes anywhere
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif kind == 1:  # flip bytes in the header, where the structure is
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(min(len(b), 64))] = rng.randrange(256)
    elif kind == 2:  # truncate at a random offset
        b = b[: rng.randrange(len(b))]
    elif kind == 3:  # duplicate a range
        i = rng.randrange(len(b))
        j = min(len(b), i + rng.randint(1, 400))
        b = b[:j] + b[i:j] + b[j:]
    elif kind == 4:  # drop a range
        i = rng.randrange(len(b))
        b = b[:i] + b[i + rng.randint(1, 400) :]
    elif kind == 5 and data.startswith(b"\x89PNG"):  # duplicate or drop a whole chunk
        chunks = png_chunks(data)
        i = rng.randrange(len(chunks))
        if rng.random() < 0.5:
            chunks.insert(i, chunks[i])
        else:
            del chunks[i]
        return png_from_chunks(chunks)
    else:  # overwrite a 4-byte word with an extreme value (sizes, offsets, counts)
        i = rng.randrange(max(1, len(b) - 4))
        b[i : i + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff", b"\x00\x01\x00\x00"])
    return bytes(b)


def odd_files() -> dict[str, bytes]:
    """Hand-made unusual files; most are valid images that decoders get wrong."""
    out: dict[str, bytes] = {"zero-bytes": b""}
    rgb = raw_png(16, 16, 2, 8, b"\x10\x20\x30")
    chunks = png_chunks(rgb)
    out["png-rgb-trns"] = png_from_chunks(chunks[:1] + [(b"tRNS", b"\x00\x10\x00\x20\x00\x30")] + chunks[1:])
    out["png-rgb-trns-short"] = png_from_chunks(chunks[:1] + [(b"tRNS", b"\x00\x10")] + chunks[1:])
    out["png-rgb-trns-long"] = png_from_chunks(chunks[:1] + [(b"tRNS", b"\x01" * 40)] + chunks[1:])
    gray = png_chunks(raw_png(16, 16, 0, 8, b"\x80"))
    out["png-l-trns"] = png_from_chunks(gray[:1] + [(b"tRNS", b"\x00\x80")] + gray[1:])
    out["png-l-trns-odd"] = png_from_chunks(gray[:1] + [(b"tRNS", b"\x80\x80\x80\x80\x80")] + gray[1:])
    palette = png_chunks(raw_png(16, 16, 3, 8, b"\x05"))  # index 5 of a 2-entry palette
    out["png-palette-index-out-of-range"] = png_from_chunks(
        palette[:1] + [(b"PLTE", b"\xff\x00\x00\x00\xff\x00"), (b"tRNS", b"\x00" * 200)] + palette[1:])
    out["png-palette-trns-longer-than-palette"] = png_from_chunks(
        palette[:1] + [(b"PLTE", b"\xff\x00\x00" * 6), (b"tRNS", b"\x00" * 256)] + palette[1:])
    out["png-rgba16"] = raw_png(12, 10, 6, 16, b"\x12\x34\x56\x78\x9a\xbc\x80\x00")
    out["png-la16"] = raw_png(12, 10, 4, 16, b"\xaa\xaa\x40\x00")
    out["png-rgb16"] = raw_png(12, 10, 2, 16, b"\x12\x34\x56\x78\x9a\xbc")
    out["png-depth-1-rgb-invalid"] = raw_png(12, 10, 2, 1, b"\x01")
    # a huge ICC profile: 16 MB of zeros, compressed to ~16 KB
    out["png-huge-icc"] = png_from_chunks(
        chunks[:1] + [(b"iCCP", b"icc\x00\x00" + zlib.compress(b"\x00" * (16 << 20), 9))] + chunks[1:])
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 10, 10)).save(buf, "JPEG", icc_profile=b"\x00" * (2 << 20) + MARKER)
    out["jpeg-huge-icc"] = buf.getvalue()
    # broken EXIF: an APP1 Exif segment whose IFD offsets point nowhere, with Orientation set
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 10)).save(jpeg, "JPEG")
    data = jpeg.getvalue()
    bad_ifd = b"Exif\x00\x00MM\x00*\xff\xff\xff\x00" + MARKER
    out["jpeg-broken-exif"] = data[:2] + b"\xff\xe1" + struct.pack(">H", len(bad_ifd) + 2) + bad_ifd + data[2:]
    orientation = (b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01\x00\x09\x00\x00"
                   b"\xff\xff\xff\xf0")
    out["jpeg-exif-orientation-9"] = data[:2] + b"\xff\xe1" + struct.pack(">H", len(orientation) + 2) + orientation + data[2:]
    # CMYK with an alpha channel: an RGBA TIFF relabelled as separated (CMYK) with an extra sample
    tiff = io.BytesIO()
    Image.new("RGBA", (32, 24), (10, 20, 30, 128)).save(tiff, "TIFF")
    t = bytearray(tiff.getvalue())
    i = t.find(b"\x06\x01\x03\x00\x01\x00\x00\x00\x02\x00")  # PhotometricInterpretation = 2 (RGB), little-endian
    if i >= 0:
        t[i + 8] = 5  # -> separated (CMYK)
    out["tiff-cmyk-alpha"] = bytes(t)
    out["tiff-rgba-16bit-claimed"] = bytes(t).replace(b"\x02\x01\x03\x00\x04\x00", b"\x02\x01\x03\x00\x04\x00", 1)
    out["gif-no-frames"] = b"GIF89a\x10\x00\x10\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00;" + MARKER
    out["gif-transparency-out-of-range"] = (b"GIF89a\x02\x00\x02\x00\x80\x00\x00\xff\x00\x00\x00\xff\x00"
                                            b"!\xf9\x04\x01\x00\x00\xf0\x00,\x00\x00\x00\x00\x02\x00\x02\x00"
                                            b"\x00\x02\x02\x44\x01\x00;")
    out["webp-riff-size-lies"] = b"RIFF\xff\xff\xff\x7fWEBPVP8 " + MARKER * 4
    out["html-page"] = b"<!doctype html><html><body>" + MARKER + b"</body></html>"
    out["text-passwd-like"] = b"root:x:0:0:" + MARKER + b":/root:/bin/bash\n"
    out["bmp-huge-claimed"] = (b"BM" + struct.pack("<IHHI", 0, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, 30000,
                                30000, 1, 24, 0, 0, 0, 0, 0, 0) + MARKER)
    return out
