"""`deepfusion dataset verify|info`: integrity checks and a summary of a dataset root."""

from __future__ import annotations

import argparse
import json
from collections import Counter


def _verify(args: argparse.Namespace) -> int:
    from datapipe.contract import verify_dataset

    report = verify_dataset(args.root)
    if args.json:
        print(json.dumps({
            "root": report.root, "ok": report.ok, "shards": report.shards, "samples": report.samples,
            "rejects": report.rejects, "captions": report.caption_coverage,
            "problems": [p.__dict__ for p in report.problems],
        }, indent=1))
        return 0 if report.ok else 1
    print(f"{report.root}: {report.shards} shards, {report.samples} samples, {report.rejects} rejects")
    for version, cov in report.caption_coverage.items():
        parent = f" (overlays {cov['parent']})" if cov["parent"] else ""
        print(f"  captions/{version}{parent}: {cov['shards_done']}/{cov['shards_total']} shards, {cov['rows']} rows")
    for problem in report.problems:
        print(problem)
    errors, warnings = len(report.errors), len(report.problems) - len(report.errors)
    print(("OK" if report.ok else "FAILED") + f": {errors} error(s), {warnings} warning(s)")
    return 0 if report.ok else 1


def _info(args: argparse.Namespace) -> int:
    from datapipe.contract import Dataset

    ds = Dataset(args.root)
    m = ds.manifest
    print(f"{ds.storage.uri}: schema v{m.schema_version}, {len(m.shards)} shards, {m.samples} samples, {m.rejects} rejects")
    reasons: Counter = Counter()
    for entry in m.shards:
        t = ds.rejects(entry.id)
        reasons.update(f"{s}/{r}" for s, r in zip(t.column("stage").to_pylist(), t.column("reason").to_pylist()))
    for reason, n in reasons.most_common():
        print(f"  rejected {reason}: {n}")
    for version in ds.caption_versions():
        cs = ds.captions(version)
        print(f"  captions/{version}: {len(cs.chain[0].shards)} shards" + (f", overlays {cs.chain[0].parent}" if cs.chain[0].parent else ""))
    return 0


def register(sub, formatter) -> None:
    group = sub.add_parser(
        "dataset",
        help="check and summarise a dataset root (local path or fsspec URI)",
        description="A dataset root holds manifest.json, shards/, rejects/ and captions/ (the README's Layout section).",
        formatter_class=formatter,
    )
    gsub = group.add_subparsers(dest="dataset_command", metavar="SUBCOMMAND", required=True)
    verify = gsub.add_parser(
        "verify",
        help="check integrity; non-zero exit on any error",
        description="Checks that every manifest shard is present with the recorded size and sha256, tar "
        "members match sidecar rows, keys are unique across the dataset, samples + rejects == inputs, "
        "and which shards each caption version covers. Leftovers of killed writers are warnings.",
        epilog="example: deepfusion dataset verify /data/laion-subset   (or s3://bucket/dataset)",
        formatter_class=formatter,
    )
    verify.add_argument("root", help="dataset root: a path or an fsspec URI")
    verify.add_argument("--json", action="store_true", help="machine-readable report")
    verify.set_defaults(run=_verify)
    info = gsub.add_parser(
        "info", help="shards, samples, rejects by reason, caption versions", formatter_class=formatter,
        description="A quick summary from the manifest and the rejects files: committed shards, samples, "
        "rejects by stage and reason, and the caption versions with the shards each covers. For the full "
        "statistics (histograms, scores, caption words, progress) run `deepfusion stats ROOT`.",
        epilog="example: deepfusion dataset info runs/curated")
    info.add_argument("root", help="dataset root: a path or an fsspec URI")
    info.set_defaults(run=_info)
