"""benchmarks/gpu_check.py cannot rot: its CPU path (--dry-run, tiny shapes) runs here, importing
nothing the GPU machine lacks (our data stack is blocked while it runs)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT

# what a GPU machine with CUDA torch, transformers, safetensors, numpy, psutil and the carried
# wheels does not have: importing any of these would fail there
ABSENT = ["ray", "vllm", "webdataset", "duckdb", "img2dataset", "open_clip", "faiss", "onnxruntime",
          "pyarrow", "plotly", "imagehash", "aiohttp", "playwright"]

RUN = """
import runpy, sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None  # import raises ImportError, importlib.util.find_spec says absent
sys.argv = ["benchmarks/gpu_check.py", *sys.argv[2:]]
runpy.run_path("benchmarks/gpu_check.py", run_name="__main__")
"""


def test_gpu_check_dry_run_on_the_cpu_with_only_what_the_gpu_machine_has(tmp_path):
    out = tmp_path / "dry.jsonl"
    proc = subprocess.run([sys.executable, "-c", RUN, ",".join(ABSENT), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["kind"] == "header" and rows[0]["dry_run"] is True
    train = {r["loop"]: r for r in rows if r["kind"] == "train"}
    assert set(train) == {"ours", "bare"}
    for r in train.values():
        assert r["images_per_s"] > 0 and r["step_s"] > 0 and r["gflops_per_image"] > 0 and r["dit_params"] > 0
    assert train["ours"]["ours_vs_bare"] == train["bare"]["ours_vs_bare"] > 0
    (sample,) = [r for r in rows if r["kind"] == "sample"]
    assert sample["images_per_s"] > 0
    assert "ours/bare" in proc.stdout and "sampler:" in proc.stdout  # the table
    # without --dry-run and without a GPU it says so instead of measuring the CPU
    plain = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--out", str(tmp_path / "x.jsonl")],
                           capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert plain.returncode != 0 and "no CUDA device" in plain.stderr
