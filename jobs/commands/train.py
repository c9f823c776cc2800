"""`deepfusion train` and `deepfusion sample`: the DeepSpeed trainer and inference from its checkpoints."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from jobs.errors import CommandError
from jobs.grammar import epilog, settings, split
from jobs.profiles import config_path

TRAIN_EXAMPLES = """\
examples:
  deepfusion train --config small data.root=/data/ds data.caption_versions=[vlm1,alt] steps=5000 \\
      optim.lr=3e-4 deepspeed.zero_stage=2
  deepfusion train --config small data.root=/data/ds nproc=2      # two processes (torchrun) on this machine

Besides the keys below, nproc=N starts N processes here (torchrun); across nodes run
`torchrun --nnodes ... -m trainer.train --config ...` yourself."""

SAMPLE_EXAMPLES = """\
example: deepfusion sample runs/train "prompts=[a red circle,two blue squares]" seeds=[0,1,2] out=/tmp/samples"""


def _train(args: argparse.Namespace) -> int:
    config = config_path("train", args.config)
    nproc = 1
    overrides = []
    for item in args.overrides:
        if item.startswith("nproc="):
            nproc = int(item.split("=", 1)[1])
        else:
            overrides.append(item)
    from trainer.config import load_config

    load_config(config, overrides)  # every key checked here, before any process starts
    if nproc > 1:  # several processes on this machine: torchrun, one rank per process
        from trainer.train import free_port

        env = {**os.environ}
        env.setdefault("OMP_NUM_THREADS", "1")  # else every rank spawns a thread per core (much slower on CPU)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
               "-m", "trainer.train", "--config", config, *overrides]
        return subprocess.call(cmd, env=env)
    from trainer.checkpoint import CheckpointMismatch
    from trainer.guard import SpikeGuardAbort
    from trainer.train import train

    try:
        summary = train(load_config(config, overrides))
    except (CheckpointMismatch, SpikeGuardAbort) as e:
        raise CommandError(str(e)) from None
    print(f"trained {summary['steps']} steps ({summary['images']} images, {summary['skipped_steps']} skipped)")
    for name in ("checkpoint", "sample_grid", "metrics", "tensorboard"):
        print(f"  {name:12s} {summary[name]}")
    return 0


@dataclass
class SampleSettings:
    prompts: list[str] = field(default_factory=list)  # one image per prompt and seed
    seeds: list[int] = field(default_factory=lambda: [0])  # the same seed gives the same image
    steps: int = 32  # Heun sampler steps
    guidance: float = 3.0  # classifier-free guidance scale
    size: str = ""  # HxW in pixels (default: the training resolution)
    out: str = "samples"  # output folder


def _sample(args: argparse.Namespace) -> int:
    positionals, overrides = split(args.args)
    if len(positionals) != 1:
        raise CommandError(f"sample: give one run dir or checkpoint, then key=value settings (got {positionals})")
    s = settings(SampleSettings, overrides)
    if not s.prompts:
        raise CommandError('sample: give prompts=[...] (e.g. "prompts=[a red circle]")')
    from trainer.sampling import load_pipeline, to_pil  # torch and diffusers: after the settings are checked

    pipe = load_pipeline(positionals[0])
    size = tuple(int(v) for v in s.size.lower().split("x")) if s.size else None
    prompts = [p for p in s.prompts for _ in s.seeds]
    seeds = s.seeds * len(s.prompts)
    images = pipe.generate(prompts, seeds, steps=s.steps, guidance=s.guidance, size=size)
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, (image, prompt, seed) in enumerate(zip(images, prompts, seeds)):
        path = out / f"{i:03d}_seed{seed}.png"
        to_pil(image).save(path)
        print(f"{path}  {prompt!r}")
    return 0


def register(sub, formatter) -> None:
    from trainer.config import TrainConfig

    p = sub.add_parser(
        "train",
        help="train the deep-fusion DiT on a dataset's committed shards (DeepSpeed)",
        description="Train on committed shards joined with caption versions. Counted in optimizer steps of "
        "global_batch images; re-running the same command resumes from the latest checkpoint in run_dir "
        "(a checkpoint from another config is refused). Outputs in run_dir: metrics.jsonl, tensorboard/, "
        "samples/step_*.png, checkpoints/step_*/ (with ema/ safetensors for `deepfusion sample`).",
        epilog=epilog(TRAIN_EXAMPLES, TrainConfig), formatter_class=formatter,
    )
    p.add_argument("--config", default="small", help="a YAML file, or a bundled config name (jobs/configs/train/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="settings (listed below), and nproc=N")
    p.set_defaults(run=_train)

    s = sub.add_parser(
        "sample",
        help="generate images from a training checkpoint (EMA weights)",
        description="RUN is a run dir (its latest checkpoint) or a checkpoints/step_* folder. One PNG "
        "per prompt and seed; the same seed gives the same image.",
        epilog=epilog(SAMPLE_EXAMPLES, SampleSettings), formatter_class=formatter,
    )
    s.add_argument("args", nargs="*", metavar="RUN [key=value ...]", help="a run dir or checkpoint, then settings")
    s.set_defaults(run=_sample)
