"""A synthetic dataset for the statistics job: many rows fast, and the text a web crawl brings.

Used by the statistics benchmark (100k sidecar rows) and the dashboard tests. Alt texts, URLs,
reject details and captions include markup payloads (`<script>`, `<img onerror>`), because every
text in a real dataset comes from the web and the dashboard must show it as inert text.
"""

from __future__ import annotations

import io
import random

from PIL import Image

from datapipe.contract import (
    LEVEL_COLUMNS,
    CaptionVersion,
    CaptionWriter,
    ShardWriter,
    Storage,
    caption_table,
    commit_shards,
    shard_id,
)

PAYLOADS = (
    "<script>window.__pwned = 'script'</script>",
    '<img src=x onerror="window.__pwned = \'img\'">',
    "</script><script>window.__pwned = 'close'</script>",
    "a \"quoted\" & 'ampersand' alt text \u2028 with a line separator",
)
REJECTS = (("download", "http_404", "Not Found"), ("download", "timeout", "read timed out after 10s"),
           ("decode", "truncated", "image file is truncated"), ("filter", "too_small", "31x20: shortest side < 32"),
           ("filter", "clip_score_low", "0.11 < 0.2"), ("dedup", "exact_duplicate", "same sha256 as 000000000001"),
           ("dedup", "near_duplicate", "phash distance 2"))


def _png(rng: random.Random, side: int) -> tuple[bytes, int, int]:
    w, h = side, max(4, int(side * rng.choice([0.5, 0.75, 1.0, 1.25])))
    im = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
    out = io.BytesIO()
    im.save(out, "PNG", compress_level=1)
    return out.getvalue(), w, h


def write_shard(storage: Storage, number: int, rows: int, reject_every: int = 7, image_side: int = 24,
                seed: int = 0) -> list[str]:
    """Write and commit one shard of `rows` input rows (every reject_every-th a reject); its sample keys."""
    rng = random.Random(seed * 1_000_003 + number)
    sid = shard_id(number)
    keys = []
    with ShardWriter(storage, sid, inputs=rows) as w:
        for i in range(rows):
            key = f"{sid}{i:06d}"
            url = f"https://img.example.com/{sid}/{i}.png"
            if reject_every and i % reject_every == reject_every - 1:
                stage, reason, detail = REJECTS[rng.randrange(len(REJECTS))]
                if i % (5 * reject_every) == reject_every - 1:
                    detail, url = PAYLOADS[i % len(PAYLOADS)], f"javascript:alert({i})"
                w.reject(key, url, stage, reason, detail)
                continue
            image, width, height = _png(rng, image_side)
            scale = rng.choice([1, 2, 4, 8])
            w.add(key, image, "png", {
                "url": url, "caption": PAYLOADS[(i // 3 + number) % len(PAYLOADS)] if i % 3 == 0 else f"a photo number {i}",
                "width": width, "height": height, "original_width": width * scale, "original_height": height * scale,
                "clip_score": rng.uniform(0.15, 0.4), "aesthetic": rng.uniform(3, 7), "nsfw": rng.random() ** 4,
                "watermark": rng.random() ** 3,
            })
            keys.append(key)
    commit_shards(storage, [w.entry])
    return keys


def caption_rows(keys: list[str], rng: random.Random, failed_every: int = 0, payload: bool = True) -> list[dict]:
    rows = []
    for n, key in enumerate(keys):
        if failed_every and n % failed_every == failed_every - 1:
            rows.append({"key": key, "status": "failed", "error": "invalid: level_3 is empty", "attempts": 3,
                         "raw": "<script>window.__pwned = 'raw'</script>", "finish_reason": "stop"})
            continue
        levels = {}
        for i, col in enumerate(LEVEL_COLUMNS, start=1):
            words = " ".join(rng.choice(["red", "blue", "circle", "square", "left", "above", "two"]) for _ in range(2 * i * i))
            payload_text = PAYLOADS[(int(key[:6]) + i) % len(PAYLOADS)]
            levels[col] = f"{payload_text} {words}" if payload and n % 4 == 0 else words
        rows.append({"key": key, **levels, "status": "ok", "model": "synthetic", "prompt_id": "six-levels-v1@synthetic",
                     "finish_reason": "length" if n % 10 == 9 else "stop", "prompt_tokens": 100,
                     "completion_tokens": 300, "attempts": 1})
    return rows


def write_captions(storage: Storage, version: str, shards: dict[str, list[str]], parent: str | None = None,
                   failed_every: int = 0, seed: int = 0) -> None:
    """A caption version over {shard id: keys}; with `parent`, an overlay of only those keys."""
    meta = CaptionVersion(version=version, backend="synthetic", model="synthetic",
                          prompt_set={"id": "six-levels-v1", "hash": "synthetic"}, parent=parent)
    writer = CaptionWriter(storage, meta)
    rng = random.Random(seed)
    for sid, keys in sorted(shards.items()):
        writer.commit_shard(sid, caption_table(caption_rows(keys, rng, failed_every)))


def make_dataset(root: str, shards: int, rows_per_shard: int, image_side: int = 24, seed: int = 0,
                 captions: bool = True) -> dict[str, list[str]]:
    """Shards of synthetic rows, with caption versions v1 (some failed rows) and v1-fix (overlay)."""
    storage = Storage(root)
    keys = {shard_id(n): write_shard(storage, n, rows_per_shard, image_side=image_side, seed=seed) for n in range(shards)}
    if captions:
        write_captions(storage, "v1", keys, failed_every=5, seed=seed)
        write_captions(storage, "v1-fix", {s: k[::2] for s, k in keys.items()}, parent="v1", seed=seed + 1)
    return keys
