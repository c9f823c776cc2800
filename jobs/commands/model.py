"""`deepfusion model info|list`: what a model preset is, in parameters and FLOPs, without building it."""

from __future__ import annotations

import argparse
import json


def _list(args: argparse.Namespace) -> int:
    from model import PRESETS, describe

    for name, preset in PRESETS.items():
        d = describe(preset)
        print(f"{name:6s} {d['dit_params'] / 1e6:10.1f}M DiT params  {d['dit_train_gflops_per_sample']:12.1f} "
              f"train GFLOP/sample  {preset.notes}")
    return 0


def _resolve(name: str):
    """A preset by name, or the model a training config (a bundled profile or a YAML file) builds."""
    from dataclasses import replace

    from model import PRESETS, get_preset

    if name in PRESETS:
        return get_preset(name)
    from jobs.profiles import config_path, profiles
    from trainer.config import load_config
    from trainer.train import model_configs

    try:
        path = config_path("train", name)
    except FileNotFoundError:
        raise ValueError(f"unknown model preset {name!r}: not one of {', '.join(PRESETS)}, and not a training "
                         f"config ({', '.join(profiles('train'))} or a YAML file)") from None
    cfg = load_config(path)
    dit, text, codec, _ = model_configs(cfg)
    preset = get_preset(cfg.model.preset)
    res = cfg.data.resolution
    return replace(preset, name=f"{name} (train config on preset {preset.name})", dit=dit, text=text, codec=codec,
                   resolution=(res, res), latent_factor=codec.factor if codec.kind == "pixels" else preset.latent_factor)


def _info(args: argparse.Namespace) -> int:
    from model import describe

    d = describe(_resolve(args.preset))
    if args.json:
        print(json.dumps(d, indent=1))
        return 0
    for key, value in d.items():
        if key == "dit":
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, int) and value > 10_000:
            value = f"{value:,}"
        print(f"{key:32s} {value}")
    return 0


def register(sub, formatter) -> None:
    group = sub.add_parser(
        "model",
        help="inspect model presets (parameters, FLOPs, the LLM each mirrors)",
        description="Presets size the DiT against its text encoder. `pgv3` mirrors Llama-3-8B exactly: one DiT "
                    "block per LLM layer, same width and heads. Nothing is built or loaded: parameters are "
                    "counted on the meta device and FLOPs analytically.",
        formatter_class=formatter,
    )
    gsub = group.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)
    p = gsub.add_parser("list", help="one line per preset", formatter_class=formatter,
                        description="One line per model preset: DiT parameters, the LLM it reads, resolution "
                        "and training FLOPs per image. `deepfusion model info PRESET` shows one in detail; "
                        "a training config picks one with model.preset=NAME.",
                        epilog="example: deepfusion model list")
    p.set_defaults(run=_list)
    p = gsub.add_parser("info", help="one preset (or the model of a training config) in detail",
                        formatter_class=formatter,
                        description="Parameters, FLOPs and which LLM hidden state each DiT block reads (printed "
                        "from the model's own layer map) for a preset, or for the model a training config "
                        "builds (a bundled profile such as demo, or a YAML file).",
                        epilog="examples: deepfusion model info small --json    deepfusion model info demo")
    p.add_argument("preset", help="tiny | small | base | pgv3, or a training config (demo, small, FILE.yaml)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=_info)
