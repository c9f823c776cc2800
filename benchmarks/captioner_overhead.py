"""Captions/s through our Ray pipeline vs raw `vllm.LLM.generate`, same images and prompts, same run.

    .venv/bin/python benchmarks/captioner_overhead.py --n 64

Both sides use the same tiny random Qwen2-VL (built locally), the same engine settings, the same
rendered chat prompt, the same guided-JSON sampling params and per-key seeds, and the same
decoded images. Each side is one command, timed from launch to exit (interpreter start, imports,
reading and decoding the images, engine load, generation; a command is what a user waits for):

- raw: a script that reads the shards, decodes the images, builds `vllm.LLM` and calls `generate`
  once over every image (what a hand-written script gets; no validation, no retries, no files).
- ours: `python -m jobs.caption` on the dataset: Ray start, read shards in Ray tasks, the engine
  in a Ray Data actor, validation, caption parquet + manifest commits per shard.

Reported: captions/s of each end to end, the ratio ours/raw (goal >= 0.9x), and where the time
went inside each (raw: load and generate; ours: the run's own seconds). CPU-only numbers: the tiny
model makes fixed start-up costs weigh more than they would next to a real VLM on a GPU, where
generation dominates.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ENGINE = ["engine.enforce_eager=true", "engine.enable_chunked_prefill=false", "engine.num_gpus=0",
          "engine.num_cpus=0.5", "engine.kv_cache_gib=1"]


def _overrides(args, root: Path, model: Path, version: str) -> list[str]:
    return [f"root={root}", f"version={version}", f"model={model}", f"prompt_set={args.prompt_set}", *ENGINE,
            f"engine.batch_size={args.call_batch or 4 * args.batch}", f"engine.max_num_seqs={args.batch}",
            f"sampling.max_tokens={args.max_tokens}", "progress=false", "ray.num_cpus=2"]


def _config(args, root: Path, model: Path, version: str):
    from captioner.config import load_caption_config

    return load_caption_config(str(ROOT / "jobs/configs/caption/embedded.yaml"), _overrides(args, root, model, version))


def raw(args) -> dict:
    """The baseline, in its own process: vllm.LLM + one generate() call."""
    from captioner.answers import Request, request_seed
    from captioner.backends.vllm_engine import VllmGenerate, build_llm
    from captioner.images import prepare
    from captioner.prompts import load_prompt_set
    from datapipe.contract import Dataset

    t_prep = time.perf_counter()
    cfg = _config(args, Path(args.root), Path(args.model), "raw")
    samples = [s for sid in Dataset(args.root).manifest.shard_ids for s in Dataset(args.root).samples(sid)]
    images = [prepare(s.image, cfg.image) for s in samples]
    prompts = load_prompt_set(cfg.prompt_set)
    t0 = time.perf_counter()
    llm = build_llm(cfg.model, cfg.engine, cfg.sampling.seed)
    gen = VllmGenerate(llm, prompts, "joint", cfg.sampling)  # only for the rendered prompt + sampling params
    requests = [Request(i, "joint", "", request_seed(cfg.sampling.seed, s.key, "joint", 1)) for i, s in enumerate(samples)]
    t1 = time.perf_counter()
    outputs = llm.generate(gen.inputs(requests, images), [gen.params(r) for r in requests], use_tqdm=False)
    t2 = time.perf_counter()
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return {"images": len(samples), "prep_s": t0 - t_prep, "load_s": t1 - t0, "generate_s": t2 - t1, "completion_tokens": tokens}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=64, help="images")
    p.add_argument("--shard-size", type=int, default=16)
    p.add_argument("--batch", type=int, default=16, help="engine.max_num_seqs (sequences decoded together)")
    p.add_argument("--call-batch", type=int, default=None, help="engine.batch_size, images per engine call (4x --batch)")
    p.add_argument("--max-tokens", type=int, default=3000)
    p.add_argument("--prompt-set", default="six-levels-v1")
    p.add_argument("--work", default=str(ROOT / "benchmarks/_work/captioner"))
    p.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.raw:
        print("RAW " + json.dumps(raw(args)))
        return

    import shutil

    from captioner.tiny_vlm import build_tiny_qwen2_vl
    from scenes import CorpusConfig, make_corpus
    from scenes.dataset import ingest_corpus

    work = Path(args.work)
    shutil.rmtree(work / "dataset", ignore_errors=True)
    make_corpus(work / "corpus", CorpusConfig(n=args.n, seed=0, text_probability=0.3), progress=False)
    ingest_corpus(work / "corpus", str(work / "dataset"), shard_size=args.shard_size)
    model = build_tiny_qwen2_vl(work / "tiny-qwen2-vl")

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--raw", "--root", str(work / "dataset"), "--model", str(model),
                          "--batch", str(args.batch), "--call-batch", str(args.call_batch or 4 * args.batch), "--max-tokens", str(args.max_tokens), "--prompt-set",
                          args.prompt_set], capture_output=True, text=True, env=env, check=True)
    raw_s = time.perf_counter() - t0
    base = json.loads(next(line[4:] for line in out.stdout.splitlines() if line.startswith("RAW ")))

    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "jobs.caption", "--config", "embedded", *_overrides(args, work / "dataset", model, "ours")],
                   capture_output=True, text=True, env=env, check=True, cwd=ROOT)
    ours_s = time.perf_counter() - t0
    summary = json.loads(max((work / "dataset/logs").glob("caption-ours-*.json")).read_text())
    run = summary["this_run"]
    rows = [
        ("raw script (read, decode, vllm.LLM, generate)", base["images"] / raw_s, raw_s),
        ("ours: python -m jobs.caption (Ray Data + engine actor)", run["rows"] / ours_s, ours_s),
    ]
    print(f"\ncaptioner_overhead: {base['images']} images, prompt set {args.prompt_set}, max_num_seqs {args.batch}, "
          f"{args.call_batch or 4 * args.batch} images per engine call, "
          f"tiny Qwen2-VL on {os.cpu_count()} CPU cores; each side timed from launch to exit")
    for name, rate, secs in rows:
        print(f"  {name:<58} {rate:7.3f} captions/s  ({secs:6.1f} s)")
    print(f"  raw inside: read+decode {base['prep_s']:.1f} s, engine load {base['load_s']:.1f} s, generate() {base['generate_s']:.1f} s")
    print(f"  ours inside: caption() {summary['seconds']:.1f} s of {ours_s:.1f} s (the rest: interpreter start, imports, exit)")
    print(f"  ours: {run['ok']} ok, {sum(run['failed'].values())} failed; completion tokens ours {run['completion_tokens']}"
          f" vs raw {base['completion_tokens']}")
    print(f"  ratio ours / raw end to end: {rows[1][1] / rows[0][1]:.2f}x   (goal >= 0.9x)")

if __name__ == "__main__":
    main()
