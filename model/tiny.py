"""Tiny randomly initialised models of the real classes, built locally (no hub, no download).

Tests, benchmarks and the demo use them wherever a production model (an 8B LLM, a 16-channel VAE)
cannot run here: they go through exactly the same loading code as the real thing, a local folder
written with save_pretrained.
"""

from __future__ import annotations

from pathlib import Path

import torch

from common.tiny_tokenizer import build_bpe_tokenizer


def _save_atomically(folder: Path, model, tokenizer) -> Path:
    """Model and tokenizer into a temporary folder, then renamed: a half-written folder never looks built."""
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(folder)
    return folder


def build_tiny_llama(folder: str | Path, layers: int = 4, hidden: int = 64, heads: int = 4, seed: int = 0) -> Path:
    """A random LlamaForCausalLM (the class of Llama-3-8B and SmolLM2) saved as a local folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    if (folder / "config.json").exists():
        return folder
    tokenizer = build_bpe_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(seed)
    return _save_atomically(folder, LlamaForCausalLM(config), tokenizer)


def build_tiny_vae(folder: str | Path, latent_channels: int = 16, seed: int = 0) -> Path:
    """A random diffusers AutoencoderKL with 16 latent channels and 4x down-sampling."""
    from diffusers import AutoencoderKL

    folder = Path(folder)
    if (folder / "config.json").exists():
        return folder
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8,
        scaling_factor=1.5, shift_factor=0.1,
    )
    vae.save_pretrained(folder)
    return folder


def build_tiny_gemma3(folder: str | Path, layers: int = 3, hidden: int = 48, heads: int = 2, kv_heads: int = 1,
                      head_dim: int = 32, sliding_window: int = 256, seed: int = 0) -> Path:
    """A random Gemma3ForCausalLM (the class of Gemma-3-270M: grouped-query attention, QK-norm, a
    head size of its own) saved as a local folder, its tokenizer prepending BOS as Gemma's does."""
    from tokenizers.processors import TemplateProcessing
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    folder = Path(folder)
    if (folder / "config.json").exists():
        return folder
    tokenizer = build_bpe_tokenizer()
    bos = tokenizer.bos_token
    tokenizer._tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tokenizer.bos_token_id)])
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim, max_position_embeddings=512,
        sliding_window=sliding_window, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(seed)
    return _save_atomically(folder, Gemma3ForCausalLM(config), tokenizer)
