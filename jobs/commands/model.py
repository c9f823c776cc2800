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


def _info(args: argparse.Namespace) -> int:
    from model import describe, get_preset

    d = describe(get_preset(args.preset))
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
    p = gsub.add_parser("info", help="one preset in detail", formatter_class=formatter,
                        description="Example: deepfusion model info small --json")
    p.add_argument("preset", help="tiny | small | base | pgv3")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=_info)
