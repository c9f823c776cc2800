"""`deepfusion demo`: the main job end to end on embedded defaults (the README's first command).

Every stage runs on a small synthetic corpus served from loopback: curation, captions, caption
QA, training on the real SmolLM2-135M, samples and the prompt-following benchmark on held-out
prompts, statistics and the dashboard. Each stage resumes: a second run reuses what is done.
"""

from __future__ import annotations

import argparse
import json
import socket
from dataclasses import dataclass, field
import subprocess
import sys
from pathlib import Path

from jobs.errors import CommandError
from jobs.grammar import epilog, settings

STEPS = 8
# The corpus server is on loopback: its hung and dripping URLs need not be waited on for long.
CURATE_OVERRIDES = ["download.timeout_s=3", "download.deadline_s=5", "download.retries=0", "shard_size=100"]
# The VLM is a tiny random Qwen2-VL (no pretrained VLM can be had offline): its words are noise,
# but it runs the real path (vLLM engine in a Ray Data actor, guided JSON, validation, commits).
# On a CPU it captions the first shard with the smoke-test prompt set (short word ranges).
VLM_OVERRIDES = ["prompt_set=six-levels-smoke", "shards=[000000]", "sampling.max_tokens=1500", "progress=false"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class DemoSettings:
    workdir: str = "demo"  # where every artifact goes
    n: int = 2000  # URL rows in the synthetic corpus
    seed: int = 0  # corpus seed
    max_groups: int = 2  # groups of same-coloured shapes per scene (1..3)
    text_probability: float = 0.0  # chance that a scene also contains a word
    vlm: str | None = None  # a local VLM folder (e.g. Qwen2-VL-2B-Instruct) instead of the tiny random one
    caption_config: str = "embedded"  # caption profile (embedded, production) or a YAML file
    train_steps: int = 1400  # training steps
    train_config: str = "demo"  # a train profile (demo, small, ...) or a YAML file
    train: dict = field(default_factory=dict)  # any training setting, e.g. train.model.dit.depth=12
    eval_prompts: int = 20  # held-out prompts per benchmark category


def _flatten(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}={json.dumps(v) if not isinstance(v, str) else v}")
    return out


def _demo(args: argparse.Namespace) -> int:
    import pyarrow.parquet as pq
    import requests

    from scenes import CorpusConfig, ScenesServer, make_corpus

    args = settings(DemoSettings, args.overrides)

    work = Path(args.workdir).resolve()
    corpus = work / "corpus"
    port = _free_port()
    dataset = work / "dataset"
    print(f"[1/{STEPS}] synthetic scenes corpus: {args.n} URL rows -> {corpus}")
    make_corpus(corpus, CorpusConfig(n=args.n, seed=args.seed, faults=0.05, duplicates=0.03, max_groups=args.max_groups,
                                     text_probability=args.text_probability, base_url=f"http://127.0.0.1:{port}"))
    with ScenesServer(corpus) as server:
        urls = pq.read_table(corpus / "urls.parquet").column("URL").to_pylist()
        ok = sum(requests.get(u, timeout=10).ok for u in urls[:20])
        print(f"[2/{STEPS}] serving it on {server.url}: {ok}/20 of the first URLs answered 200")
        print(f"[3/{STEPS}] curating it (img2dataset on a local Ray, filters, dedup) -> {dataset}")
        from datapipe.config import load_curate_config
        from datapipe.contract import verify_dataset
        from datapipe.curate import curate, format_summary
        from jobs.profiles import config_path

        cfg = load_curate_config(config_path("curate", "embedded"), [f"input.paths=[{corpus / 'urls.parquet'}]",
                                                           f"output={dataset}", *CURATE_OVERRIDES,
                                                           # the URL policy opens loopback for this server only
                                                           f"download.url_policy.allow=[127.0.0.1:{port}]"])
        summary = curate(cfg)
    print(format_summary(summary))
    report = verify_dataset(str(dataset))
    print(f"dataset verify: {'ok' if report.ok else 'PROBLEMS: ' + str(report.problems[:3])}")
    _caption(work, corpus, dataset, args)
    _stop_ray()  # the local instance of curation and captions would take CPU from the trainer
    run_dir = _train(work, dataset, args)
    evaluation = _sample_and_eval(work, run_dir, args)
    dashboard = _stats_and_dashboard(work, dataset)
    print(f"\nartifacts:\n  URL list      {corpus / 'urls.parquet'}\n  ground truth  {corpus / 'ground_truth.parquet'}"
          f"\n  dataset       {dataset}  (manifest.json, shards/, rejects/, captions/, stats/, logs/)"
          f"\n  statistics    {dataset / 'stats' / 'summary.json'}"
          f"\n  dashboard     {dashboard}  (offline; or live: deepfusion dashboard {dataset})"
          f"\n  training run  {run_dir}  (checkpoints/, metrics.jsonl, tensorboard/, samples/)"
          f"\n  eval report   {evaluation['written']}")
    from jobs.eval_scenes import format_report

    print(f"\nprompt following of the trained model on held-out prompts:\n{format_report(evaluation)}")
    print(f"\nsample grid: {evaluation['samples_grid']['path']}\n  (a row per category, each image labelled with its "
          "prompt; + followed, - not, by the analyser)")
    return 0 if report.ok else 1


def _caption(work: Path, corpus: Path, dataset: Path, args: argparse.Namespace) -> None:
    from captioner.config import load_caption_config
    from jobs.caption_qa import caption_qa, format_qa
    from captioner.run import caption, format_summary
    from captioner.stats import caption_stats, format_stats
    from captioner.tiny_vlm import build_tiny_qwen2_vl
    from jobs.profiles import config_path

    base = [f"root={dataset}", "progress=false"]
    vlm_version = "vlm" if args.vlm else "tiny-vlm"
    which = f"the VLM in {args.vlm} on every shard" if args.vlm else "a tiny random Qwen2-VL on the first shard"
    print(f"[4/{STEPS}] captions: the scenes ground truth (reference backend), then {which} through the vLLM "
          "engine in a Ray Data actor")
    caption(load_caption_config(config_path("caption", "embedded"),
                                [*base, "version=reference", "backend=reference", f"corpus={corpus}"]))
    if args.vlm:  # a real VLM from a local folder: every shard, the full six-level prompt set
        vlm = [f"model={args.vlm}", "progress=false"]
    else:
        vlm = [f"model={build_tiny_qwen2_vl(work / 'models' / 'tiny-qwen2-vl')}", *VLM_OVERRIDES]
    summary = caption(load_caption_config(config_path("caption", args.caption_config),
                                          [*base, f"version={vlm_version}", *vlm]))
    print(format_summary(summary))
    print(f"[5/{STEPS}] caption QA against the scene graphs, and caption statistics")
    for version in ("reference", vlm_version):
        print(format_qa(caption_qa(str(dataset), version, str(corpus))))
    print(format_stats(caption_stats(str(dataset), vlm_version)))


def _stop_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _die_with_parent() -> None:
    """In the training child: get SIGTERM if the demo process dies (killed, timed out), so no
    orphaned trainer keeps the CPUs busy. Ctrl-C reaches both anyway (same process group)."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _layers(args) -> str:
    """Which LLM layers the trained DiT reads, from the model's own layer map."""
    from trainer.config import load_config
    from trainer.train import model_configs

    from jobs.profiles import config_path
    from model.presets import layers_read

    cfg = load_config(config_path("train", args.train_config), _flatten(args.train))
    return layers_read(model_configs(cfg)[0])


def _train(work: Path, dataset: Path, args) -> Path:
    run_dir = work / "train"
    print(f"[6/{STEPS}] training a deep-fusion DiT on the reference captions of the real SmolLM2-135M "
          f"({_layers(args)}; {args.train_steps} steps, config {args.train_config}; resumes if interrupted)",
          flush=True)
    # A process of its own: DeepSpeed's process group and the trainer's threads stay out of this
    # one (which ran Ray and a vLLM engine); its log streams straight to the terminal.
    cmd = [sys.executable, "-m", "jobs.cli", "train", "--config", args.train_config, f"run_dir={run_dir}",
           f"data.root={dataset}", f"steps={args.train_steps}", *_flatten(args.train)]
    rc = subprocess.call(cmd, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    if rc:
        raise CommandError(f"training exited with {rc}; run the demo again to resume from its last checkpoint")
    return run_dir


def _sample_and_eval(work: Path, run_dir: Path, args: argparse.Namespace) -> dict:
    from jobs.eval_scenes import EvalConfig, evaluate

    print(f"[7/{STEPS}] samples for held-out prompts and the prompt-following benchmark (eval scenes)", flush=True)
    report = evaluate(str(run_dir), EvalConfig(per_category=args.eval_prompts, seeds=[0], steps=16), work / "eval")
    print(f"  wrote {report['written']} (the table is repeated at the end)")
    return report


def _stats_and_dashboard(work: Path, dataset: Path) -> Path:
    from jobs.profiles import config_path
    from jobs.dashboard import export_html
    from jobs.statistics import format_summary, load_stats_config, run_stats

    print(f"[8/{STEPS}] dataset statistics (DuckDB, incremental) and the dashboard as one offline HTML file")
    print(format_summary(run_stats(load_stats_config(config_path("stats", "embedded"), [f"root={dataset}"]))))
    return export_html(str(dataset), work / "dashboard.html")


def register(sub, formatter) -> None:
    p = sub.add_parser(
        "demo",
        help="run the main job end to end on a small synthetic corpus",
        description=__doc__,
        epilog=epilog("examples:\n  deepfusion demo\n  deepfusion demo n=5000 train_steps=3000 train_config=small\n"
                      "  deepfusion demo train.model.dit.depth=12 train.optim.lr=1e-3", DemoSettings),
        formatter_class=formatter,
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="settings (listed below)")
    p.set_defaults(run=_demo)
