"""Shared fixtures. Real components only: servers bind 127.0.0.1, processes are real processes."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from common import compat

compat.install()

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deepfusion_cmd() -> list[str]:
    """The installed console script, as a user runs it."""
    exe = VENV_BIN / "deepfusion"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "jobs.cli"]


@pytest.fixture(autouse=True)
def no_ray_left_running():
    """A test that ran a Ray job in this process (the captioner's ray_vllm backend starts a local
    instance and keeps it for the process) leaves it stopped: later tests must start from nothing,
    not share its workers or collide with it in `ray.init`."""
    yield
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests leave files worth looking at after a run (screenshots, grids, reports)."""
    path = Path(os.environ.get("DEEPFUSION_TEST_ARTIFACTS", ROOT / "artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory) -> Path:
    """A random 4-layer Llama (width 64) with a real BPE tokenizer, saved as a local folder."""
    from model.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("llm") / "tiny-llama", layers=4, hidden=64, heads=4)


def scenes_dataset(root: Path, n: int, sizes: str = "32x32", shard_size: int = 16, seed: int = 0) -> Path:
    """A captioned dataset (reference + alt versions) of n single-colour scenes, made in seconds."""
    from scenes import CorpusConfig, make_corpus
    from scenes.dataset import ingest_corpus

    cfg = CorpusConfig(n=n, seed=seed, sizes=[tuple(int(v) for v in s.split("x")) for s in sizes.split(",")],
                       max_groups=1, text_probability=0.0)
    make_corpus(root / "corpus", cfg, progress=False)
    ingest_corpus(root / "corpus", str(root / "dataset"), shard_size=shard_size)
    return root / "dataset"


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory) -> Path:
    """A random Qwen2-VL (the real class) with tokenizer, processors and chat template, as a local folder."""
    from captioner.tiny_vlm import build_tiny_qwen2_vl

    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("vlm") / "tiny-qwen2-vl")


@pytest.fixture(scope="session")
def tiny_prompt_set() -> Path:
    """The bundled smoke-test prompt set (word ranges 1-2, 3-4, ... 11-12), so CPU answers stay short.

    The real ranges (up to 200 words at level 6) work the same way; they only take ~10x longer to
    generate on a CPU (benchmarks/captioner_overhead.py uses them).
    """
    from captioner.prompts import prompt_set_path

    return prompt_set_path("six-levels-smoke")
