"""Perceptual hashes: the two methods, and a dataset keeping the one it was hashed with."""

from __future__ import annotations

import io

import imagehash
import numpy as np
import pytest
from PIL import Image

from datapipe.config import CurateConfig
from datapipe.contract import Manifest, ShardEntry
from datapipe.curate import PlanMismatch, resolve_phash_method
from datapipe.filters.decode import DecodeStage
from datapipe.filters.phash import bits_to_hex, phash_bits, phash_hex
from datapipe.rows import ROW_SCHEMA
from scenes.graph import generate_scene
from scenes.render import render


def _scenes(n: int, seed: int = 0) -> list[Image.Image]:
    sizes = [(256, 256), (320, 192), (517, 389)]
    return [render(generate_scene(f"s{i}", seed * 1000 + i, sizes[i % 3])).convert("RGB") for i in range(n)]


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _distance(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def test_lanczos_is_imagehash_phash_bit_for_bit():
    """Datasets hashed before the setting existed keep matching: lanczos is imagehash.phash."""
    for img in _scenes(6) + [_scenes(1)[0].convert("L")]:
        for size in (8, 16):
            assert phash_hex(img, size, "lanczos") == str(imagehash.phash(img, hash_size=size))


def test_hex_layout_is_imagehashs_for_any_size():
    rng = np.random.default_rng(0)
    for size in (3, 5, 8, 16):
        bits = rng.random((size, size)) > 0.5
        assert bits_to_hex(bits) == str(imagehash.ImageHash(bits))


def test_box_hashes_survive_reencoding_and_resizing_and_tell_scenes_apart():
    images = _scenes(12)
    hashes = [phash_hex(img, 16, "box") for img in images]
    assert all(len(h) == 64 for h in hashes) and hashes == [phash_hex(img, 16, "box") for img in images]
    for img, h in zip(images, hashes):
        copies = [_jpeg(img, 80), _jpeg(img, 50), img.resize((img.width // 2, img.height // 2), Image.LANCZOS),
                  img.resize((img.width * 3 // 2, img.height * 3 // 2), Image.BICUBIC)]
        assert max(_distance(h, phash_hex(c, 16, "box")) for c in copies) <= 32  # dedup.phash_distance
    apart = [_distance(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1:]]
    assert min(apart) > 64
    # the two methods really are different hashes (why a dataset must keep its method)
    assert any(phash_hex(img, 16, "lanczos") != h for img, h in zip(images, hashes))
    assert phash_bits(images[0], 16, "box").shape == (16, 16)
    with pytest.raises(ValueError, match="one of box, lanczos"):
        phash_bits(images[0], 16, "dhash")


def test_the_decode_stage_hashes_with_the_resolved_method():
    img = _scenes(1)[0]
    cfg = CurateConfig()
    assert DecodeStage(cfg.decode).phash_method == "box"  # auto, outside a job: box
    cfg.decode.phash_method = "lanczos"
    assert DecodeStage(cfg.decode).phash_method == "lanczos"
    buf = io.BytesIO()
    img.save(buf, "PNG")
    row = {name: None for name in ROW_SCHEMA.names}
    row.update(key="000000000000", image=buf.getvalue(), content_type="image/png")
    out = DecodeStage(cfg.decode).decode(row)
    assert out["phash"] == str(imagehash.phash(img, hash_size=16))


def _manifest(decode: dict | None) -> Manifest:
    lineage = {} if decode is None else {"curate": {"config": {"decode": decode}}}
    return Manifest(shards=[ShardEntry(id="000000", samples=1, bytes=1, sha256="0" * 64)], lineage=lineage)


@pytest.mark.parametrize("recorded, wanted, expect", [
    (None, "auto", "box"),  # a new dataset
    (None, "lanczos", "lanczos"),
    ({"phash": True}, "auto", "lanczos"),  # curated before the setting: imagehash's hashes
    ({"phash": True, "phash_method": "box"}, "auto", "box"),
    ({"phash": True, "phash_method": "lanczos"}, "lanczos", "lanczos"),
    ({"phash": False, "phash_method": "lanczos"}, "auto", "box"),  # no hashes committed: free to choose
    ({"phash": True}, "box", PlanMismatch),
    ({"phash": True, "phash_method": "box"}, "lanczos", PlanMismatch),
])
def test_a_dataset_keeps_the_phash_method_its_shards_were_hashed_with(recorded, wanted, expect):
    cfg = CurateConfig()
    cfg.decode.phash_method = wanted
    manifest = _manifest(recorded) if recorded is not None else Manifest()
    if expect is PlanMismatch:
        with pytest.raises(PlanMismatch, match=f"decode.phash_method={recorded.get('phash_method', 'lanczos')}"):
            resolve_phash_method(cfg, manifest, "/data/ds")
        return
    assert resolve_phash_method(cfg, manifest, "/data/ds").decode.phash_method == expect
    assert cfg.decode.phash_method == wanted  # the caller's config is left as it was
