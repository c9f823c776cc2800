"""The deep-fusion diffusion transformer (Playground v3), with FuseDiT's shared attention and LI-DiT's
refiner as alternatives.

Latent patches are the only tokens the DiT updates. In deep-fusion mode, block i attends jointly
over its own image keys/values and keys/values projected from LLM hidden state map(i)
(`layer_map`: one block per layer when the depths match, as Playground v3 mirrors its LLM; an
even spread from the first to the last layer otherwise; `deepfusion model info` prints it). In
shared-K/V mode (FuseDiT), block i attends over the frozen LLM's own keys and values of decoder
layer map(i), text positions included (the LLM's 1D rotary embedding), with no text projection of
its own. Timestep enters by adaLN-Zero, and positions are 2D rotary embeddings of integer grid
coordinates, so any aspect ratio or size just extends the grid. The `conditioning` switch keeps
the same DiT for the ablations: every block fed one LLM layer (the last, or any single one), or
LI-DiT's refined tokens read by cross-attention.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from .config import DiTConfig


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


def layer_map(depth: int, llm_layers: int, conditioning: str, text_layer: int = -1) -> list[int]:
    """The LLM layer each DiT block reads: a hidden_states index (0 = embeddings, 1..L = layer
    outputs), or for shared_kv the decoder layer (1..L) whose keys/values it attends over."""
    if conditioning == "single_layer":
        return [text_layer % (llm_layers + 1)] * depth
    if conditioning == "last_layer" or depth == 1:
        return [llm_layers] * depth
    if depth == llm_layers:
        return list(range(1, llm_layers + 1))
    return [1 + int(i * (llm_layers - 1) / (depth - 1) + 0.5) for i in range(depth)]


# -- positions ----------------------------------------------------------------------------------
def grid_positions(h: int, w: int, device=None) -> torch.Tensor:
    """(row, col) of each patch in raster order, as floats: [h*w, 2]."""
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    return torch.stack([rows, cols], -1).float()


def rope_angles(pos: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [N, head_dim/2]: the first half of the channel pairs turn with the row, the rest with the column."""
    quarter = head_dim // 4
    inv_freq = theta ** (-torch.arange(quarter, device=pos.device, dtype=torch.float32) / quarter)
    angles = torch.cat([pos[:, :1] * inv_freq, pos[:, 1:] * inv_freq], -1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, heads, N, head_dim], channel pairs (2j, 2j+1) rotated by angle j."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2)
    return out.type_as(x)


def pool_tokens(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """2x2 average pooling of raster-ordered tokens [B, h*w, C] -> [B, ceil(h/2)*ceil(w/2), C]."""
    grid = x.transpose(1, 2).unflatten(-1, (h, w))
    return F.avg_pool2d(grid, 2, ceil_mode=True, count_include_pad=False).flatten(2).transpose(1, 2)


# -- layers -------------------------------------------------------------------------------------
class Mlp(nn.Sequential):
    def __init__(self, width: int, ratio: float):
        hidden = int(width * ratio)
        super().__init__(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor, grid_hw: tuple[int, int] | None = None) -> torch.Tensor:
        return super().forward(x)


class MixFfn(nn.Module):
    """Sana's Mix-FFN: the MLP with a 3x3 depthwise convolution over the token grid between its two
    linears, so every token also sees its 8 neighbours in every block (local coherence that plain
    attention has to learn from data; the convolution adds 9 x hidden weights per block)."""

    def __init__(self, width: int, ratio: float):
        super().__init__()
        hidden = int(width * ratio)
        self.fc1 = nn.Linear(width, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, kernel_size=3, padding=1, groups=hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
        h, w = grid_hw
        y = self.fc1(x).transpose(1, 2).unflatten(-1, (h, w))  # [B, hidden, h, w]
        y = self.dwconv(y).flatten(2).transpose(1, 2)
        return self.fc2(self.act(y))


class TimestepEmbedder(nn.Module):
    """EDM's c_noise (= ln(sigma)/4, roughly in [-2, 2]) -> a width-sized vector, through
    sinusoids of frequencies 1..freq_max (DiTConfig.noise_freq_max)."""

    def __init__(self, width: int, freq_dim: int = 256, freq_max: float = 16.0):
        super().__init__()
        freqs = torch.exp(torch.linspace(0.0, math.log(freq_max), freq_dim // 2))
        self.register_buffer("freqs", freqs, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        args = c_noise.float()[:, None] * self.freqs[None]
        return self.mlp(torch.cat([args.cos(), args.sin()], -1).to(self.mlp[0].weight.dtype))


class Attention(nn.Module):
    """Image queries over image keys/values and, in joint mode, text keys/values of one LLM layer.

    Projected text (`text_dim`): the hidden states are RMS-normalised first (LLM layers differ in
    scale by orders of magnitude) and projected to the DiT width. Shared text (`shared_kv_heads`):
    the LLM's own keys/values of one decoder layer, used as they are (grouped-query: each LLM
    key/value head serves heads // kv_heads DiT heads). Padding tokens are masked out; the image keys
    are always present, so a fully padded prompt still attends to something.
    """

    def __init__(self, width: int, heads: int, qk_norm: bool, text_dim: int | None, kv_downsample: bool,
                 shared_kv_heads: int | None = None):
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)
        self.kv_downsample = kv_downsample
        self.q_norm = nn.RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.shared_kv_heads = shared_kv_heads
        self.joint = text_dim is not None or shared_kv_heads is not None
        if text_dim is not None:
            self.text_norm = nn.RMSNorm(text_dim)
            self.text_kv = nn.Linear(text_dim, 2 * width)
            self.text_k_norm = nn.RMSNorm(self.head_dim) if qk_norm else nn.Identity()

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)  # [B, heads, N, d]

    def forward(self, x, grid_hw, rope, text=None, text_mask=None):
        h, w = grid_hw
        q = apply_rope(self.q_norm(self._heads(self.q(x))), *rope["full"])
        src, key_rope = (pool_tokens(x, h, w), rope["pooled"]) if self.kv_downsample else (x, rope["full"])
        k, v = self.kv(src).chunk(2, dim=-1)
        k, v = apply_rope(self.k_norm(self._heads(k)), *key_rope), self._heads(v)
        mask = None
        if self.joint:
            if self.shared_kv_heads:  # [B, T, 2 * kv_heads * head_dim]: the LLM's keys (RoPE'd), values
                tk, tv = text.unflatten(-1, (2, self.shared_kv_heads, self.head_dim)).unbind(2)
                groups = self.heads // self.shared_kv_heads
                tk, tv = (t.transpose(1, 2).repeat_interleave(groups, dim=1) for t in (tk, tv))
            else:
                tk, tv = self.text_kv(self.text_norm(text)).chunk(2, dim=-1)
                tk, tv = self.text_k_norm(self._heads(tk)), self._heads(tv)
            k = torch.cat([k, tk], dim=2)
            v = torch.cat([v, tv], dim=2)
            image_keys = torch.ones(x.shape[0], k.shape[2] - text.shape[1], dtype=torch.bool, device=x.device)
            mask = torch.cat([image_keys, text_mask.bool()], dim=1)[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).flatten(2))


class CrossAttention(nn.Module):
    """Image queries over text tokens only (LI-DiT); text is already refined to the DiT width."""

    def __init__(self, width: int, heads: int, qk_norm: bool):
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)
        self.q_norm = nn.RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(self.head_dim) if qk_norm else nn.Identity()

    def _heads(self, x):
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

    def forward(self, x, text, text_mask):
        q = self.q_norm(self._heads(self.q(x)))
        k, v = self.kv(text).chunk(2, dim=-1)
        mask = text_mask.bool()[:, None, None, :]
        out = F.scaled_dot_product_attention(q, self.k_norm(self._heads(k)), self._heads(v), attn_mask=mask)
        return self.proj(out.transpose(1, 2).flatten(2))


class DiTBlock(nn.Module):
    def __init__(self, cfg: DiTConfig, index: int):
        super().__init__()
        w = cfg.width
        middle = cfg.depth // 3 <= index < cfg.depth - cfg.depth // 3
        joint = cfg.conditioning != "refiner"
        shared = cfg.conditioning == "shared_kv"
        self.norm1 = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(w, cfg.heads, cfg.qk_norm, cfg.text_dims[0] if joint and not shared else None,
                              kv_downsample=cfg.kv_downsample_middle and middle,
                              shared_kv_heads=cfg.llm_kv_heads[0] if shared else None)
        self.cross = None if joint else CrossAttention(w, cfg.heads, cfg.qk_norm)
        self.norm_cross = None if joint else nn.LayerNorm(w, eps=1e-6)
        self.norm2 = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.mlp = (MixFfn if cfg.ffn == "mix" else Mlp)(w, cfg.mlp_ratio)
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(w, 6 * w))
        receives_skip = cfg.long_skip and index >= cfg.depth - cfg.depth // 2
        self.skip_proj = nn.Linear(2 * w, w) if receives_skip else None

    def forward(self, x, c, grid_hw, rope, text, text_mask):
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN(c).chunk(6, dim=-1)
        joint_text = (text, text_mask) if self.cross is None else (None, None)
        x = x + gate_a[:, None] * self.attn(modulate(self.norm1(x), shift_a, scale_a), grid_hw, rope, *joint_text)
        if self.cross is not None:
            x = x + self.cross(self.norm_cross(x), text, text_mask)
        return x + gate_m[:, None] * self.mlp(modulate(self.norm2(x), shift_m, scale_m), grid_hw)


class RefinerBlock(nn.Module):
    """One block of LI-DiT's linguistic token refiner: bidirectional self-attention over the text
    tokens (QK-norm, padding masked) and an MLP, each modulated (shift, scale) and gated by the
    refiner's condition (pooled text + timestep). The modulation starts at zero, so the block starts
    as the identity; with gates 1 and shifts/scales 0 it is a plain pre-norm transformer block."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.q_norm, self.k_norm = nn.RMSNorm(self.head_dim), nn.RMSNorm(self.head_dim)
        self.mlp = Mlp(width, 4.0)
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x, mask, cond):
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN(cond).chunk(6, dim=-1)
        q, k, v = self.qkv(modulate(self.norm1(x), shift_a, scale_a)).chunk(3, dim=-1)
        q, k, v = (t.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v, attn_mask=mask.bool()[:, None, None, :])
        x = x + gate_a[:, None] * self.proj(out.transpose(1, 2).flatten(2))
        return x + gate_m[:, None] * self.mlp(modulate(self.norm2(x), shift_m, scale_m))


class TokenRefiner(nn.Module):
    """LI-DiT's linguistic token refiner for one LLM branch.

    Projects one (normalised) LLM layer to the DiT width and refines it with bidirectional blocks
    (undoing some of the decoder's causal one-sidedness), each gated and modulated by the pooled
    text + timestep and zero-initialised, so training starts from the plain projected LLM features.
    The LLM instruction (LI-DiT's prefix, positions `instruction_span`) is read by the refiner and
    cut at its end: the mask it returns leaves those tokens out of the DiT's cross-attention.
    """

    def __init__(self, text_dim: int, width: int, heads: int, blocks: int, instruction_span: list[int] | None = None):
        super().__init__()
        self.norm = nn.RMSNorm(text_dim)
        self.proj = nn.Linear(text_dim, width)
        self.pooled = nn.Linear(width, width)  # pooled text -> the refiner's condition (with the timestep)
        self.blocks = nn.ModuleList(RefinerBlock(width, heads) for _ in range(blocks))
        self.instruction_span = list(instruction_span or [0, 0])

    def forward(self, hidden, mask, c) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.proj(self.norm(hidden))
        start, stop = self.instruction_span
        out_mask = mask.bool().clone()
        out_mask[:, start:stop] = False  # the instruction: refined with the prompt, then cut
        m = out_mask.to(x.dtype)[..., None]
        cond = c + self.pooled((x * m).sum(1) / m.sum(1).clamp(min=1))
        for block in self.blocks:
            x = block(x, mask, cond)
        return x, out_mask


class CollaborativeFusion(nn.Module):
    """Two refined LLM branches, each cross-attending to the other (zero-gated), then concatenated."""

    def __init__(self, width: int, heads: int, branches: int):
        super().__init__()
        self.attn = nn.ModuleList(CrossAttention(width, heads, qk_norm=True) for _ in range(branches))
        self.norms = nn.ModuleList(nn.LayerNorm(width, eps=1e-6) for _ in range(branches))
        self.gates = nn.Parameter(torch.zeros(branches, width))

    def forward(self, xs, masks):
        out = []
        for i, (x, norm, attn) in enumerate(zip(xs, self.norms, self.attn)):
            others = torch.cat([xs[j] for j in range(len(xs)) if j != i], 1)
            other_masks = torch.cat([masks[j] for j in range(len(xs)) if j != i], 1)
            out.append(x + self.gates[i] * attn(norm(x), others, other_masks))
        return torch.cat(out, 1), torch.cat(masks, 1)


class FinalLayer(nn.Module):
    def __init__(self, width: int, patch: int, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, patch * patch * channels)

    def forward(self, x, c):
        shift, scale = self.adaLN(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


# -- the model ----------------------------------------------------------------------------------
class DeepFusionDiT(ModelMixin, ConfigMixin):
    """F_theta of EDM: (noisy latents scaled by c_in, c_noise, LLM hidden states) -> latents.

    text_states: one tensor per LLM branch, [layers + 1, B, T, C] (all hidden states, embeddings
    first); text_masks: one [B, T] tensor per branch (True = real token).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, dit: dict | None = None):
        super().__init__()
        cfg = DiTConfig.from_dict(dit or {})
        self.cfg = cfg
        self.gradient_checkpointing = False
        p, w = cfg.patch_size, cfg.width
        self.patch_embed = nn.Conv2d(cfg.in_channels, w, kernel_size=p, stride=p)
        self.t_embed = TimestepEmbedder(w, freq_max=cfg.noise_freq_max)
        self.blocks = nn.ModuleList(DiTBlock(cfg, i) for i in range(cfg.depth))
        self.final = FinalLayer(w, p, cfg.in_channels)
        if cfg.conditioning == "refiner":
            spans = cfg.instruction_spans or [[0, 0]] * len(cfg.text_dims)
            self.refiners = nn.ModuleList(
                TokenRefiner(d, w, cfg.heads, cfg.refiner_blocks, span) for d, span in zip(cfg.text_dims, spans)
            )
            self.collab = CollaborativeFusion(w, cfg.heads, len(cfg.text_dims)) if len(cfg.text_dims) > 1 else None
        self.layer_index = layer_map(cfg.depth, cfg.llm_layers[0], cfg.conditioning, cfg.text_layer)
        # What this model reads, per LLM branch: hidden-state indices (decoder layers' keys/values
        # for shared_kv, `text_kind`); an encoder asked for only these (FrozenTextEncoder(layers=...,
        # kind=...)) returns them compacted, in this order. The refiner also reads the instruction.
        self.text_kind = "kv" if cfg.conditioning == "shared_kv" else "hidden"
        self.keeps_instruction = cfg.conditioning == "refiner"
        if cfg.conditioning == "refiner":
            self.text_layers = [[cfg.refiner_layer % (n + 1)] for n in cfg.llm_layers]
        else:
            self.text_layers = [sorted(set(self.layer_index))]
        self._init_weights()

    def _init_weights(self) -> None:
        # DiT's recipe: Xavier linears, adaLN-Zero (modulations and gates start at 0, every block
        # starts as the identity), zero output layer.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embed.weight.view(self.patch_embed.weight.shape[0], -1))
        nn.init.normal_(self.t_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embed.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN[-1].weight)
            nn.init.zeros_(block.adaLN[-1].bias)
        nn.init.zeros_(self.final.adaLN[-1].weight)
        nn.init.zeros_(self.final.adaLN[-1].bias)
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)
        for refiner in getattr(self, "refiners", []):
            for block in refiner.blocks:  # LI-DiT's zero-initialised gates: each block starts as the identity
                nn.init.zeros_(block.adaLN[-1].weight)
                nn.init.zeros_(block.adaLN[-1].bias)

    def _rope(self, h: int, w: int, device) -> dict:
        full = grid_positions(h, w, device)
        pooled = pool_tokens(full[None], h, w)[0]  # the centres of 2x2 cells: half-integer positions
        d, theta = self.cfg.head_dim, self.cfg.rope_theta
        return {"full": rope_angles(full, d, theta), "pooled": rope_angles(pooled, d, theta)}

    def _layer(self, states: torch.Tensor, branch: int, index: int) -> torch.Tensor:
        """Hidden state `index` of a branch, from every hidden state or from only `text_layers`
        (kv states always come compacted)."""
        n_all = self.cfg.llm_layers[branch] + 1
        if states.shape[0] == n_all and self.text_kind == "hidden":
            return states[index]
        wanted = self.text_layers[branch]
        if states.shape[0] != len(wanted):
            raise ValueError(f"text states of branch {branch} have {states.shape[0]} layers: expected every hidden "
                             f"state ({n_all}) or the {len(wanted)} this model reads ({wanted})")
        return states[wanted.index(index % n_all)]

    def _text_per_block(self, text_states, text_masks, c):
        if self.cfg.conditioning == "refiner":
            refined = [r(self._layer(s, b, self.cfg.refiner_layer), m, c)
                       for b, (r, s, m) in enumerate(zip(self.refiners, text_states, text_masks))]
            texts, masks = [t for t, _ in refined], [m for _, m in refined]
            if self.collab is not None:
                text, mask = self.collab(texts, masks)
            else:
                text, mask = texts[0], masks[0]
            return [(text, mask)] * self.cfg.depth
        states, mask = text_states[0], text_masks[0]
        return [(self._layer(states, 0, i), mask) for i in self.layer_index]

    def forward(self, x, c_noise, text_states, text_masks):
        cfg = self.cfg
        B, _, H, W = x.shape
        p = cfg.patch_size
        if H % p or W % p:
            raise ValueError(f"latent size {H}x{W} is not divisible by the patch size {p}")
        h, w = H // p, W // p
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, h*w, width]
        c = self.t_embed(c_noise)
        rope = self._rope(h, w, x.device)
        per_block = self._text_per_block(text_states, text_masks, c)
        skips = []
        for i, (block, (text, mask)) in enumerate(zip(self.blocks, per_block)):
            if block.skip_proj is not None:
                tokens = block.skip_proj(torch.cat([tokens, skips.pop()], -1))
            text = text.to(tokens.dtype)
            if self.gradient_checkpointing and torch.is_grad_enabled():
                tokens = torch.utils.checkpoint.checkpoint(block, tokens, c, (h, w), rope, text, mask, use_reentrant=False)
            else:
                tokens = block(tokens, c, (h, w), rope, text, mask)
            if cfg.long_skip and i < cfg.depth // 2:
                skips.append(tokens)
        out = self.final(tokens, c)  # [B, h*w, p*p*C]
        out = out.view(B, h, w, p, p, cfg.in_channels).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(B, cfg.in_channels, H, W)
