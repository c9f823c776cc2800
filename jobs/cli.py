"""`deepfusion`: the one command line for every job. Run `deepfusion --help` to start.

Each command group lives in its own module under jobs/commands/ and registers itself here; the
top-level help lists only commands that are built. Exit codes: 0 success, 1 the job ran and found
problems or failed (with a message, never a bare traceback for a known error), 2 bad usage.
"""

from __future__ import annotations

import argparse
import logging
import sys

from common import compat

compat.install()  # also done by the venv's .pth file; harmless twice, needed if run elsewhere

from jobs import caption, curate, stats  # noqa: E402
from jobs.commands import dashboard, dataset, demo, model, quality, scenes, trace, train  # noqa: E402
from jobs.commands import eval as eval_  # noqa: E402
from jobs.errors import CommandError  # noqa: E402
from jobs.grammar import normalize  # noqa: E402

GROUPS = [demo, scenes, curate, caption, quality, stats, dashboard, dataset, trace, model, train, eval_]

DESCRIPTION = """\
deepfusion turns image URL lists into a trained deep-fusion text-to-image model:

  URL list --curate--> dataset (shards + sidecars + manifest) <--caption-- VLM captions
                                    |
                                    +--train--> deep-fusion DiT on a frozen LLM

Every stage reads and writes the same on-disk dataset contract, so each can run (and resume)
on its own. Start with the synthetic scenes corpus, which comes with its own faulty web server:

  deepfusion scenes make /tmp/scenes n=200 faults=0.1
  deepfusion scenes serve /tmp/scenes &
  deepfusion dataset verify /path/to/dataset
  deepfusion trace /path/to/dataset KEY_OR_URL     # what happened to one row
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepfusion", description=DESCRIPTION, formatter_class=HelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in GROUPS:
        group.register(sub, HelpFormatter)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(normalize(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    from datapipe.contract import ContractError

    try:
        return int(args.run(args) or 0)
    except (CommandError, ContractError, FileNotFoundError, ValueError) as e:
        print(f"deepfusion {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
