"""Caption a batch of shard samples: decode each image once, ask the backend, one row per key.

Shared by every VLM path (the Ray Data actor around the vLLM engine and the OpenAI client), so
both treat an unreadable image the same way: a failed row with the reason, never a crash of the
batch and never a missing key.
"""

from __future__ import annotations

from .answers import Generate, caption_images
from .backends.source import failed_row
from .config import CaptionConfig
from .images import prepare
from .prompts import PromptSet


def caption_samples(generate: Generate, keys: list[str], images: list[bytes], cfg: CaptionConfig,
                    prompts: PromptSet, model: str) -> list[dict]:
    decoded, good, rows = [], [], {}
    for i, (key, data) in enumerate(zip(keys, images)):
        try:
            decoded.append(prepare(data, cfg.image))
            good.append(i)
        except Exception as e:  # noqa: BLE001 - any decoder failure is this image's failure reason
            rows[i] = {**failed_row(key, model, f"image_unreadable: {type(e).__name__}: {e}"[:300]),
                       "prompt_id": prompts.ref, "attempts": 0}
    if good:
        captioned = caption_images(generate, decoded, [keys[i] for i in good], prompts, cfg.strategy,
                                   cfg.max_attempts, cfg.sampling.seed, model)
        for i, row in zip(good, captioned):
            rows[i] = row
    return [rows[i] for i in range(len(keys))]
