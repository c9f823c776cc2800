"""The decode stage against hostile files: seeded mutations of valid files and hand-made odd ones.

Nothing may escape: every row comes back as a sample (a decodable RGB image within the limits)
or a reject with stage, reason and a detail that never quotes the file's bytes.
"""

from __future__ import annotations

import collections
import io
import random

from PIL import Image

from datapipe.config import DecodeConfig
from datapipe.filters.decode import DecodeStage
from datapipe.rows import ROW_SCHEMA, to_table
from hostile_files import MARKER, mutate, odd_files, valid_files

MUTATIONS = 2400


def _row(i: int, data: bytes) -> dict:
    row = {name: None for name in ROW_SCHEMA.names}
    row.update(key=f"000000{i:06d}", shard="000000", url=f"http://example.invalid/{i}.img", image=data,
               ext="jpg", content_type="image/png")
    return row


def run_decode(cases: list[tuple[str, bytes]]) -> tuple[list[dict], collections.Counter]:
    stage = DecodeStage(DecodeConfig(min_side=8, max_pixels=4_000_000, max_side=64), clip_size=24)
    out = []
    for start in range(0, len(cases), 64):  # through __call__, as Ray Data calls it: schema conversion included
        part = cases[start : start + 64]
        table = to_table([_row(start + i, data) for i, (_, data) in enumerate(part)])
        out += stage(table).to_pylist()
    outcomes = collections.Counter("sample" if r["reject_stage"] is None else f"{r['reject_stage']}/{r['reject_reason']}"
                                   for r in out)
    return out, outcomes


def check_accounted(cases, rows) -> None:
    assert len(rows) == len(cases)
    for (name, data), row in zip(cases, rows):
        if row["reject_stage"] is None:
            img = Image.open(io.BytesIO(row["image"]))
            img.load()
            assert img.mode == "RGB", name
            assert (img.width, img.height) == (row["width"], row["height"]) and max(img.size) <= 64, name
            assert row["ext"] in ("jpg", "png", "webp") and row["phash"] and len(row["clip_pixels"]) == 24 * 24 * 3
        else:
            assert row["reject_stage"] in ("decode", "filter") and row["reject_reason"], (name, row)
            assert row["image"] is None and row["clip_pixels"] is None
            detail = row["reject_detail"] or ""
            assert MARKER.decode() not in detail and "ZQX" not in detail, (name, detail)
            assert all(32 <= ord(c) < 127 for c in detail), (name, detail)


def test_seeded_mutations_of_valid_files_never_escape(artifacts_dir):
    rng = random.Random(2026)
    valid = list(valid_files().items())
    cases = [(name, data) for name, data in valid]
    for i in range(MUTATIONS):
        name, data = valid[i % len(valid)]
        cases.append((f"{name}#mut{i}", mutate(data, rng)))
    rows, outcomes = run_decode(cases)
    check_accounted(cases, rows)
    # the valid originals decode
    assert all(r["reject_stage"] is None for r in rows[: len(valid)]), [
        (n, r["reject_reason"], r["reject_detail"]) for (n, _), r in zip(valid, rows) if r["reject_stage"]]
    # the mutations exercise both outcomes, and several reasons
    assert outcomes["sample"] > 100 and sum(outcomes.values()) - outcomes["sample"] > 500
    assert {"decode/corrupt", "decode/truncated"} <= set(outcomes) or "decode/not_an_image" in outcomes
    (artifacts_dir / "hostile_decode_outcomes.txt").write_text(
        f"{len(cases)} cases ({MUTATIONS} mutations of {len(valid)} valid files)\n"
        + "\n".join(f"{k:40s} {v}" for k, v in outcomes.most_common()) + "\n")


def test_hand_made_odd_files_are_samples_or_clear_rejects():
    cases = list(odd_files().items())
    rows, outcomes = run_decode(cases)
    check_accounted(cases, rows)
    by_name = {name: row for (name, _), row in zip(cases, rows)}
    # valid-but-unusual images become RGB samples with transparency over white
    for name in ("png-rgb-trns", "png-l-trns", "png-rgba16", "png-la16",
                 "png-rgb16", "jpeg-huge-icc", "jpeg-broken-exif", "jpeg-exif-orientation-9"):
        assert by_name[name]["reject_stage"] is None, (name, by_name[name]["reject_reason"], by_name[name]["reject_detail"])
    for name in ("png-rgb-trns-short", "png-rgb-trns-long", "png-l-trns-odd", "png-huge-icc"):  # either is fine
        assert by_name[name]["reject_stage"] is None or by_name[name]["reject_reason"] == "corrupt", by_name[name]
    trns = Image.open(io.BytesIO(by_name["png-rgb-trns"]["image"])).convert("RGB")
    assert trns.getpixel((0, 0)) == (255, 255, 255)  # the tRNS colour is transparent: composited over white
    assert by_name["zero-bytes"]["reject_reason"] == "not_an_image"
    assert "0 bytes" in by_name["zero-bytes"]["reject_detail"] and "empty" in by_name["zero-bytes"]["reject_detail"]
    html = by_name["html-page"]
    assert html["reject_reason"] == "not_an_image" and "looks like HTML" in html["reject_detail"]
    assert "content type image/png" in html["reject_detail"]
    assert by_name["text-passwd-like"]["reject_reason"] == "not_an_image"
    assert "root:x" not in by_name["text-passwd-like"]["reject_detail"]
    assert by_name["bmp-huge-claimed"]["reject_reason"] in ("decompression_bomb", "corrupt", "truncated")
