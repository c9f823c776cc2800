"""The trainer's typed configuration: nested dataclasses, loaded from YAML with dotted overrides.

    cfg = load_config("jobs/configs/train/tiny.yaml", ["steps=200", "data.root=/data/ds"])

Every batch setting is derived from `global_batch` and `micro_batch` here, and the DeepSpeed
config is generated from this object (trainer/deepspeed_config.py), so they cannot drift apart.
`identity_hash()` names what a checkpoint depends on; resuming under another identity is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from common.config import load_yaml_config, overrides_of
from model.config import CodecConfig, DiTConfig, EDMConfig, TextEncoderConfig


@dataclass
class SpikeGuardConfig:
    enabled: bool = True
    value_threshold: float = 1.0  # a gradient value counts as large above this magnitude ...
    max_count: int = 1000  # ... and the step is skipped when more than this many are large
    norm_factor: float = 10.0  # skip when the global norm > factor x running median (0 = off)
    norm_window: int = 100  # accepted steps in the running median
    min_history: int = 10  # no norm rule until this many accepted steps
    max_consecutive: int = 10  # abort the run after this many skips in a row


CAPTION_CHOICES = ("1", "2", "3", "4", "5", "6", "alt")


@dataclass
class DataConfig:
    root: str = ""  # dataset root (local path or fsspec URI)
    # Caption versions to read, in priority order: a key takes its captions from the first version
    # that has an ok row for it. Overlays (regeneration runs) are resolved by the contract reader.
    caption_versions: list[str] = field(default_factory=lambda: ["reference"])
    # Caption-level sampling weights: "1".."6" are the levels, "alt" the source alt text.
    level_weights: dict[str, float] = field(default_factory=lambda: {str(i): 1.0 for i in range(1, 7)})
    cfg_dropout: float = 0.1  # probability of the empty prompt (for classifier-free guidance)
    # Token budget per caption level (EOS included); a longer caption is cut, counted in the
    # metrics (truncated/level_N) and warned about once per level. The defaults hold the reference
    # captions of every level under the SmolLM2 tokenizer (level 6 runs to ~310 tokens); a level
    # missing here gets the text encoder's max_tokens.
    level_tokens: dict[str, int] = field(default_factory=lambda: {"1": 32, "2": 48, "3": 80, "4": 128, "5": 192,
                                                                  "6": 384, "alt": 77})
    resolution: int = 64  # buckets have about resolution^2 pixels
    buckets: list[list[int]] = field(default_factory=list)  # explicit [height, width] list; else generated
    max_aspect: float = 2.0  # generated buckets span aspect ratios 1/max_aspect .. max_aspect
    bucket_multiple: int = 16  # bucket sides are multiples of this (codec factor x patch size)
    shuffle_window: int = 8  # shards whose samples are shuffled together
    follow: bool = False  # keep picking up shards committed while training runs
    follow_poll_s: float = 5.0
    follow_idle_s: float = 60.0  # in follow mode, end the epoch after this long without a new shard
    prefetch: int = 4  # micro-batches decoded ahead of the step
    # With text_cache_mb > 0: the captions of this many upcoming micro-batches go through the LLM
    # together (length-sorted batches of ~64 cost about half as much per caption as one step's
    # few); 1 = each micro-batch's own. Follow mode plans one at a time (never waits on new shards
    # while it has a batch to train on).
    encode_ahead: int = 8
    decode_threads: int = 2
    log_keys: bool = False  # write the keys each rank trains on to run_dir/keys/ (audits, tests)


# the typed form of "these settings of the preset, changed" (every key optional)
DiTConfigOverrides = overrides_of(DiTConfig)
TextEncoderConfigOverrides = overrides_of(TextEncoderConfig)
CodecConfigOverrides = overrides_of(CodecConfig)
EDMConfigOverrides = overrides_of(EDMConfig)


@dataclass
class ModelSection:
    """The model: a preset (model/presets.py) and the settings of it that change."""

    preset: Literal["tiny", "small", "mirror", "base", "pgv3"] = "small"
    dit: DiTConfigOverrides = field(default_factory=DiTConfigOverrides)  # e.g. dit.width=192 (model/config.py DiTConfig)
    text_encoder: TextEncoderConfigOverrides = field(default_factory=TextEncoderConfigOverrides)  # TextEncoderConfig keys
    # A second LLM (LI-DiT's collaborative refiner, with model.dit.conditioning=refiner): set its
    # source (e.g. text_encoder_2.source=gemma3) to use it; other keys default to TextEncoderConfig's
    text_encoder_2: TextEncoderConfigOverrides = field(default_factory=TextEncoderConfigOverrides)
    codec: CodecConfigOverrides = field(default_factory=CodecConfigOverrides)  # CodecConfig keys
    edm: EDMConfigOverrides = field(default_factory=EDMConfigOverrides)  # EDMConfig keys


@dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 0.0
    eps: float = 1e-8
    warmup_steps: int = 100
    schedule: Literal["constant", "cosine"] = "constant"  # after warm-up
    min_lr_ratio: float = 0.1  # cosine floor, as a fraction of lr
    grad_clip: float = 1.0  # global norm; 0 = off (applied by the spike guard's optimizer)


@dataclass
class DeepSpeedSection:
    zero_stage: Literal[0, 1, 2, 3] = 0
    bf16: bool = False
    activation_checkpointing: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # merged into the generated DeepSpeed config


@dataclass
class EMAConfig:
    halflife_images: float = 10_000  # edm2-style: the EMA's half-life counted in training images
    rampup_ratio: float = 0.05  # half-life <= images_seen x ratio early in training (0 = off)


@dataclass
class CheckpointConfig:
    every_steps: int = 500
    keep_last: int = 3
    # ZeRO 1/2: also save the full per-parameter optimizer state (gathered to rank 0, ~3x the
    # parameters in fp32), so the run can resume on another number of ranks (trainer/checkpoint.py)
    elastic: bool = True


@dataclass
class LogConfig:
    every_steps: int = 10
    tensorboard: bool = True


@dataclass
class SampleConfig:
    every_steps: int = 0  # 0 = only at the end of training
    prompts: list[str] = field(default_factory=lambda: ["a red circle", "two blue squares", "a green triangle"])
    from_dataset: int = 2  # also take this many samples' captions from the dataset ...
    levels: list[int] = field(default_factory=lambda: [1, 6])  # ... at these caption levels
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    steps: int = 24
    guidance: float = 3.0


@dataclass
class TrainConfig:
    run_dir: str = "runs/train"
    seed: int = 0
    steps: int = 1000  # optimizer steps; extend a finished run by re-running with more
    global_batch: int = 32  # images per optimizer step, over all ranks
    micro_batch: int = 0  # per rank per forward; 0 = global_batch / world (no accumulation)
    # Host memory for caching each caption's LLM states (the layers the DiT reads). Worth it when
    # a small dataset is seen for many epochs (the demo, ablations); useless for a web-scale run
    # that sees each caption about once. 0 = off: every batch goes through the LLM.
    text_cache_mb: float = 0.0
    # Warm start: a run dir (its latest checkpoint) or a checkpoints/step_* folder whose model and EMA
    # weights this run starts from (not its optimizer or data position): progressive resolution
    # (256 -> 512 px), a new bucket set or caption mix. Ignored once this run has its own checkpoints.
    init_from: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSection = field(default_factory=ModelSection)
    optim: OptimConfig = field(default_factory=OptimConfig)
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)
    ema: EMAConfig = field(default_factory=EMAConfig)
    spike_guard: SpikeGuardConfig = field(default_factory=SpikeGuardConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def __post_init__(self):
        self.data.level_weights = {str(k): float(v) for k, v in self.data.level_weights.items()}
        unknown = sorted(set(self.data.level_weights) - set(CAPTION_CHOICES))
        if unknown:
            raise ValueError(f"data.level_weights: unknown level(s) {unknown}; use {list(CAPTION_CHOICES)}")
        if not any(w > 0 for w in self.data.level_weights.values()):
            raise ValueError("data.level_weights: at least one weight must be positive")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def batch_layout(self, world: int) -> tuple[int, int]:
        """(micro_batch, gradient accumulation steps) for `world` ranks; refuses what does not divide."""
        micro = self.micro_batch or self.global_batch // world
        if micro < 1 or self.global_batch % (micro * world):
            raise ValueError(
                f"global_batch {self.global_batch} is not divisible by micro_batch {micro} x {world} rank(s)"
            )
        return micro, self.global_batch // (micro * world)

    # What a checkpoint depends on. Left out, so they may change between runs of one run_dir:
    # run length, logging/checkpoint/sample cadence, the loader's and encoder's performance knobs,
    # follow mode.
    VOLATILE = ("run_dir", "steps", "text_cache_mb", "checkpoint", "log", "sample", "data.follow", "data.follow_poll_s",
                "data.follow_idle_s", "data.prefetch", "data.encode_ahead", "data.decode_threads", "data.log_keys", "data.root")

    def identity(self) -> dict:
        d = self.to_dict()
        for path in self.VOLATILE:
            node, *rest = path.split(".")
            if rest:
                d[node].pop(rest[0], None)
            else:
                d.pop(node, None)
        # a model setting left unset is the preset's: leaving it out keeps a run's identity when a
        # later version adds settings (every override field is optional)
        d["model"] = {k: v if not isinstance(v, dict) else {n: x for n, x in v.items() if x is not None}
                      for k, v in d["model"].items()}
        return d

    def identity_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]


# -- loading ------------------------------------------------------------------------------------
def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    return load_yaml_config(TrainConfig, path, overrides)
