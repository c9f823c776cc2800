"""`deepfusion scenes make|dataset|serve`: the synthetic scenes corpus and its fault-injecting server."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from jobs.grammar import epilog, settings, split


@dataclass
class ServeSettings:
    host: str | None = None  # default: the corpus base URL's host
    port: int | None = None  # default: the corpus base URL's port
    workers: int = 1  # server processes sharing the port


@dataclass
class DatasetSettings:
    shard_size: int = 256  # samples per shard


def _one(args, what: str, n: int = 1) -> tuple[list[str], list[str]]:
    from jobs.errors import CommandError

    positionals, overrides = split(args.args)
    if len(positionals) != n:
        raise CommandError(f"scenes {what}: expected {n} folder argument(s) before the key=value settings, got "
                           f"{positionals}")
    return positionals, overrides


def _make(args: argparse.Namespace) -> int:
    from scenes import CorpusConfig, make_corpus

    (out,), overrides = _one(args, "make")
    cfg = settings(CorpusConfig, overrides)
    summary = make_corpus(out, cfg)
    print(f"wrote {summary['rows']} URL rows ({summary['scenes']} scenes) to {out}")
    print(f"  URL list:     {out}/urls.parquet   (columns URL, TEXT, WIDTH, HEIGHT, scene_id)")
    print(f"  ground truth: {out}/ground_truth.parquet")
    print(f"  expected outcomes: {summary['expect']}")
    print(f"serve it with: deepfusion scenes serve {out}")
    return 0


def _dataset(args: argparse.Namespace) -> int:
    from scenes.dataset import ingest_corpus

    (corpus, root), overrides = _one(args, "dataset", 2)
    s = settings(DatasetSettings, overrides)
    counts = ingest_corpus(corpus, root, shard_size=s.shard_size)
    print(f"wrote {counts['samples']} samples in {counts['shards']} shards to {root} "
          f"(caption versions: reference, alt); {counts['skipped']} non-ok rows left out")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from scenes import serve_forever

    (folder,), overrides = _one(args, "serve")
    s = settings(ServeSettings, overrides)
    serve_forever(folder, host=s.host, port=s.port, workers=s.workers)
    return 0


def register(sub, formatter) -> None:
    from scenes import CorpusConfig
    from scenes.faults import FAULTS

    group = sub.add_parser(
        "scenes",
        help="synthetic scenes corpus with ground truth, and a fault-injecting image server",
        description="Synthetic images with a known scene graph (shapes, colours, counts, positions, "
        "text), an alt text and six reference captions each: the test oracle and the demo's data "
        "(the `scenes` package).",
        formatter_class=formatter,
    )
    gsub = group.add_subparsers(dest="scenes_command", metavar="SUBCOMMAND", required=True)

    faults = "\n".join(f"  {f.name:16} -> {f.expect:8} {f.what}" for f in FAULTS.values())
    make = gsub.add_parser(
        "make",
        help="write a URL list, base images and ground truth",
        description="Write n URL rows (LAION-style parquet) with their images and ground truth into OUT.\n\n"
        "Faulty rows cycle through these faults (name -> what a pipeline must make of it):\n" + faults,
        epilog=epilog("example: deepfusion scenes make /tmp/scenes n=1000 faults=0.1 duplicates=0.05 "
                      "sizes=[[64,64],[96,64]]", CorpusConfig),
        formatter_class=formatter,
    )
    make.add_argument("args", nargs="*", metavar="OUT [key=value ...]", help="the output folder, then settings")
    make.set_defaults(run=_make)

    ds = gsub.add_parser(
        "dataset",
        help="write a corpus's good rows straight into a captioned dataset root (no download)",
        description="The base renders become committed shards, with two caption versions: `reference` "
        "(six ground-truth captions) and `alt` (the alt text). For trainer experiments and tests; "
        "the curation job produces the same layout from the URL list.",
        epilog=epilog("example: deepfusion scenes dataset /tmp/scenes /tmp/scenes-ds shard_size=256", DatasetSettings),
        formatter_class=formatter,
    )
    ds.add_argument("args", nargs="*", metavar="CORPUS ROOT [key=value ...]",
                    help="a folder written by `scenes make`, the dataset root to write, then settings")
    ds.set_defaults(run=_dataset)

    serve = gsub.add_parser(
        "serve",
        help="serve a corpus over HTTP on loopback, faults included",
        description="Serve a corpus folder at the host and port of its base URL (or host=/port=).",
        epilog=epilog("example: deepfusion scenes serve /tmp/scenes workers=2", ServeSettings),
        formatter_class=formatter,
    )
    serve.add_argument("args", nargs="*", metavar="FOLDER [key=value ...]", help="a corpus folder, then settings")
    serve.set_defaults(run=_serve)
