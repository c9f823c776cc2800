"""`deepfusion trace ROOT KEY_OR_URL [run=RUN_DIR] [--json]`: what happened to one row, URL to training step."""

from __future__ import annotations

import argparse
import json

from jobs.grammar import epilog, settings, split

EXAMPLES = """\
examples:
  deepfusion trace /data/ds 000012000345                  # a key: <shard, 6 digits><row, 6 digits>
  deepfusion trace /data/ds "https://example.com/cat.jpg"  # every row with this URL
  deepfusion trace /data/ds 000012000345 run=runs/train   # + the training steps that drew it
  deepfusion trace /data/ds 000012000345 --json           # the same, machine-readable

For one input row: its input file and row number; the download result; each filter's verdict and
value; dedup (which key it duplicates, or which later rows were dropped as its duplicates); its
shard; every caption version's status, prompt set and six texts (overlays resolved) with the caption
QA score when there is one; and with run=..., the steps whose batch holds it (rank, micro-step,
caption level and version), replayed by the trainer's deterministic planner, not read from logs.
A key reads one shard's sidecar and rejects file; a URL is looked up in the url column of the
committed sidecars and rejects files with DuckDB."""


def _trace(args: argparse.Namespace) -> int:
    from jobs.errors import CommandError
    from jobs.trace import TraceConfig, format_trace, trace

    # a URL may hold "=" in its query string: anything with "://" before its first "=" is the URL
    urls = [a for a in args.args if "://" in a.split("=", 1)[0]]
    positionals, overrides = split([a for a in args.args if a not in urls])
    positionals += urls
    if len(positionals) != 2:
        raise CommandError("trace: give a dataset root and one key or URL (quote a URL with & in it), "
                           f"then key=value settings; got {positionals}")
    root, query = positionals
    result = trace(root, query, settings(TraceConfig, overrides))
    print(json.dumps(result, indent=1, default=str) if args.json else format_trace(result))
    return 0 if result["rows"] else 1


def register(sub, formatter) -> None:
    from jobs.trace import TraceConfig

    p = sub.add_parser("trace", help="one row's journey: input, download, filters, dedup, shard, captions, training steps",
                       description=__doc__, epilog=epilog(EXAMPLES, TraceConfig), formatter_class=formatter)
    p.add_argument("--json", action="store_true", help="print the trace as JSON")
    p.add_argument("args", nargs="*", metavar="ROOT KEY_OR_URL [key=value ...]",
                   help="the dataset root, a key or a URL, then settings such as run=RUN_DIR")
    p.set_defaults(run=_trace)
