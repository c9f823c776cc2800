"""What every Ray job entrypoint (`python -m jobs.<job>`) shares: arguments, logging, exit codes.

    python -m jobs.<job> --config embedded|production|FILE [--summary-json F] key=value ...

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


def job_main(prog: str, doc: str, run: Callable[[str, list[str]], dict], describe: Callable[[dict], str],
             argv: list[str] | None = None, known_errors: tuple[type[BaseException], ...] = ()) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="embedded", help="a YAML file or a bundled profile name")
    parser.add_argument("--summary-json", help="also write the run summary to this file")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from datapipe.contract import ContractError

    try:
        summary = run(args.config, args.overrides)
    except (ContractError, FileNotFoundError, ValueError, *known_errors) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    print(describe(summary))
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary, indent=1) + "\n")
    return 0
