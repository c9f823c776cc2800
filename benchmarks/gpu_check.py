"""One command for the GPU figures: our training step vs a bare torch loop, MFU, memory, sampling.

    python benchmarks/gpu_check.py --out gpu_check.jsonl           # on one NVIDIA GPU, < 8 minutes
    python benchmarks/gpu_check.py --dry-run --out /tmp/dry.jsonl  # tiny shapes on the CPU, seconds (CI)

What the machine needs: CUDA torch (2.11 or newer), transformers, safetensors, numpy, pyyaml (a
transformers dependency) and the wheels `benchmarks/gpu_wheels.sh` downloads: deepspeed built with
no ops and diffusers, with their small dependencies (hjson, ninja, py-cpuinfo, pydantic, msgpack,
einops, nvidia-ml-py, importlib-metadata, zipp), about 15 MB in all; no network, no weights.
Install them with `pip install --no-index --no-deps WHEEL_DIR/*.whl` and run from a checkout.

For each size the text encoder is a randomly initialised decoder-only LLM of a real shape (the
Llama-3.2-1B and Llama-3-8B configs below, built from the config in bf16); the DiT is a preset
(`base` at 256 px on the 1B encoder; `pgv3` cut to 8 blocks at 512 px on the 8B encoder, with
activation checkpointing). Latents are random tensors of the preset's shape (the VAE is not part
of the step: a production run caches latents or adds the VAE's encode). Both loops run on the same
pre-drawn batches, token ids included:
  ours  the trainer's step: DeepSpeed ZeRO-2 bf16 engine, the spike guard's GuardedAdamW, EDM loss,
        frozen LLM forward (the layers the DiT reads), EMA update; SDPA (flash) attention;
  bare  the same LLM forward, DiT and loss with torch.optim.AdamW (fused on CUDA) under bf16
        autocast: no DeepSpeed, no guard, no EMA. The upper bound.
Then the sampler (EDM Heun, classifier-free guidance) on the EMA model: images/s.

FLOPs are counted by formula and printed: the DiT's forward by model.presets.dit_forward_flops
(x3 for forward + backward), the LLM's forward as 2 x its non-embedding parameters x tokens plus
4 x layers x tokens^2 x width for attention. MFU = achieved FLOP/s / the GPU's dense bf16 peak
(a table by device name, or --peak-tflops). One table, and one JSON line per row written to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EXTRA_WHEELS = ("deepspeed", "diffusers")  # beyond torch / transformers / safetensors / numpy

LLAMA_1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072, rope_theta=500000.0,
                rms_norm_eps=1e-5, tie_word_embeddings=True)
LLAMA_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
                rms_norm_eps=1e-5, tie_word_embeddings=False)
TINY_LLM = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=512, max_position_embeddings=256)

# name -> preset, LLM config, pixels, DiT depth override, micro batch, activation checkpointing
SIZES = {
    "base@256 + Llama-3.2-1B": ("base", LLAMA_1B, 256, None, 32, False),
    "pgv3[8 blocks]@512 + Llama-3-8B": ("pgv3", LLAMA_8B, 512, 8, 8, True),
}
DRY = {"tiny@32 + tiny Llama (dry run)": ("tiny", TINY_LLM, 32, None, 2, True)}

# dense bf16 tensor-core peaks, TFLOP/s (vendor data sheets, SXM parts)
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "H800": 989.4, "A100": 312.0, "A800": 312.0, "L40S": 362.1,
               "L40": 181.0, "A10G": 70.0, "L4": 121.0, "RTX 4090": 165.2, "RTX 6000 Ada": 364.2}


def check_imports() -> None:
    missing = []
    for name in ("torch", "transformers", "safetensors", "numpy", "yaml", *EXTRA_WHEELS):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise SystemExit(f"gpu_check: missing {missing}; benchmarks/gpu_wheels.sh downloads the wheels, "
                         "install them with pip install --no-index --no-deps WHEEL_DIR/*.whl")


def init_single_process(cuda: bool) -> None:
    import deepspeed
    import torch.distributed as dist

    if dist.is_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)}.items():
        os.environ.setdefault(key, value)
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", verbose=False)


def llm_forward_flops(cfg: dict, tokens: int) -> int:
    """Per sample: 2 x non-embedding parameters x tokens + attention scores and weighted sums."""
    d, L, f = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]
    kv = d * cfg["num_key_value_heads"] // cfg["num_attention_heads"]
    per_layer = d * d + 2 * d * kv + d * d + 3 * d * f  # q, k, v, o, gate/up/down
    return 2 * L * per_layer * tokens + 4 * L * tokens * tokens * d


def build(name: str, spec: tuple, device, dtype):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from model import DeepFusionDiT, dit_forward_flops, get_preset

    preset_name, llm_cfg, pixels, depth, micro, checkpointing = spec
    preset = get_preset(preset_name)
    torch.manual_seed(0)
    with torch.device(device):
        llm = LlamaForCausalLM(LlamaConfig(**llm_cfg)).to(dtype).eval().requires_grad_(False)
    dit_cfg = replace(preset.dit, text_dims=[llm_cfg["hidden_size"]], llm_layers=[llm_cfg["num_hidden_layers"]])
    if depth:
        dit_cfg = replace(dit_cfg, depth=depth)
    latent = (pixels // preset.latent_factor, pixels // preset.latent_factor)
    tokens = preset.text_tokens
    flops = {"dit_forward": dit_forward_flops(dit_cfg, latent, tokens), "llm_forward": llm_forward_flops(llm_cfg, tokens)}
    flops["per_image_train"] = 3 * flops["dit_forward"] + flops["llm_forward"]
    make_dit = lambda: DeepFusionDiT(dit=dit_cfg.to_dict())  # noqa: E731 - the same init for both loops (seeded)
    return llm, make_dit, dit_cfg, latent, tokens, micro, checkpointing, flops


def text_states(llm, dit, ids, mask):
    import torch

    with torch.no_grad():
        out = llm.model(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True, use_cache=False)
        return torch.stack([out.hidden_states[i] for i in dit.text_layers[0]]), mask


def batches(n: int, micro: int, channels: int, latent, tokens: int, vocab: int, device) -> list:
    import torch

    g = torch.Generator(device="cpu").manual_seed(1)
    out = []
    for _ in range(n):
        x0 = torch.randn(micro, channels, *latent, generator=g).to(device)
        ids = torch.randint(0, vocab, (micro, tokens), generator=g).to(device)
        out.append((x0, ids, torch.ones(micro, tokens, dtype=torch.bool, device=device)))
    return out


def synchronize(cuda: bool) -> None:
    import torch

    if cuda:
        torch.cuda.synchronize()


def reset_memory(cuda: bool) -> None:
    import torch

    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gb(cuda: bool) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None


def run_ours(llm, make_dit, micro, checkpointing, data, warmup, cuda, device) -> tuple[float, float | None]:
    import deepspeed
    import torch

    from model import EDM
    from trainer.config import EMAConfig
    from trainer.ema import EMA
    from trainer.guard import GuardedAdamW, SpikeGuardConfig

    reset_memory(cuda)
    torch.manual_seed(0)
    dit = make_dit().to(device)
    if checkpointing:
        dit.enable_gradient_checkpointing()
    n_params = sum(p.numel() for p in dit.parameters())
    ema = EMA(dit, EMAConfig())
    optimizer = GuardedAdamW(dit.parameters(), SpikeGuardConfig(), max_grad_norm=1.0, full_numel=n_params, lr=1e-4)
    config = {"train_batch_size": micro, "train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": 1,
              "gradient_clipping": 0.0, "zero_optimization": {"stage": 2}, "bf16": {"enabled": True},
              "zero_allow_untested_optimizer": True, "steps_per_print": 10**9}
    engine, _, _, _ = deepspeed.initialize(model=dit, optimizer=optimizer, config=config)
    edm, images, t0 = EDM(), 0, None
    for i, (x0, ids, mask) in enumerate(data):
        if i == warmup:
            synchronize(cuda)
            t0 = time.perf_counter()
        hidden, m = text_states(llm, engine.module, ids, mask)
        losses, _ = edm.loss(engine, x0, [hidden], [m], generator=torch.Generator(device=device).manual_seed(i))
        engine.backward(losses.mean())
        engine.step()
        images += micro
        ema.update(engine.module, images, micro)
    synchronize(cuda)
    seconds = (time.perf_counter() - t0) / (len(data) - warmup)
    peak = peak_gb(cuda)
    del engine, optimizer
    return seconds, peak, ema


def run_bare(llm, make_dit, micro, checkpointing, data, warmup, cuda, device) -> tuple[float, float | None]:
    import torch

    from model import EDM

    reset_memory(cuda)
    torch.manual_seed(0)
    dit = make_dit().to(device).train()
    if checkpointing:
        dit.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(dit.parameters(), lr=1e-4, fused=cuda)
    edm, t0 = EDM(), None
    for i, (x0, ids, mask) in enumerate(data):
        if i == warmup:
            synchronize(cuda)
            t0 = time.perf_counter()
        hidden, m = text_states(llm, dit, ids, mask)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            losses, _ = edm.loss(dit, x0, [hidden], [m], generator=torch.Generator(device=device).manual_seed(i))
        losses.mean().backward()
        torch.nn.utils.clip_grad_norm_(dit.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    synchronize(cuda)
    seconds = (time.perf_counter() - t0) / (len(data) - warmup)
    peak = peak_gb(cuda)
    del dit, optimizer
    return seconds, peak


def run_sampler(llm, ema, micro, latent, channels, tokens, vocab, steps, cuda, device) -> float:
    import torch

    from model import EDM

    net = ema.model.to(device=device, dtype=torch.bfloat16)
    g = torch.Generator(device="cpu").manual_seed(2)
    ids = torch.randint(0, vocab, (micro, tokens), generator=g).to(device)
    mask = torch.ones(micro, tokens, dtype=torch.bool, device=device)
    cond = text_states(llm, net, ids, mask)
    uncond = text_states(llm, net, ids[:, :1], mask[:, :1])
    uncond = (uncond[0].expand(-1, micro, -1, -1), uncond[1].expand(micro, -1))
    edm = EDM()
    noise = torch.randn(micro, channels, *latent, generator=g).to(device)
    edm.sample(net, noise.shape, ([cond[0]], [cond[1]]), ([uncond[0]], [uncond[1]]), steps=2, guidance=4.5, noise=noise)
    synchronize(cuda)
    t = time.perf_counter()
    edm.sample(net, noise.shape, ([cond[0]], [cond[1]]), ([uncond[0]], [uncond[1]]), steps=steps, guidance=4.5, noise=noise)
    synchronize(cuda)
    return micro / (time.perf_counter() - t)


def peak_of(device_name: str, override: float | None) -> float | None:
    if override:
        return override
    for key, value in PEAK_TFLOPS.items():
        if key.lower() in device_name.lower():
            return value
    return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU: checks the script, measures nothing")
    p.add_argument("--out", default="gpu_check.jsonl", help="JSON lines, one per row")
    p.add_argument("--steps", type=int, default=12, help="timed training steps per loop")
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--sample-steps", type=int, default=32)
    p.add_argument("--sizes", default="", help="comma-separated size names (default: all)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, if not in the table")
    a = p.parse_args()
    check_imports()
    import torch

    cuda = torch.cuda.is_available() and not a.dry_run
    if not cuda and not a.dry_run:
        raise SystemExit("gpu_check: no CUDA device; --dry-run checks the script on the CPU")
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    sizes = DRY if a.dry_run else SIZES
    if a.sizes:
        sizes = {k: v for k, v in sizes.items() if k in a.sizes.split(",")}
    steps, warmup, sample_steps = (2, 1, 2) if a.dry_run else (a.steps, a.warmup, a.sample_steps)
    device_name = torch.cuda.get_device_name() if cuda else "cpu (dry run)"
    peak = peak_of(device_name, a.peak_tflops) if cuda else None
    init_single_process(cuda)
    header = {"kind": "header", "device": device_name, "torch": torch.__version__, "cuda": torch.version.cuda,
              "peak_bf16_tflops": peak, "dry_run": a.dry_run,
              "flops": "DiT forward (model.presets.dit_forward_flops) x3 + LLM forward "
                       "(2 x non-embedding params x tokens + 4 x layers x tokens^2 x width), per image"}
    rows = [header]
    print(json.dumps(header), flush=True)
    for name, spec in sizes.items():
        t_build = time.perf_counter()
        llm, make_dit, dit_cfg, latent, tokens, micro, ckpt, flops = build(name, spec, device, torch.bfloat16)
        vocab = spec[1]["vocab_size"]
        data = batches(warmup + steps, micro, dit_cfg.in_channels, latent, tokens, vocab, device)
        ours_s, ours_mem, ema = run_ours(llm, make_dit, micro, ckpt, data, warmup, cuda, device)
        bare_s, bare_mem = run_bare(llm, make_dit, micro, ckpt, data, warmup, cuda, device)
        sample_ips = run_sampler(llm, ema, micro, latent, dit_cfg.in_channels, tokens, vocab, sample_steps, cuda, device)
        for loop, seconds, mem in (("ours", ours_s, ours_mem), ("bare", bare_s, bare_mem)):
            tflops = flops["per_image_train"] * micro / seconds / 1e12
            row = {"kind": "train", "size": name, "loop": loop, "micro_batch": micro, "tokens_text": tokens,
                   "latent": list(latent), "dit_params": sum(x.numel() for x in make_dit().parameters()),
                   "activation_checkpointing": ckpt, "step_s": round(seconds, 4), "images_per_s": round(micro / seconds, 2),
                   "achieved_tflops": round(tflops, 3), "mfu": round(tflops / peak, 4) if peak else None,
                   "peak_memory_gib": mem, "gflops_per_image": round(flops["per_image_train"] / 1e9, 2),
                   "ours_vs_bare": round(bare_s / ours_s, 4)}
            rows.append(row)
            print(json.dumps(row), flush=True)
        row = {"kind": "sample", "size": name, "steps": sample_steps, "guidance": 4.5, "batch": micro,
               "images_per_s": round(sample_ips, 3), "seconds_total": round(time.perf_counter() - t_build, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        del llm, ema, data
        if cuda:
            torch.cuda.empty_cache()
    print(f"\n{'size':34s} {'loop':5s} {'img/s':>9s} {'step s':>8s} {'TFLOP/s':>8s} {'MFU':>6s} {'GiB':>6s} {'ours/bare':>9s}")
    for r in rows:
        if r["kind"] == "train":
            mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
            print(f"{r['size']:34s} {r['loop']:5s} {r['images_per_s']:9.2f} {r['step_s']:8.3f} {r['achieved_tflops']:8.2f} "
                  f"{mfu:>6s} {r['peak_memory_gib'] if r['peak_memory_gib'] is not None else 'n/a':>6} {r['ours_vs_bare']:9.3f}")
        elif r["kind"] == "sample":
            print(f"{r['size']:34s} sampler: {r['images_per_s']:.2f} img/s ({r['steps']} Heun steps, CFG, batch {r['batch']})")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {out} ({device_name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
