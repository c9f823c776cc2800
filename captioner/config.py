"""The caption job's typed configuration (`deepfusion caption --config jobs/configs/caption/*.yaml`).

A caption run reads the committed image shards of `root` and writes the caption version named
`version`. What the version *is* (backend, model, prompt set, sampling and request settings) is
fixed by its identity (CaptionVersion.IDENTITY): rerunning the same config resumes the version;
changing any of those is refused unless the version name changes too. Throughput knobs (actors,
batch sizes, concurrency) are not part of the identity and may change between resumes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from datapipe.contract import shard_id
from common.config import load_yaml_config
from common.ray_runtime import RayConfig

BACKENDS = ("vllm", "openai", "alt", "reference")


@dataclass
class SamplingConfig:
    max_tokens: int = 1024  # one joint answer (all six levels) or one level with per_level
    temperature: float = 0.2
    top_p: float = 0.95
    seed: int | None = 0  # per-request seed (reproducible captions); null = random
    guided: bool = True  # constrain the joint answer to the prompt set's JSON schema


@dataclass
class ImageConfig:
    max_side: int = 1024  # images are downscaled to this long side before the VLM sees them
    min_side: int = 28  # and upscaled to this short side (Qwen2-VL patches are 14 px, merged 2x2)


@dataclass
class EngineConfig:
    """The vLLM offline engine, one per Ray Data actor (one actor per GPU in production)."""

    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    max_model_len: int = 4096
    max_num_seqs: int = 64
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1
    enforce_eager: bool = False  # true on CPU (no CUDA graphs)
    # false on CPU: vLLM's CPU sampler cannot rewind a seeded request's generator after a partial
    # (chunked) prefill ("CPU Generator does not use offset"); whole prompts per step avoid it
    enable_chunked_prefill: bool = True
    max_num_batched_tokens: int | None = None  # null: vLLM's default (max_model_len without chunking)
    kv_cache_gib: int = 4  # CPU only: VLLM_CPU_KVCACHE_SPACE
    actors: int = 1  # engine replicas
    num_gpus: float = 1.0  # per actor (0 on a CPU machine)
    num_cpus: float = 1.0  # per actor; fractional on small machines so reads are not starved
    cpu_threads: int | None = None  # CPU engine (num_gpus 0): compute threads; null = every core
    # images per engine call: several times max_num_seqs, so continuous batching keeps every slot
    # busy while the call's longest answers finish (a call of exactly max_num_seqs idles its tail)
    batch_size: int = 256


@dataclass
class ServerConfig:
    """Any OpenAI-compatible endpoint (a vLLM server the user runs)."""

    base_url: str = "http://127.0.0.1:8000/v1"
    api_key: str = "EMPTY"
    concurrency: int = 32  # requests in flight
    timeout_s: float = 120.0  # per request
    retries: int = 4  # per request, on connection errors, timeouts, 429, 5xx and malformed answers
    backoff_s: float = 1.0  # first retry waits ~this (x2 each time, with full jitter)
    max_backoff_s: float = 30.0
    image_format: Literal["jpeg", "png"] = "jpeg"  # how images travel in the data URL
    max_response_bytes: int = 8 << 20  # a larger answer body is a failed attempt (oversize_body)
    require_usage: bool = True  # an answer without integer usage token counts is a failed attempt
    # the server is declared unavailable (the run stops, exit 1) only after this many connection
    # errors or timeouts in a row across requests AND a failed health probe (GET <base_url>/models)
    unavailable_after: int = 8
    # How guided decoding is asked for: "vllm" (vLLM's structured_outputs: the JSON schema's grammar,
    # or a level's word-range regex), "response_format" (OpenAI json_schema, joint only), "none".
    # Start a vLLM server with --structured-outputs-config '{"disable_any_whitespace": true}'.
    guided_via: Literal["vllm", "response_format", "none"] = "vllm"


@dataclass
class SelectConfig:
    """A regeneration run's selection over its parent's resolved captions (all given parts must hold)."""

    shards: list[int | str] | None = None  # only these image shards
    where: str | None = None  # a SQL (duckdb) condition over the parent's rows, see captioner/select.py
    prompt_id: str | None = None  # rows written with this (older) prompt set id or id@hash
    qa_below: float | None = None  # rows whose caption-QA accuracy (any level) is below this

    def active(self) -> bool:
        return any(v is not None for v in dataclasses.asdict(self).values())


@dataclass
class FollowConfig:
    """Keep captioning a dataset that is still growing: poll for new committed shards."""

    enabled: bool = False
    poll_s: float = 10.0
    idle_exit_s: float = 300.0  # stop after this long without a new shard


@dataclass
class CaptionConfig:
    root: str = ""  # the dataset root
    version: str = ""  # the caption version to write (captions/<version>/)
    backend: Literal["vllm", "openai", "alt", "reference"] = "vllm"
    model: str = ""  # local folder of the VLM (vllm) or the served model name (openai)
    prompt_set: str = "six-levels-v1"  # a bundled set name or a YAML file
    strategy: Literal["joint", "per_level"] = "joint"  # joint: one request per image, all levels as JSON
    max_attempts: int = 3  # per image: an invalid answer is asked again up to this many times in all
    parent: str | None = None  # regeneration: the version this one overlays
    select: SelectConfig = field(default_factory=SelectConfig)
    corpus: str | None = None  # reference backend: the scenes corpus whose ground truth is the caption
    shards: list[int | str] | None = None  # caption only these image shards (default: all committed)
    progress: bool = True
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    follow: FollowConfig = field(default_factory=FollowConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self):
        # YAML reads `shards=[000003]` as the number 3: shard ids are zero-padded strings
        self.shards = _shard_ids(self.shards)
        self.select.shards = _shard_ids(self.select.shards)
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.strategy not in ("joint", "per_level"):
            raise ValueError(f"strategy must be joint or per_level, got {self.strategy!r}")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.select.active() and not self.parent:
            raise ValueError("select.* chooses rows of a parent version: set parent too")
        if self.backend in ("vllm", "openai") and not self.model:
            raise ValueError(f"backend {self.backend} needs model (a local folder, or the served model name)")
        if self.backend == "reference" and not self.corpus:
            raise ValueError("backend reference needs corpus (the scenes corpus folder with ground_truth.parquet)")

    def identity_params(self) -> dict:
        """What, besides backend/model/prompt set/parent/selection, decides the words of a caption."""
        if self.backend in ("alt", "reference"):
            return {}  # a copy of the sidecar / the ground truth: nothing to choose
        params: dict = {"strategy": self.strategy, "max_attempts": self.max_attempts,
                        "sampling": dataclasses.asdict(self.sampling), "image": dataclasses.asdict(self.image)}
        if self.backend == "vllm":
            params["dtype"] = self.engine.dtype
        return params


def _shard_ids(values: list | None) -> list[str] | None:
    return None if values is None else [shard_id(v) if isinstance(v, int) else str(v) for v in values]


def load_caption_config(path: str | Path | None = None, overrides: list[str] | None = None) -> CaptionConfig:
    return load_yaml_config(CaptionConfig, path, overrides)
