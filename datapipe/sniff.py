"""Describing untrusted bytes without quoting them: format guesses from magic numbers.

A reject's detail says what arrived (its size, the declared content type, a guess from known
magic numbers) and why it failed (the exception class and a sanitised message, see
common/messages.py), so a user can tell an HTML login page from a truncated JPEG. It never
holds bytes from the response.
"""

from __future__ import annotations



# (prefix, name); checked in order
_MAGIC = [
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"BM", "BMP"), (b"\x00\x00\x01\x00", "ICO"),
    (b"%PDF", "PDF"), (b"PK\x03\x04", "ZIP"), (b"\x1f\x8b", "gzip"), (b"\x7fELF", "ELF executable"),
    (b"8BPS", "PSD"), (b"\xff\x0a", "JPEG XL"), (b"\x00\x00\x00\x0cJXL ", "JPEG XL"), (b"qoif", "QOI"),
    (b"OggS", "Ogg"), (b"ID3", "MP3"), (b"\x1a\x45\xdf\xa3", "Matroska/WebM video"),
]


def guess_format(data: bytes | None) -> str:
    """A short name for what the bytes look like, from magic numbers and a glance at text."""
    if not data:
        return "empty"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        return {b"avif": "AVIF", b"avis": "AVIF", b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF"}.get(brand, "MP4/ISO media")
    for prefix, name in _MAGIC:
        if data.startswith(prefix):
            return name
    head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in head[:200]:
        return "HTML"
    if head.startswith(b"<?xml") or head.startswith(b"<svg"):
        return "SVG" if b"<svg" in head else "XML"
    if head[:1] in (b"{", b"["):
        return "JSON-like text"
    sample = data[:512]
    printable = sum(32 <= c < 127 or c in (9, 10, 13) for c in sample)
    if printable >= 0.95 * len(sample):
        return "plain text"
    return "unknown binary"


def describe_payload(data: bytes | None, content_type: str | None = None) -> str:
    """`3412 bytes, content type text/html, looks like HTML`: what arrived, in our own words."""
    size = len(data) if data is not None else 0
    declared = f", content type {content_type}" if content_type else ", no content type"
    return f"{size} bytes{declared}, looks like {guess_format(data)}"
