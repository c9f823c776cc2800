"""EDM (Karras et al. 2022): preconditioning, training loss, and the Heun sampler with CFG.

The network F never sees raw noisy latents: D(x; sigma) = c_skip x + c_out F(c_in x; c_noise), with
the coefficients chosen so F's input and target have unit variance at every noise level.
"""

from __future__ import annotations

from typing import Callable

import torch

from .config import EDMConfig

# A denoiser call: (x, sigma [B], conditioning) -> F's raw output, same shape as x.
Network = Callable[..., torch.Tensor]


class EDM:
    def __init__(self, cfg: EDMConfig | None = None):
        self.cfg = cfg or EDMConfig()

    # -- preconditioning -----------------------------------------------------------------------
    def coefficients(self, sigma: torch.Tensor):
        sd = self.cfg.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sigma**2 + sd**2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise

    def denoise(self, net: Network, x: torch.Tensor, sigma: torch.Tensor, *cond) -> torch.Tensor:
        """D(x; sigma): the denoised estimate."""
        sigma = sigma.to(torch.float32).reshape(-1)
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        per_image = (-1, 1, 1, 1)
        f = net((c_in.view(per_image) * x).to(_dtype(net, x)), c_noise, *cond)
        return c_skip.view(per_image) * x + c_out.view(per_image) * f.to(torch.float32)

    # -- training ------------------------------------------------------------------------------
    def sample_sigma(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        z = torch.randn(n, generator=generator, device=device)
        return (z * self.cfg.p_std + self.cfg.p_mean).exp()

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        sd = self.cfg.sigma_data
        return (sigma**2 + sd**2) / (sigma * sd) ** 2

    def loss(self, net: Network, x0: torch.Tensor, *cond, generator: torch.Generator | None = None,
             sigma: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample weighted denoising loss [B] and the sigmas used [B]; `noise` is unit-variance
        noise of x0's shape (drawn from `generator` when not given)."""
        b = x0.shape[0]
        if sigma is None:
            sigma = self.sample_sigma(b, generator, x0.device)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device)
        noise = noise * sigma.view(-1, 1, 1, 1)
        denoised = self.denoise(net, x0 + noise, sigma, *cond)
        per_sample = ((denoised - x0) ** 2).flatten(1).mean(1)
        return self.loss_weight(sigma) * per_sample, sigma

    # -- sampling ------------------------------------------------------------------------------
    def sigma_schedule(self, steps: int, device=None) -> torch.Tensor:
        """Karras et al.'s rho-spaced sigmas from sigma_max down to sigma_min, then 0."""
        c = self.cfg
        i = torch.arange(steps, dtype=torch.float64, device=device)
        t = (c.sigma_max ** (1 / c.rho) + i / max(steps - 1, 1) * (c.sigma_min ** (1 / c.rho) - c.sigma_max ** (1 / c.rho))) ** c.rho
        return torch.cat([t, torch.zeros(1, dtype=torch.float64, device=device)]).float()

    def schedule_from(self, steps: int, level: float, device=None) -> torch.Tensor:
        """The part of sigma_schedule(steps) from its first level <= `level` (all of it when `level`
        is at least sigma_max): what a sampler started at `level` (SDEdit) runs."""
        sigmas = self.sigma_schedule(steps, device)
        return sigmas[int((sigmas[:-1] <= level + 1e-6).nonzero()[0]):] if level < sigmas[0] else sigmas

    @torch.no_grad()
    def sample(self, net: Network, shape: tuple[int, ...], cond: tuple, uncond: tuple | None = None,
               steps: int = 32, guidance: float = 1.0, generator: torch.Generator | None = None,
               device=None, noise: torch.Tensor | None = None,
               start: tuple[torch.Tensor, float] | None = None) -> torch.Tensor:
        """Heun's 2nd-order deterministic sampler (EDM Algorithm 1) with classifier-free guidance.

        cond/uncond are the extra arguments of `net` (text states and masks) for the prompt and for
        the empty prompt; with guidance != 1 both run in one batch. Deterministic for a generator
        (or for `noise`: unit-variance starting noise of `shape`, e.g. drawn per image from its seed).
        `start` = (x0, sigma): begin from clean latents x0 noised to the schedule's first level <= sigma
        (SDEdit); the steps above it are skipped.
        """
        use_cfg = uncond is not None and guidance != 1.0

        def guided(x, sigma):
            s = sigma.expand(x.shape[0])
            if not use_cfg:
                return self.denoise(net, x, s, *cond)
            both = self.denoise(net, torch.cat([x, x]), torch.cat([s, s]), *_cat_cond(cond, uncond))
            d_cond, d_uncond = both.chunk(2)
            return d_uncond + guidance * (d_cond - d_uncond)

        sigmas = self.sigma_schedule(steps, device)
        if noise is None:
            noise = torch.randn(shape, generator=generator, device=device)
        x = noise.to(device=device, dtype=torch.float32) * sigmas[0]
        if start is not None:
            x0, level = start
            sigmas = self.schedule_from(steps, level, device)
            x = x0.to(device=device, dtype=torch.float32) + noise.to(device=device, dtype=torch.float32) * sigmas[0]
        for i in range(len(sigmas) - 1):
            s_cur, s_next = sigmas[i], sigmas[i + 1]
            d_cur = (x - guided(x, s_cur)) / s_cur
            x_next = x + (s_next - s_cur) * d_cur
            if s_next > 0:  # Heun correction, except on the last step to sigma = 0
                d_next = (x_next - guided(x_next, s_next)) / s_next
                x_next = x + (s_next - s_cur) * (d_cur + d_next) / 2
            x = x_next
        return x


def _dtype(net, x: torch.Tensor) -> torch.dtype:
    try:
        return next(net.parameters()).dtype
    except (AttributeError, StopIteration):
        return x.dtype


def _cat_cond(cond: tuple, uncond: tuple) -> tuple:
    """Batch the conditional and unconditional arguments: lists of per-branch tensors are padded
    to a common token length and concatenated along the batch axis."""
    out = []
    for a, b in zip(cond, uncond):
        if isinstance(a, (list, tuple)):
            out.append([_cat_padded(x, y) for x, y in zip(a, b)])
        else:
            out.append(_cat_padded(a, b))
    return tuple(out)


def _cat_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # text states are [layers, B, T, C] (batch axis 1) and masks [B, T] (batch axis 0)
    batch_axis = 1 if a.dim() == 4 else 0
    t = max(a.shape[batch_axis + 1], b.shape[batch_axis + 1])
    return torch.cat([_pad_tokens(a, t, batch_axis + 1), _pad_tokens(b, t, batch_axis + 1)], batch_axis)


def _pad_tokens(x: torch.Tensor, length: int, axis: int) -> torch.Tensor:
    if x.shape[axis] == length:
        return x
    pad_shape = list(x.shape)
    pad_shape[axis] = length - x.shape[axis]
    return torch.cat([x, x.new_zeros(pad_shape)], axis)


def log_sigma_bin(sigma: torch.Tensor, edges=(-2.0, -1.0, 0.0, 1.0)) -> torch.Tensor:
    """Bin index of ln(sigma) for per-noise-level loss logging (5 bins by default)."""
    return torch.bucketize(sigma.log(), torch.tensor(edges, device=sigma.device))


SIGMA_BIN_NAMES = ("ln_sigma<-2", "-2..-1", "-1..0", "0..1", ">1")
