"""What every Ray job (curate, caption, stats) shares: its `python -m jobs.<job>` entry point and its
`deepfusion <job>` command, the same arguments for both.

    python -m jobs.<job> --config embedded|production|FILE [--summary-json F] key=value ...
    deepfusion <job>     --config embedded|production|FILE [--summary-json F] key=value ...

Inside `ray job submit` the driver joins the job's cluster; elsewhere it starts a local Ray.
Exit code 0: done (or nothing left to do); 1: the job failed with a one-line message.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable

from .grammar import epilog, normalize

Run = Callable[[str, list[str]], dict]


def _write_summary(path: str | None, summary: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(summary, indent=1, default=str) + "\n")


def stop_ray() -> None:
    """Stop this process's Ray (its local instance, or its connection to a cluster) once the job's
    summary is out. Ray does it at exit anyway, but first sleeps 0.5 s so that worker log lines
    reach the driver's terminal; these jobs do not forward worker logs (log_to_driver=False)."""
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


def job_main(prog: str, doc: str, run: Run, describe: Callable[[dict], str], argv: list[str] | None = None,
             known_errors: tuple[type[BaseException], ...] = ()) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="embedded", help="a YAML file or a bundled profile name")
    parser.add_argument("--summary-json", help="also write the run summary to this file")
    parser.add_argument("overrides", nargs="*", help="key=value settings")
    args = parser.parse_args(normalize(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from datapipe.contract import ContractError

    try:
        summary = run(args.config, args.overrides)
    except (ContractError, FileNotFoundError, ValueError, *known_errors) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    finally:
        stop_ray()
    print(describe(summary))
    _write_summary(args.summary_json, summary)
    return 0


def add_job_command(sub, formatter, name: str, help: str, doc: str, examples: str, settings_cls, run: Run,
                    describe: Callable[[dict], str], check: Callable[[list[str]], list[str]] | None = None) -> None:
    """`deepfusion NAME`: the job run embedded, with the same settings as its Ray entry point."""

    def handler(args: argparse.Namespace) -> int:
        overrides = check(args.overrides) if check else args.overrides
        try:
            summary = run(args.config, overrides)
        finally:
            stop_ray()
        print(describe(summary))
        _write_summary(args.summary_json, summary)
        return 0

    p = sub.add_parser(name, help=help, description=doc, epilog=epilog(examples, settings_cls), formatter_class=formatter)
    p.add_argument("--config", default="embedded", help="a YAML file or a bundled profile name")
    p.add_argument("--summary-json", help="also write the run summary to this file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="settings (listed below)")
    p.set_defaults(run=handler)
