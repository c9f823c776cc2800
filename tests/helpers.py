"""Builders several test modules share (test modules never import each other)."""

from __future__ import annotations

import io
import json

from PIL import Image

from datapipe.contract import ShardWriter, Storage, commit_shards, shard_id


def png_bytes(color=(255, 0, 0), size=(8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def row(i: int, **extra) -> dict:
    return {
        "url": f"http://x/{i}.png", "caption": f"alt {i}", "width": 8, "height": 6,
        "original_width": 16, "original_height": 12, **extra,
    }


def write_shard(storage: Storage, number: int, n_samples: int, n_rejects: int = 0) -> None:
    """A committed shard of n_samples tiny PNGs and n_rejects download rejects."""
    sid = shard_id(number)
    with ShardWriter(storage, sid, inputs=n_samples + n_rejects) as w:
        for i in range(n_samples):
            w.add(f"{sid}{i:06d}", png_bytes((i * 10 % 255, 0, 0)), "png", row(i, clip_score=0.5, source="laion"))
        for j in range(n_samples, n_samples + n_rejects):
            w.reject(f"{sid}{j:06d}", f"http://x/{j}", "download", "http_404", "Not Found")
    commit_shards(storage, [w.entry], lineage={"job": "test"})


TINY_CLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 16},
             "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


def tiny_clip_files(folder):
    """A tiny open_clip architecture (random init) and three random score heads, as local files."""
    from datapipe.filters.heads import random_head, save_head

    (folder / "tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    for i, name in enumerate(("aesthetic", "nsfw", "watermark")):
        save_head(folder / f"{name}.safetensors", random_head(32, seed=i, output_activation="none" if i == 0 else "sigmoid"))
    return folder
