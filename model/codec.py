"""Image <-> latent codecs: a diffusers AutoencoderKL, or a lossless pixel codec for small runs.

Both take images in [-1, 1] ([B, 3, H, W]) and give latents scaled to roughly unit variance
(latents = (z - shift) * scale), the scale EDM's sigma_data = 1 assumes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import CodecConfig


class PixelCodec:
    """Space-to-depth: each factor x factor block of pixels becomes 3 * factor^2 channels.

    Lossless (decode(encode(x)) == x) and free, so a tiny DiT can train on 32-64 px images
    without a VAE; the DiT's patch size then works on already-folded pixels.
    """

    def __init__(self, factor: int = 4, scale: float = 2.0, shift: float = 0.0):
        self.factor, self.scale, self.shift = factor, scale, shift
        self.channels = 3 * factor * factor

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return (F.pixel_unshuffle(images.float(), self.factor) - self.shift) * self.scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(latents.float() / self.scale + self.shift, self.factor)


class VAECodec:
    """diffusers AutoencoderKL from a local folder (16-channel latents in production), frozen.

    Scale and shift default to the VAE config's scaling_factor / shift_factor when present.
    """

    def __init__(self, path: str, scale: float | None = None, shift: float | None = None,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, sample: bool = False):
        from diffusers import AutoencoderKL

        self.vae = AutoencoderKL.from_pretrained(path, local_files_only=True, torch_dtype=dtype).to(device).eval()
        self.vae.requires_grad_(False)
        cfg = self.vae.config
        self.scale = scale if scale is not None else float(getattr(cfg, "scaling_factor", 1.0) or 1.0)
        self.shift = shift if shift is not None else float(getattr(cfg, "shift_factor", 0.0) or 0.0)
        self.channels = cfg.latent_channels
        self.factor = 2 ** (len(cfg.block_out_channels) - 1)
        self.sample = sample

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        dist = self.vae.encode(images.to(self.vae.dtype)).latent_dist
        z = dist.sample() if self.sample else dist.mean
        return (z.float() - self.shift) * self.scale

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents / self.scale + self.shift
        return self.vae.decode(z.to(self.vae.dtype)).sample.float()


def build_codec(cfg: CodecConfig, device="cpu", dtype=torch.float32):
    if cfg.kind == "pixels":
        return PixelCodec(cfg.factor, cfg.scale, cfg.shift)
    if cfg.kind == "vae":
        if not cfg.path:
            raise ValueError("codec.kind=vae needs codec.path: a local diffusers AutoencoderKL folder")
        return VAECodec(cfg.path, device=device, dtype=dtype)
    raise ValueError(f"codec.kind must be 'pixels' or 'vae', got {cfg.kind!r}")
