"""`deepfusion train` and `deepfusion sample`: the DeepSpeed trainer and inference from its checkpoints."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from jobs.commands import CommandError, config_path

def _train(args: argparse.Namespace) -> int:
    config = config_path("train", args.config)
    if args.nproc > 1:  # several processes on this machine: torchrun, one rank per process
        from trainer.train import free_port

        port = free_port()
        env = {**os.environ}
        env.setdefault("OMP_NUM_THREADS", "1")  # else every rank spawns a thread per core (much slower on CPU)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc),
               "--master_addr", "127.0.0.1", "--master_port", str(port),
               "-m", "trainer.train", "--config", config, *args.overrides]
        return subprocess.call(cmd, env=env)
    from trainer.checkpoint import CheckpointMismatch
    from trainer.config import load_config
    from trainer.guard import SpikeGuardAbort
    from trainer.train import train

    try:
        summary = train(load_config(config, args.overrides))
    except (CheckpointMismatch, SpikeGuardAbort) as e:
        raise CommandError(str(e)) from None
    print(f"trained {summary['steps']} steps ({summary['images']} images, {summary['skipped_steps']} skipped)")
    for name in ("checkpoint", "sample_grid", "metrics", "tensorboard"):
        print(f"  {name:12s} {summary[name]}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from trainer.sampling import load_pipeline, to_pil

    pipe = load_pipeline(args.checkpoint)
    size = tuple(int(v) for v in args.size.split("x")) if args.size else None
    prompts = [p for p in args.prompt for _ in args.seeds]
    seeds = args.seeds * len(args.prompt)
    images = pipe.generate(prompts, seeds, steps=args.steps, guidance=args.guidance, size=size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, (image, prompt, seed) in enumerate(zip(images, prompts, seeds)):
        path = out / f"{i:03d}_seed{seed}.png"
        to_pil(image).save(path)
        print(f"{path}  {prompt!r}")
    return 0


def register(sub, formatter) -> None:
    p = sub.add_parser(
        "train",
        help="train the deep-fusion DiT on a dataset's committed shards (DeepSpeed)",
        description="Train on committed shards joined with caption versions. Counted in optimizer steps of "
        "global_batch images; re-running the same command resumes from the latest checkpoint in run_dir "
        "(a checkpoint from another config is refused). Outputs in run_dir: metrics.jsonl, tensorboard/, "
        "samples/step_*.png, checkpoints/step_*/ (with ema/ safetensors for `deepfusion sample`).\n\n"
        "Several processes: --nproc N here, or torchrun/deepspeed with `-m trainer.train` across nodes.",
        epilog="example: deepfusion train --config small data.root=/data/ds data.caption_versions=[vlm1,alt] "
        "steps=5000 optim.lr=3e-4 deepspeed.zero_stage=2",
        formatter_class=formatter,
    )
    p.add_argument("--config", default="small", help="a YAML file, or a bundled config name (jobs/configs/train/)")
    p.add_argument("--nproc", type=int, default=1, help="processes on this machine (torchrun)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides (values parsed as YAML)")
    p.set_defaults(run=_train)

    s = sub.add_parser(
        "sample",
        help="generate images from a training checkpoint (EMA weights)",
        description="CHECKPOINT is a run dir (its latest checkpoint) or a checkpoints/step_* folder. One PNG "
        "per prompt and seed; the same seed gives the same image.",
        epilog='example: deepfusion sample runs/train --prompt "a red circle" --prompt "two blue squares" '
        "--seeds 0 1 2 --out /tmp/samples",
        formatter_class=formatter,
    )
    s.add_argument("checkpoint")
    s.add_argument("--prompt", action="append", required=True, help="repeat for several prompts")
    s.add_argument("--seeds", type=int, nargs="+", default=[0])
    s.add_argument("--steps", type=int, default=32, help="Heun sampler steps")
    s.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale")
    s.add_argument("--size", default="", help="HxW in pixels (default: the training resolution)")
    s.add_argument("--out", default="samples", help="output folder")
    s.set_defaults(run=_sample)
