"""`deepfusion scenes make|serve`: the synthetic scenes corpus and its fault-injecting server."""

from __future__ import annotations

import argparse


def _make(args: argparse.Namespace) -> int:
    from datapipe.scenes import CorpusConfig, make_corpus

    cfg = CorpusConfig(
        n=args.n,
        seed=args.seed,
        base_url=args.base_url,
        faults=args.faults,
        duplicates=args.duplicates,
        near_duplicates=args.near_duplicates,
        text_probability=args.text_probability,
        max_groups=args.max_groups,
    )
    if args.sizes:
        cfg.sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes.split(",")]
    if args.fault_names:
        cfg.fault_names = args.fault_names.split(",")
    summary = make_corpus(args.out, cfg)
    print(f"wrote {summary['rows']} URL rows ({summary['scenes']} scenes) to {args.out}")
    print(f"  URL list:     {args.out}/urls.parquet   (columns URL, TEXT, WIDTH, HEIGHT, scene_id)")
    print(f"  ground truth: {args.out}/ground_truth.parquet")
    print(f"  expected outcomes: {summary['expect']}")
    print(f"serve it with: deepfusion scenes serve {args.out}")
    return 0


def _dataset(args: argparse.Namespace) -> int:
    from datapipe.scenes.dataset import ingest_corpus

    counts = ingest_corpus(args.corpus, args.root, shard_size=args.shard_size)
    print(f"wrote {counts['samples']} samples in {counts['shards']} shards to {args.root} "
          f"(caption versions: reference, alt); {counts['skipped']} non-ok rows left out")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from datapipe.scenes import serve_forever

    serve_forever(args.folder, host=args.host, port=args.port, workers=args.workers)
    return 0


def register(sub, formatter) -> None:
    from datapipe.scenes.faults import FAULTS

    group = sub.add_parser(
        "scenes",
        help="synthetic scenes corpus with ground truth, and a fault-injecting image server",
        description="Synthetic images with a known scene graph (shapes, colours, counts, positions, "
        "text), an alt text and six reference captions each: the test oracle and the demo's data.",
        formatter_class=formatter,
    )
    gsub = group.add_subparsers(dest="scenes_command", metavar="SUBCOMMAND", required=True)

    faults = "\n".join(f"  {f.name:16} -> {f.expect:8} {f.what}" for f in FAULTS.values())
    make = gsub.add_parser(
        "make",
        help="write a URL list, base images and ground truth",
        description="Write N URL rows (LAION-style parquet) with their images and ground truth.\n\n"
        "Faulty rows cycle through these faults (name -> what a pipeline must make of it):\n" + faults,
        epilog="example: deepfusion scenes make --n 1000 --faults 0.1 --duplicates 0.05 --out /tmp/scenes",
        formatter_class=formatter,
    )
    make.add_argument("--n", type=int, default=100, help="number of URL rows")
    make.add_argument("--out", required=True, help="output folder")
    make.add_argument("--seed", type=int, default=0, help="everything is deterministic for a seed")
    make.add_argument("--base-url", default="http://127.0.0.1:8765", help="where `scenes serve` will listen")
    make.add_argument("--faults", type=float, default=0.0, help="fraction of rows with an injected fault")
    make.add_argument("--fault-names", default="", help="comma-separated subset of faults to cycle through")
    make.add_argument("--duplicates", type=float, default=0.0, help="fraction of byte-identical copies under other URLs")
    make.add_argument("--near-duplicates", type=float, default=0.0, help="fraction of JPEG re-encodes of earlier rows")
    make.add_argument("--text-probability", type=float, default=0.3, help="chance a scene contains a word")
    make.add_argument("--sizes", default="", help="comma-separated WxH image sizes to draw from, e.g. 64x64,96x64")
    make.add_argument("--max-groups", type=int, default=3, choices=[1, 2, 3], help="most colour groups per scene")
    make.set_defaults(run=_make)

    ds = gsub.add_parser(
        "dataset",
        help="write a corpus's good rows straight into a captioned dataset root (no download)",
        description="The base renders become committed shards, with two caption versions: `reference` "
        "(six ground-truth captions) and `alt` (the alt text). For trainer experiments and tests; "
        "the curation job produces the same layout from the URL list.",
        epilog="example: deepfusion scenes dataset /tmp/scenes /tmp/scenes-ds --shard-size 256",
        formatter_class=formatter,
    )
    ds.add_argument("corpus", help="a folder written by `deepfusion scenes make`")
    ds.add_argument("root", help="dataset root to write (local path or fsspec URI)")
    ds.add_argument("--shard-size", type=int, default=256, help="samples per shard")
    ds.set_defaults(run=_dataset)

    serve = gsub.add_parser(
        "serve",
        help="serve a corpus over HTTP on loopback, faults included",
        description="Serve a corpus folder at the host and port of its base URL (or --host/--port).",
        epilog="example: deepfusion scenes serve /tmp/scenes --workers 2",
        formatter_class=formatter,
    )
    serve.add_argument("folder", help="a folder written by `deepfusion scenes make`")
    serve.add_argument("--host", default=None, help="default: the corpus base URL's host")
    serve.add_argument("--port", type=int, default=None, help="default: the corpus base URL's port")
    serve.add_argument("--workers", type=int, default=1, help="server processes sharing the port")
    serve.set_defaults(run=_serve)
