"""Ray job entrypoint for curation; the same job `deepfusion curate` runs embedded.

    python -m jobs.curate --config jobs/configs/curate/embedded.yaml input.paths=[urls.parquet] output=/data/ds
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python -m jobs.curate --config jobs/configs/curate/production.yaml output=/data/ds

Inside `ray job submit` the driver joins the job's cluster; elsewhere it starts a local Ray.
Exit code 0: done (or nothing left to do); 1: the job failed with a message.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

def run(config: str, overrides: list[str]) -> dict:
    from datapipe.config import load_curate_config
    from datapipe.curate import curate

    from jobs.commands import config_path

    return curate(load_curate_config(config_path("curate", config), overrides))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.curate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="embedded", help="a YAML file or a bundled profile name")
    parser.add_argument("--summary-json", help="also write the run summary to this file")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from datapipe.contract import ContractError
    from datapipe.curate import format_summary

    try:
        summary = run(args.config, args.overrides)
    except (ContractError, FileNotFoundError, ValueError) as e:
        print(f"curate: error: {e}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
