"""Model parts, pure torch + transformers/diffusers: no I/O beyond loading weights from local paths.

The names below load on first use: `model.config` (plain dataclasses) is what every job's settings
parse against, and importing it must not import torch and diffusers (~10 s on a small machine)
just to reject a typo on the command line."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "codec": ("PixelCodec", "VAECodec", "build_codec"),
    "config": ("CodecConfig", "DiTConfig", "EDMConfig", "TextEncoderConfig"),
    "dit": ("DeepFusionDiT", "layer_map"),
    "edm": ("EDM",),
    "presets": ("PRESETS", "ModelPreset", "count_parameters", "describe", "dit_forward_flops", "get_preset",
                "mirror_llm"),
    "text_encoder": ("FrozenTextEncoder", "TextStates", "encode_for", "text_side", "warm_for"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:  # a submodule (model.dit, ...), as attribute access found it before
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError:
            raise AttributeError(f"module 'model' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
