"""Our curation pipeline vs plain img2dataset, on the same URL list served on loopback.

    python benchmarks/datapipe_vs_img2dataset.py --n 5000

A synthetic scenes corpus (no faults) is served by the aiohttp scenes server in its own process.
Each contender runs as a fresh process, timed from launch to exit (start-up included):
  img2dataset        img2dataset.download(), multiprocessing distributor, webdataset output, the same
                     download settings (threads, timeout), no decoding (disable_all_reencoding)
  img2dataset/decode the same, but resize_mode "no": OpenCV decodes (validates) every image
  ours/off           deepfusion curate, filters off: decode.enabled=false (header only), no dedup
  ours/validate      + the decode stage (full decode, modes, size filters), no dedup
  ours/default       + sha256 + perceptual-hash dedup (the distributed index actors)
  ours/default-close the same with download.keep_alive=false: a new connection per URL, as
                     img2dataset does (every URL here is on one host, which keep-alive favours;
                     a web URL list spreads over many hosts)
  ours/nsfw          the embedded profile as shipped: + the open_nsfw score of every kept image
  ours/clip          + CLIP ViT-B-32 embedding (random weights: same compute as real ones) and 3
                     heads, on the first --clip-n URLs (it is ~100x slower on a CPU)
and prints images/s, the ratio to img2dataset, and images/s per core; for our runs also what the
driver spent (CPU-seconds and bytes received per 1,000 rows, from the run log the job writes) and
the driver cores a 100-node cluster would need at this per-node rate.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BASELINE = """
import sys, img2dataset
if __name__ == "__main__":
    decode = sys.argv[6] == "decode"  # resize_mode "no": OpenCV decodes every image, keeps its bytes
    img2dataset.download(url_list=sys.argv[1], input_format="parquet", url_col="URL", caption_col="TEXT",
        output_folder=sys.argv[2], output_format="webdataset", processes_count=int(sys.argv[3]),
        thread_count=int(sys.argv[4]), number_sample_per_shard=int(sys.argv[5]), timeout=10, retries=1,
        disable_all_reencoding=not decode, resize_mode="no", skip_reencode=True, encode_format="png", encode_quality=3,
        compute_hash="sha256", extract_exif=False, enable_wandb=False, incremental_mode="incremental")
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode:
        raise SystemExit(f"{cmd[:4]} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def count_samples(root: Path) -> int:
    return json.loads((root / "manifest.json").read_text())["totals"]["samples"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--clip-n", type=int, default=1000, help="URLs for the CLIP run (0: skip it)")
    parser.add_argument("--runs", default="", help="comma-separated contenders to run (default: all); "
                        "img2dataset is always run, as the baseline")
    parser.add_argument("--extra", default="", help="space-separated key=value settings added to our runs")
    args = parser.parse_args()

    from scenes import CorpusConfig, make_corpus
    from datapipe.filters.heads import random_head, save_head

    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="df-bench-", dir=os.environ.get("TMPDIR")))
    port = free_port()
    corpus = work / "corpus"
    make_corpus(corpus, CorpusConfig(n=args.n, seed=7, base_url=f"http://127.0.0.1:{port}", sizes=[(256, 256), (320, 192)]),
                progress=False)
    for i, name in enumerate(("aesthetic", "nsfw", "watermark")):
        save_head(work / f"{name}.safetensors", random_head(512, seed=i))
    env = {**os.environ, "TMPDIR": str(work)}
    server = subprocess.Popen([sys.executable, "-m", "jobs.cli", "scenes", "serve", str(corpus), "--port", str(port)],
                              env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import urllib.request

        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        urls = corpus / "urls.parquet"
        ours = [sys.executable, "-m", "jobs.curate", "--config", "embedded", f"input.paths=[{urls}]",
                f"shard_size={args.shard_size}", f"download.threads={args.threads}", "progress=false",
                f"download.url_policy.allow=[127.0.0.1:{port}]"]  # the policy refuses loopback otherwise
        nonsfw = ["nsfw.enabled=false"]
        nodedup = nonsfw + ["dedup.sha256=false", "dedup.phash_distance=null", "decode.phash=false"]
        off = nodedup + ["decode.enabled=false"]
        clip = ["clip.enabled=true", "clip.allow_random_init=true", "clip.model=ViT-B-32", "clip.batch_size=32"]
        clip += [f"clip.{h}.weights={work / (h + '.safetensors')}" for h in ("aesthetic", "nsfw", "watermark")]
        runs = {
            "img2dataset": [sys.executable, "-c", BASELINE, str(urls), str(work / "i2d"), str(cores),
                            str(args.threads), str(args.shard_size), "bytes"],
            "img2dataset/decode": [sys.executable, "-c", BASELINE, str(urls), str(work / "i2d-decode"), str(cores),
                                   str(args.threads), str(args.shard_size), "decode"],
            "ours/off": ours + [f"output={work / 'off'}"] + off,
            "ours/validate": ours + [f"output={work / 'validate'}"] + nodedup,
            "ours/default": ours + [f"output={work / 'default'}"] + nonsfw,
            "ours/default-close": ours + [f"output={work / 'default-close'}", "download.keep_alive=false"] + nonsfw,
            "ours/nsfw": ours + [f"output={work / 'nsfw'}"],
        }
        if args.clip_n:
            import pyarrow.parquet as pq

            pq.write_table(pq.read_table(urls).slice(0, args.clip_n), work / "clip-urls.parquet")
            runs["ours/clip"] = [c.replace(str(urls), str(work / "clip-urls.parquet")) for c in ours] + \
                [f"output={work / 'clip'}"] + clip + nonsfw
        if args.runs:
            runs = {k: v for k, v in runs.items() if k in args.runs.split(",") or k in ("img2dataset", "img2dataset/decode")}
        runs = {k: (v + args.extra.split() if k.startswith("ours") else v) for k, v in runs.items()}
        results, drivers = {}, {}
        for name, cmd in runs.items():
            seconds = timed(cmd, env)
            if name.startswith("img2dataset"):
                folder = work / ("i2d-decode" if name.endswith("decode") else "i2d")
                stats = [json.loads(p.read_text()) for p in folder.glob("*_stats.json")]
                images = sum(s["successes"] for s in stats)
            else:
                images = count_samples(work / name.split("/")[1])
                log = json.loads(sorted((work / name.split("/")[1] / "logs").glob("curate-*.json"))[-1].read_text())
                drivers[name] = {**log["driver"], "rows": log["this_run"]["inputs"]}
            results[name] = (images, seconds)
            print(f"{name:18s} {images:6d} images in {seconds:6.1f} s = {images / seconds:7.1f} img/s", flush=True)
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)

    base = results["img2dataset"][0] / results["img2dataset"][1]
    base_decode = results["img2dataset/decode"][0] / results["img2dataset/decode"][1]
    print(f"\n{args.n} URLs ({args.clip_n} for ours/clip), {cores} cores, shard size {args.shard_size}, "
          f"{args.threads} threads per shard")
    for name, (images, seconds) in results.items():
        rate = images / seconds
        print(f"  {name:18s} {rate:7.1f} img/s  {rate / base:5.2f}x img2dataset  {rate / base_decode:5.2f}x img2dataset/decode  {rate / cores:6.1f} img/s per core")
    print("\ndriver (the job's own accounting, start-up included; the driver never receives image bytes):")
    for name, d in drivers.items():
        images, seconds = results[name]
        rows_per_s = d["rows"] / seconds  # input rows per second on this one node
        cores_at_100 = d["cpu_s_per_1000_rows"] / 1000 * rows_per_s * 100
        print(f"  {name:18s} {d['cpu_s_per_1000_rows']:7.3f} CPU-s and {d['bytes_per_1000_rows']:8d} bytes per 1,000 rows; "
              f"100 nodes at {rows_per_s:.0f} rows/s each: {cores_at_100:5.2f} driver cores, "
              f"{d['bytes_per_1000_rows'] / 1000 * rows_per_s * 100 / 1e6:6.2f} MB/s into it")


if __name__ == "__main__":
    main()
