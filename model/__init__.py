"""Model parts, pure torch + transformers/diffusers: no I/O beyond loading weights from local paths."""

from .codec import PixelCodec, VAECodec, build_codec
from .config import CodecConfig, DiTConfig, EDMConfig, TextEncoderConfig
from .dit import DeepFusionDiT, layer_map
from .edm import EDM
from .presets import PRESETS, ModelPreset, count_parameters, describe, dit_forward_flops, get_preset, mirror_llm
from .text_encoder import FrozenTextEncoder, TextStates, encode_for, text_side
