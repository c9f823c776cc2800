"""The catalogue of faults the scenes server can inject, and what a pipeline must make of each.

`expect` is `sample` (the row must end as a sample, after mode normalisation where needed) or the
reject stage it must end in. Filter expectations assume datapipe's default thresholds (minimum
side 64 px, maximum aspect ratio 3).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Fault:
    name: str
    expect: str  # sample | download | decode | filter
    what: str
    encoding: str | None = None  # a variants.ENCODINGS entry served with status 200
    content_type: str | None = None  # overrides the encoding's content type

    @property
    def ext(self) -> str:
        return {"jpeg": "jpg", "cmyk": "jpg", "exif_rotate": "jpg", "animated": "gif", "near_duplicate": "jpg"}.get(
            self.encoding or "", "png"
        )


FAULTS: dict[str, Fault] = {
    f.name: f
    for f in [
        Fault("http_404", "download", "404 Not Found"),
        Fault("http_500", "download", "500 Internal Server Error on every try"),
        Fault("timeout", "download", "accepts the connection, then sends nothing for a long time"),
        Fault("slow_body", "download", "sends headers, then the body a few bytes at a time"),
        Fault("truncated", "download", "declares the full Content-Length, sends half, closes the connection"),
        Fault("redirect_loop", "download", "302 to itself, forever"),
        Fault("noai", "download", "a good image with `X-Robots-Tag: noai, noimageai` (opt-out)", "png"),
        Fault("html", "decode", "200 with an HTML page (text/html) instead of an image"),
        Fault("truncated_image", "decode", "200 with the first half of a PNG, consistent Content-Length", "truncated_image"),
        Fault("corrupt", "decode", "200 with a PNG signature followed by noise", "corrupt"),
        Fault("bomb", "decode", "a valid 40000x40000 PNG of ~200 KB (decompression bomb)", "bomb"),
        Fault("mislabeled", "sample", "a good PNG served as text/plain", "png", "text/plain"),
        Fault("redirect", "sample", "302 to the real image"),
        Fault("cmyk", "sample", "CMYK JPEG", "cmyk"),
        Fault("gray16", "sample", "16-bit grayscale PNG", "gray16"),
        Fault("palette", "sample", "palette (P mode) PNG", "palette"),
        Fault("alpha", "sample", "RGBA PNG with a transparent frame", "alpha"),
        Fault("animated", "sample", "animated GIF; the first frame is the scene", "animated"),
        Fault("exif_rotate", "sample", "JPEG stored rotated with EXIF Orientation=6", "exif_rotate"),
        Fault("large", "sample", "the scene upscaled to 2048 px on its long side", "large"),
        Fault("tiny", "filter", "the scene shrunk to 24x24", "tiny"),
        Fault("extreme_aspect", "filter", "the scene squashed to a 16:1 strip", "extreme_aspect"),
    ]
}
