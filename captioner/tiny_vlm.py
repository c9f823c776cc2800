"""A tiny randomly initialised Qwen2-VL, built locally: the VLM of tests, benchmarks and the demo.

No pretrained VLM can be had on this machine, so everything that serves a VLM (the vLLM offline
engine, the vLLM OpenAI server) is exercised with this model of the real class, saved with
save_pretrained exactly as a downloaded checkpoint would be. Its words are noise; the captioner
must still return valid six-level JSON from it (guided decoding), which is the point of testing
with it. The sizes dodge vLLM-on-CPU limits (docs/environment.md): attention head_dim 64, and every
special-token id inside the tiny vocabulary.
"""

from __future__ import annotations

from pathlib import Path

import torch

from common.tiny_tokenizer import SPECIAL_TOKENS, build_bpe_tokenizer

VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]

# Qwen2-VL's chat template, reduced to what a captioner sends: system/user/assistant turns whose
# content is a string or a list of {"type": "text"} / {"type": "image"} parts.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] in ('image', 'image_url', 'image_pil') %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_qwen2_vl(folder: str | Path, seed: int = 0, max_image_pixels: int = 112 * 112) -> Path:
    """Write a random Qwen2VLForConditionalGeneration + tokenizer + processors into `folder`.

    `max_image_pixels` caps what the image processor feeds the vision tower (112x112 -> 16 image
    tokens after the 2x2 merge), which keeps CPU prefill cheap in tests.
    """
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    folder = Path(folder)
    if (folder / "config.json").exists():
        return folder
    tokenizer = build_bpe_tokenizer(vocab_size=512)
    tokenizer.add_special_tokens({"additional_special_tokens": VISION_TOKENS})
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS + VISION_TOKENS}
    head_dim = 64
    text = dict(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=128 // head_dim, num_key_value_heads=1, max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12]},
        bos_token_id=ids["<|im_start|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(depth=1, embed_dim=64, hidden_size=128, num_heads=1, mlp_ratio=2, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2)
    config = Qwen2VLConfig(
        text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    # vLLM reads the stop/pad ids from the top-level config and generation_config: keep them in range
    config.bos_token_id, config.eos_token_id, config.pad_token_id = text["bos_token_id"], text["eos_token_id"], text["pad_token_id"]
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.bos_token_id = text["bos_token_id"]
    model.generation_config.eos_token_id = text["eos_token_id"]
    model.generation_config.pad_token_id = text["pad_token_id"]
    size = {"shortest_edge": 28 * 28, "longest_edge": max_image_pixels}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size),
        video_processor=Qwen2VLVideoProcessor(size=size),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    tmp.rename(folder)
    return folder
