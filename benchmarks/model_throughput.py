"""Forward+backward throughput of our deep-fusion DiT vs diffusers' SD3Transformer2DModel.

Both models get the same width, depth, heads, image tokens and text tokens, the same batch and the
same dtype, measured in the same process one after the other. SD3 is an MM-DiT: its text tokens
have their own stream that is updated in every block, so it does more work per block than a
deep-fusion block (where text keys/values are projections of a frozen LLM layer). We report both
the raw samples/s ratio and the ratio per FLOP (FLOPs counted by torch's FlopCounterMode), which
says how efficiently each implementation runs its own arithmetic.

  python benchmarks/model_throughput.py                      # CPU, the `small` preset's shape
  python benchmarks/model_throughput.py --device cuda --dtype bfloat16 --width 1152 --depth 28 --heads 16 --latent 32
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from model import DeepFusionDiT, DiTConfig


def build_ours(a) -> tuple[torch.nn.Module, callable]:
    cfg = DiTConfig(in_channels=a.channels, patch_size=a.patch, width=a.width, depth=a.depth, heads=a.heads,
                    text_dims=[a.text_dim], llm_layers=[a.depth])
    model = DeepFusionDiT(dit=cfg.to_dict())
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch, a.channels, a.latent, a.latent, generator=g)
    c_noise = torch.randn(a.batch, generator=g)
    states = torch.randn(a.depth + 1, a.batch, a.text_tokens, a.text_dim, generator=g)
    mask = torch.ones(a.batch, a.text_tokens, dtype=torch.bool)
    inputs = [t.to(a.device) for t in (x, c_noise, states, mask)]
    inputs[0], inputs[2] = inputs[0].to(a.dtype), inputs[2].to(a.dtype)
    return model, lambda m: m(inputs[0], inputs[1], [inputs[2]], [inputs[3]])


def build_sd3(a) -> tuple[torch.nn.Module, callable]:
    from diffusers import SD3Transformer2DModel

    model = SD3Transformer2DModel(
        sample_size=a.latent, patch_size=a.patch, in_channels=a.channels, out_channels=a.channels,
        num_layers=a.depth, attention_head_dim=a.width // a.heads, num_attention_heads=a.heads,
        joint_attention_dim=a.text_dim, caption_projection_dim=a.width, pooled_projection_dim=a.text_dim,
        pos_embed_max_size=a.latent // a.patch,
    )
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch, a.channels, a.latent, a.latent, generator=g).to(a.device, a.dtype)
    text = torch.randn(a.batch, a.text_tokens, a.text_dim, generator=g).to(a.device, a.dtype)
    pooled = torch.randn(a.batch, a.text_dim, generator=g).to(a.device, a.dtype)
    t = torch.rand(a.batch, generator=g).to(a.device) * 1000
    return model, lambda m: m(hidden_states=x, encoder_hidden_states=text, pooled_projections=pooled,
                              timestep=t, return_dict=False)[0]


def measure(name, build, a) -> dict:
    torch.manual_seed(0)
    model, call = build(a)
    model = model.to(a.device).train()
    if a.dtype != torch.float32:
        model = model.to(a.dtype)
    params = sum(p.numel() for p in model.parameters())

    def step():
        out = call(model)
        out.float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops() / a.batch
    for _ in range(a.warmup):
        step()
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(a.iters):
        step()
    sync()
    seconds = time.perf_counter() - t0
    sps = a.batch * a.iters / seconds
    return {"model": name, "params": params, "train_gflop_per_sample": flops / 1e9, "samples_per_s": sps,
            "achieved_tflops": sps * flops / 1e12}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=384)
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--channels", type=int, default=48, help="latent channels")
    p.add_argument("--latent", type=int, default=16, help="latent side (square)")
    p.add_argument("--patch", type=int, default=1)
    p.add_argument("--text-dim", type=int, default=576)
    p.add_argument("--text-tokens", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--out", default="benchmarks/out/model_throughput.json")
    a = p.parse_args()
    a.dtype = getattr(torch, a.dtype)
    tokens = (a.latent // a.patch) ** 2
    print(f"width {a.width}, depth {a.depth}, heads {a.heads}, {tokens} image tokens, {a.text_tokens} text tokens, "
          f"batch {a.batch}, {a.device}, {a.dtype}, torch threads {torch.get_num_threads()}")
    results = [measure("deepfusion DiT", build_ours, a), measure("diffusers SD3Transformer2DModel", build_sd3, a)]
    for r in results:
        print(f"  {r['model']:32s} {r['params'] / 1e6:8.1f}M params  {r['train_gflop_per_sample']:8.1f} GFLOP/sample  "
              f"{r['samples_per_s']:8.2f} samples/s  {r['achieved_tflops']:.3f} TFLOP/s")
    ours, sd3 = results
    ratio = ours["samples_per_s"] / sd3["samples_per_s"]
    per_flop = ours["achieved_tflops"] / sd3["achieved_tflops"]
    print(f"ratio ours/SD3: {ratio:.2f}x samples/s, {per_flop:.2f}x achieved FLOP/s")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()}, "results": results,
                                       "ratio_samples_per_s": ratio, "ratio_flops_per_s": per_flop}, indent=1))


if __name__ == "__main__":
    main()
