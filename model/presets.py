"""Model presets, parameter counts and analytic FLOPs (`deepfusion model info PRESET`).

tiny   tests: a random 4-layer LLM that the tests build, a 2-block DiT on 32x32 pixels
small  the CPU demo: the real SmolLM2-135M (30 layers, width 576) + a DiT of tens of millions
       of parameters on 64x64 pixels through the lossless pixel codec
mirror the demo's scale with PGv3's one-to-one map: 30 narrow blocks, block i reads SmolLM2 layer i
base   ~1B DiT on SmolLM2 at 256x256 through a 16-channel VAE (GPU measurements)
pgv3   Playground v3's shape: a Llama-3-8B mirror, one DiT block per LLM layer (32), the LLM's
       width (4096) and head count (32), at 1024x1024 through a 16-channel VAE
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .config import CodecConfig, DiTConfig, TextEncoderConfig


@dataclass
class ModelPreset:
    name: str
    dit: DiTConfig
    text: TextEncoderConfig
    codec: CodecConfig
    resolution: tuple[int, int]  # (height, width) in pixels, for FLOPs and the demo
    latent_factor: int  # pixels per latent cell on each side
    llm_params: int  # for reporting; the LLM's forward FLOPs ~ 2 * llm_params * tokens
    notes: str = ""
    text_tokens: int = field(default=64)


def _smollm2_dit(**kw) -> DiTConfig:
    return DiTConfig(text_dims=[576], llm_layers=[30], **kw)


PRESETS: dict[str, ModelPreset] = {
    "tiny": ModelPreset(
        "tiny",
        DiTConfig(in_channels=48, patch_size=1, width=64, depth=2, heads=2, text_dims=[64], llm_layers=[4]),
        TextEncoderConfig(source="<a tiny random Llama folder built by the tests>", max_tokens=16),
        CodecConfig(kind="pixels", factor=4),
        (32, 32), 4, 0, "for tests only", 16,
    ),
    "small": ModelPreset(
        "small",
        _smollm2_dit(in_channels=48, patch_size=1, width=384, depth=12, heads=6, ffn="mix"),
        TextEncoderConfig(source="smollm2", max_tokens=64),
        CodecConfig(kind="pixels", factor=4),
        (64, 64), 4, 134_515_008, "CPU demo: the real SmolLM2-135M-Instruct, lossless pixel codec",
    ),
    "mirror": ModelPreset(
        "mirror",
        _smollm2_dit(in_channels=48, patch_size=1, width=64, depth=30, heads=2, ffn="mix"),
        TextEncoderConfig(source="smollm2", max_tokens=64),
        CodecConfig(kind="pixels", factor=4),
        (32, 32), 4, 134_515_008, "deep fusion as Playground v3 builds it, at demo scale: one narrow DiT block per "
        "SmolLM2 layer (30), each reading its own layer",
    ),
    "base": ModelPreset(
        "base",
        _smollm2_dit(in_channels=16, patch_size=2, width=1536, depth=30, heads=24),
        TextEncoderConfig(source="smollm2", max_tokens=128, dtype="bfloat16"),
        CodecConfig(kind="vae", path="<local AutoencoderKL folder, 16 latent channels>"),
        (256, 256), 8, 134_515_008, "~1B DiT, one block per SmolLM2 layer",
        128,
    ),
    "pgv3": ModelPreset(
        "pgv3",
        DiTConfig(in_channels=16, patch_size=2, width=4096, depth=32, heads=32, text_dims=[4096], llm_layers=[32],
                  long_skip=True, kv_downsample_middle=True),
        TextEncoderConfig(source="<local Meta-Llama-3-8B folder>", max_tokens=256, dtype="bfloat16"),
        CodecConfig(kind="vae", path="<local AutoencoderKL folder, 16 latent channels>"),
        (1024, 1024), 8, 8_030_261_248, "Playground v3 shape: mirrors Llama-3-8B block for block",
        256,
    ),
}


def get_preset(name: str) -> ModelPreset:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]


def mirror_llm(llm_folder: str | Path, **overrides) -> DiTConfig:
    """A DiT that mirrors a local LLM: one block per layer, the LLM's width and head count.

    Reads only config.json, so sizing a DiT for an 8B LLM costs nothing; the LLM itself loads
    through FrozenTextEncoder like any other source.
    """
    cfg = json.loads((Path(llm_folder) / "config.json").read_text())
    base = dict(
        in_channels=16, patch_size=2, width=cfg["hidden_size"], depth=cfg["num_hidden_layers"],
        heads=cfg["num_attention_heads"], text_dims=[cfg["hidden_size"]], llm_layers=[cfg["num_hidden_layers"]],
    )
    return DiTConfig(**{**base, **overrides})


def count_parameters(cfg: DiTConfig) -> int:
    """Exact, by building the model on the meta device (no memory, any size)."""
    from .dit import DeepFusionDiT

    with torch.device("meta"):
        model = DeepFusionDiT(dit=cfg.to_dict())
    return sum(p.numel() for p in model.parameters())


def dit_forward_flops(cfg: DiTConfig, latent_hw: tuple[int, int], text_tokens: int) -> int:
    """Analytic forward FLOPs per sample (2 x multiply-adds of the matmuls and attention).

    Counts what dominates: linear layers, attention scores and weighted sums. Norms, activations
    and RoPE are left out (a few percent at most). Training costs about 3x this (fwd + bwd).
    """
    p, d, C, T = cfg.patch_size, cfg.width, cfg.in_channels, text_tokens
    n = (latent_hw[0] // p) * (latent_hw[1] // p)
    n_pooled = ((latent_hw[0] // p + 1) // 2) * ((latent_hw[1] // p + 1) // 2)
    hidden = int(d * cfg.mlp_ratio)
    macs = n * p * p * C * d  # patch embedding
    macs += 256 * d + d * d  # timestep MLP
    joint = cfg.conditioning != "refiner"
    for i in range(cfg.depth):
        middle = cfg.depth // 3 <= i < cfg.depth - cfg.depth // 3
        n_kv = n_pooled if (cfg.kv_downsample_middle and middle) else n
        macs += 6 * d * d  # adaLN modulation
        macs += n * d * d + n_kv * 2 * d * d + n * d * d  # q, kv, out projection
        keys = n_kv + (T if joint else 0)
        macs += 2 * n * keys * d  # scores and weighted sum
        if joint and cfg.conditioning != "shared_kv":  # shared_kv uses the LLM's own keys/values
            macs += T * cfg.text_dims[0] * 2 * d  # text keys/values from the LLM layer
        else:
            macs += n * d * d + T * 2 * d * d + 2 * n * T * d + n * d * d  # cross-attention
        macs += 2 * n * d * hidden  # MLP
        if cfg.ffn == "mix":
            macs += 9 * n * hidden  # its depthwise 3x3 convolution
        if cfg.long_skip and i >= cfg.depth - cfg.depth // 2:
            macs += n * 2 * d * d
    if not joint:
        for text_dim in cfg.text_dims:
            macs += T * text_dim * d  # refiner input projection
            macs += cfg.refiner_blocks * (4 * T * d * d + 2 * T * T * d + 2 * T * d * 4 * d + 6 * d * d)
            macs += d * d  # pooled text -> the refiner's condition
        if len(cfg.text_dims) > 1:
            Tb = T * (len(cfg.text_dims) - 1)
            macs += len(cfg.text_dims) * (T * d * d + Tb * 2 * d * d + 2 * T * Tb * d + T * d * d)
    macs += 2 * d * d + n * d * p * p * C  # final layer
    return 2 * macs


def layers_read(dit: DiTConfig) -> str:
    """Which LLM hidden state each DiT block reads (0 = embeddings, L = the last layer), from the
    model's own layer_map: the words every doc about a configuration should be generated from."""
    from .dit import layer_map

    llm = dit.llm_layers[0]
    if dit.conditioning == "refiner":
        picked = [dit.refiner_layer % (n + 1) for n in dit.llm_layers]
        return (f"LI-DiT refiner over hidden state(s) {picked} of {dit.llm_layers} layer(s); every block "
                "cross-attends to the refined tokens")
    layers = layer_map(dit.depth, llm, dit.conditioning, dit.text_layer)
    distinct = sorted(set(layers))
    how = ("one-to-one" if layers == list(range(1, llm + 1)) else
           "the last layer only" if distinct == [llm] else
           f"one layer ({distinct[0]} of {llm})" if len(distinct) == 1 else f"{len(distinct)} of {llm} layers")
    what = ("attends over the LLM's own keys/values of decoder layer" if dit.conditioning == "shared_kv"
            else "reads hidden state")
    return f"{how}: block i {what} " + ", ".join(f"{i}->{j}" for i, j in enumerate(layers))


def describe(preset: ModelPreset) -> dict:
    h, w = preset.resolution
    latent = (h // preset.latent_factor, w // preset.latent_factor)
    dit = preset.dit
    flops = dit_forward_flops(dit, latent, preset.text_tokens)
    return {
        "preset": preset.name,
        "notes": preset.notes,
        "resolution": f"{h}x{w} px -> latents {dit.in_channels}x{latent[0]}x{latent[1]} -> "
                      f"{(latent[0] // dit.patch_size) * (latent[1] // dit.patch_size)} image tokens",
        "dit": dit.to_dict(),
        "dit_params": count_parameters(dit),
        "text_encoder": preset.text.source,
        "llm_params": preset.llm_params,
        "text_tokens": preset.text_tokens,
        "layers_read": layers_read(dit),
        "dit_forward_gflops_per_sample": round(flops / 1e9, 3),
        "dit_train_gflops_per_sample": round(3 * flops / 1e9, 3),
        "llm_forward_gflops_per_sample": round(2 * preset.llm_params * preset.text_tokens / 1e9, 3),
    }


def with_overrides(preset: ModelPreset, **dit_overrides) -> ModelPreset:
    return replace(preset, dit=replace(preset.dit, **dit_overrides))
