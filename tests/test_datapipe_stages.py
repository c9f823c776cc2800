"""datapipe stages one by one, without Ray: inputs, the download patch, decode, CLIP + heads, dedup."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import urllib.request

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from PIL import Image

from helpers import tiny_clip_files

from datapipe.config import ClipConfig, CurateConfig, DecodeConfig, DedupConfig, DownloadConfig, HeadConfig, InputConfig
from datapipe.download import LIMITS, MemorySampleWriter, classify_error, download_image, download_rows, install_download_patch
from datapipe.filters.decode import DecodeStage
from datapipe.inputs import iter_shards
from datapipe.rows import ROW_SCHEMA, to_table
from datapipe.urlpolicy import UrlPolicyConfig
from scenes import CorpusConfig, ScenesServer, make_corpus
from scenes import variants
from scenes.graph import generate_scene
from scenes.render import render

ROWS = [{"URL": f"http://h/{i}.png", "TEXT": f"caption {i}", "WIDTH": 64 + i, "HEIGHT": 64, "key": f"k{i}"}
        for i in range(23)]


def _write(path, fmt, rows):
    table = pa.Table.from_pylist(rows)
    if fmt == "parquet":
        pq.write_table(table, path)
    elif fmt in ("csv", "tsv"):
        pa_csv.write_csv(table, path, pa_csv.WriteOptions(delimiter="\t" if fmt == "tsv" else ","))
    elif fmt == "jsonl.gz":
        with gzip.open(path, "wt") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


@pytest.mark.parametrize("fmt", ["parquet", "csv", "tsv", "jsonl.gz"])
def test_inputs_stream_into_a_stable_shard_plan(tmp_path, fmt):
    # the list split over two files: shards span file boundaries, keys follow input order
    _write(tmp_path / f"a.{fmt}", fmt, ROWS[:10])
    _write(tmp_path / f"b.{fmt}", fmt, ROWS[10:])
    cfg = InputConfig(paths=[str(tmp_path)], batch_rows=4)
    shards = list(iter_shards(cfg, shard_size=7))
    assert [s.rows.num_rows for s in shards] == [7, 7, 7, 2]
    rows = [r for s in shards for r in s.rows.to_pylist()]
    assert [r["url"] for r in rows] == [r["URL"] for r in ROWS]
    assert [r["caption"] for r in rows] == [r["TEXT"] for r in ROWS]
    assert [r["key"] for r in rows][:8] == [f"000000{i:06d}" for i in range(7)] + ["000001000000"]
    extra = json.loads(rows[3]["extra"])
    assert int(extra["WIDTH"]) == 67 and extra["source_key"] == "k3"  # a clashing name is prefixed
    # the plan does not depend on how the files are read
    again = list(iter_shards(InputConfig(paths=[str(tmp_path / "*")], batch_rows=1000), shard_size=7))
    assert [s.rows.to_pylist() for s in again] == [s.rows.to_pylist() for s in shards]


def test_inputs_column_mapping_and_clear_errors(tmp_path):
    _write(tmp_path / "l.parquet", "parquet", [{"link": "http://x/1.png", "alt": "a", "junk": 1}])
    cfg = InputConfig(paths=[str(tmp_path / "l.parquet")], url_column="link", caption_column="alt", extra_columns=[])
    (shard,) = iter_shards(cfg, 10)
    assert shard.rows.to_pylist()[0] | {"extra": None} == {"key": "000000000000", "url": "http://x/1.png",
                                                           "caption": "a", "extra": None}
    with pytest.raises(ValueError, match="no URL column 'URL'"):
        list(iter_shards(InputConfig(paths=[str(tmp_path / "l.parquet")]), 10))
    with pytest.raises(FileNotFoundError, match="matches no file"):
        list(iter_shards(InputConfig(paths=[str(tmp_path / "missing.parquet")]), 10))


def test_error_messages_map_to_reasons():
    # our fetch's own "[reason] detail" messages, img2dataset's fixed resizer messages, and nothing else
    assert classify_error("[http_404] HTTP 404 Not Found") == ("download", "http_404", "HTTP 404 Not Found")
    assert classify_error("[url_address] refused")[:2] == ("download", "url_address")
    assert classify_error("image too small")[:2] == ("filter", "too_small")
    assert classify_error("image area too large")[:2] == ("decode", "decompression_bomb")
    # an unknown message is not copied into the reject (it could carry what a server sent)
    assert classify_error("HTTP Error 500: <html>secret</html>") == (
        "download", "error", "img2dataset reported an unclassified error")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from conftest import free_port

    port = free_port()
    folder = tmp_path_factory.mktemp("corpus")
    make_corpus(folder, CorpusConfig(n=4, base_url=f"http://127.0.0.1:{port}"), progress=False)
    scene = pq.read_table(folder / "ground_truth.parquet").column("scene_id")[0].as_py()
    with ScenesServer(folder, port=port, hang_seconds=20, drip_interval=0.2) as s:
        # the URL policy refuses loopback unless allow-listed: this server's port is
        install_download_patch(DownloadConfig(url_policy=UrlPolicyConfig(allow=[f"127.0.0.1:{port}"])), DecodeConfig())
        yield s.url, scene


def test_download_patch_cuts_slow_bodies_and_honours_opt_out(server, monkeypatch):
    url, scene = server
    monkeypatch.setitem(LIMITS, "deadline_s", 1.5)
    _, body, err = download_image((0, f"{url}/images/{scene}.png"), 5, "deepfusion", {"noai"})
    assert err is None and body.read().startswith(b"\x89PNG")
    _, body, err = download_image((0, f"{url}/fault/slow_body/{scene}.png"), 5, "deepfusion", {"noai"})
    assert body is None and classify_error(err)[:2] == ("download", "too_slow")
    _, body, err = download_image((0, f"{url}/fault/truncated/{scene}.png"), 5, "deepfusion", {"noai"})
    assert body is None and classify_error(err)[:2] == ("download", "truncated")
    _, body, err = download_image((0, f"{url}/fault/noai/{scene}.png"), 5, "deepfusion", {"noai"})
    assert body is None and classify_error(err)[:2] == ("download", "opt_out")
    _, body, err = download_image((0, f"{url}/fault/http_500/{scene}.png"), 5, "deepfusion", {"noai"})
    assert body is None and err == "[http_500] HTTP 500 Internal Server Error"  # not the server's page
    monkeypatch.setitem(LIMITS, "max_bytes", 100)
    _, body, err = download_image((0, f"{url}/images/{scene}.png"), 5, "deepfusion", {"noai"})
    assert body is None and classify_error(err)[:2] == ("download", "too_large")


def test_download_stage_joins_img2dataset_results_to_every_input_row(server, tmp_path, monkeypatch):
    """img2dataset's Downloader on one shard (no Ray): one row back per input row, in input order."""
    url, scene = server
    monkeypatch.setattr("img2dataset.downloader.download_image", None)  # the stage installs the patch itself
    paths = ["images", "fault/http_404", "fault/noai", "fault/truncated", "images", "fault/slow_body"]
    rows = [{"key": f"000003{i:06d}", "url": f"{url}/{p}/{scene}.png", "caption": p, "extra": "{}"}
            for i, p in enumerate(paths)]
    monkeypatch.setattr("datapipe.download.LIMITS", dict(LIMITS))
    port = url.rsplit(":", 1)[1]
    cfg = DownloadConfig(threads=4, timeout_s=5, deadline_s=1.5, encode_format="png",
                         url_policy=UrlPolicyConfig(allow=[f"127.0.0.1:{port}"]))
    out = download_rows(tmp_path / "download" / "000003", cfg, DecodeConfig(), 6, "000003", pa.Table.from_pylist(rows))
    assert [r["key"] for r in out] == [r["key"] for r in rows] and {r["shard"] for r in out} == {"000003"}
    assert [(r["reject_stage"], r["reject_reason"]) for r in out] == [
        (None, None), ("download", "http_404"), ("download", "opt_out"), ("download", "truncated"), (None, None),
        ("download", "too_slow")]
    body = urllib.request.urlopen(f"{url}/images/{scene}.png", timeout=5).read()
    for r in (out[0], out[4]):
        assert r["image"] == body and r["ext"] == "png" and r["source_sha256"] == hashlib.sha256(body).hexdigest()
    assert all(r["image"] is None for r in out if r["reject_stage"])
    assert MemorySampleWriter.results == {} and not (tmp_path / "download" / "000003").exists()


def _row(image: bytes, key="000000000000", **kw):
    return {"key": key, "shard": "000000", "url": "u", "caption": "c", "extra": "{}", "image": image, **kw}


def _decode(images: dict[str, bytes], cfg=DecodeConfig(min_side=64, max_aspect=3.0, max_side=512), clip_size=None):
    table = to_table([_row(img, key=f"{i:012d}") for i, img in enumerate(images.values())])
    out = DecodeStage(cfg, clip_size=clip_size)(table)
    assert out.schema == ROW_SCHEMA
    return dict(zip(images, out.to_pylist()))


@pytest.fixture(scope="module")
def scene_image():
    return render(generate_scene("s", seed=3, size=(160, 96), text_probability=0.0))


def _close(a: Image.Image, b: Image.Image, tol: float) -> bool:
    b = b.resize(a.size, Image.BILINEAR)
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean()) < tol


def test_decode_normalises_every_mode_to_rgb(scene_image):
    encodings = {name: variants.ENCODINGS[name][0](scene_image) for name in
                 ("png", "cmyk", "gray16", "palette", "alpha", "animated", "exif_rotate", "large")}
    encodings["webp"] = variants._save(scene_image, "WEBP", lossless=True)
    out = _decode(encodings, clip_size=32)
    for name, row in out.items():
        assert row["reject_stage"] is None, (name, row["reject_reason"], row["reject_detail"])
        img = Image.open(io.BytesIO(row["image"]))
        assert img.mode == "RGB" and img.size == (row["width"], row["height"]), name
        assert {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[row["ext"]] == img.format, name
        reference = scene_image.convert("L").convert("RGB") if name == "gray16" else scene_image
        assert _close(img, reference, 12.0), name  # upright, right colours
        assert len(row["clip_pixels"]) == 32 * 32 * 3 and len(row["phash"]) == 64
    assert out["png"]["image"] == encodings["png"]  # nothing to change: original bytes kept
    assert out["exif_rotate"]["image"] != encodings["exif_rotate"]  # turned upright, re-encoded
    assert (out["exif_rotate"]["width"], out["exif_rotate"]["height"]) == (160, 96)
    assert (out["large"]["width"], out["large"]["height"]) == (512, 307)  # downscaled to max_side
    assert (out["large"]["original_width"], out["large"]["original_height"]) == (2048, 1229)
    assert out["animated"]["ext"] == "png"  # GIF is not a stored format


def test_decode_rejects_with_reasons(scene_image):
    out = _decode({
        "html": b"<!doctype html><html></html>",
        "truncated": variants.ENCODINGS["truncated_image"][0](scene_image),
        "corrupt": variants.ENCODINGS["corrupt"][0](scene_image),
        "bomb": variants.decompression_bomb(),
        "tiny": variants.tiny_png(scene_image),
        "aspect": variants.extreme_aspect_png(scene_image),
    })
    got = {name: (r["reject_stage"], r["reject_reason"]) for name, r in out.items()}
    assert got == {"html": ("decode", "not_an_image"), "truncated": ("decode", "truncated"),
                   "corrupt": ("decode", got["corrupt"][1]), "bomb": ("decode", "decompression_bomb"),
                   "tiny": ("filter", "too_small"), "aspect": ("filter", "bad_aspect")}
    assert got["corrupt"][1] in ("corrupt", "not_an_image", "truncated")
    assert all(r["image"] is None for r in out.values())  # rejected rows carry no pixels on


def test_decode_off_reads_headers_only(scene_image):
    cfg = DecodeConfig(enabled=False)
    out = _decode({"png": variants.png(scene_image), "gif": variants.ENCODINGS["animated"][0](scene_image),
                   "truncated": variants.ENCODINGS["truncated_image"][0](scene_image)}, cfg=cfg)
    assert (out["png"]["ext"], out["png"]["width"], out["png"]["height"]) == ("png", 160, 96)
    assert out["gif"]["reject_reason"] == "unsupported_format"
    assert out["truncated"]["reject_stage"] is None  # what "filters off" gives up: no pixel is checked
    with pytest.raises(ValueError, match="no pixels"):
        CurateConfig(decode=cfg)


def test_dedup_verdicts_exact_phash_and_clip_against_the_index_and_within_the_shard():
    from datapipe.dedup import PartitionIndex, decide
    from datapipe.dedup.service import hashes_of

    cfg = DedupConfig(sha256=True, phash_distance=4, clip_cosine=0.9)
    zeros = "0" * 48
    emb = lambda *v: np.array([*v, 0, 0][:4], np.float16).tobytes()  # noqa: E731
    index = PartitionIndex(256, cfg.phash_segments, cfg.phash_flips,
                           clip_centroids=np.eye(4, dtype=np.float32), clip_nprobe=4)
    sha = lambda s: hashlib.sha256(s.encode()).hexdigest()  # noqa: E731
    kept = hashes_of([{"key": "000000000005", "source_sha256": sha("s1"), "phash": "ffff000000000000" + zeros,
                       "clip_embedding": emb(1, 0)}], None)
    index.insert({"sha": (kept.orders, kept.sha), "phash": (kept.orders, kept.phash), "clip": (kept.orders, kept.clip)})
    rows = [{"key": "000001000000", "source_sha256": sha("s1"), "phash": "0f" * 32, "clip_embedding": emb(0, 1)},
            {"key": "000001000001", "source_sha256": sha("s2"), "phash": "ffff000000000000" + "0" * 47 + "7",
             "clip_embedding": emb(0, 1)},  # 3 bits from the kept hash
            {"key": "000001000002", "source_sha256": sha("s3"), "phash": "ffff00000000001f" + zeros,
             "clip_embedding": emb(0.6, 0.8)},  # 5 bits: not near; cosine 0.6: not near
            {"key": "000001000003", "source_sha256": sha("s4"), "phash": "aa" * 32, "clip_embedding": emb(0.95, 0.31)},
            {"key": "000001000004", "source_sha256": sha("s3"), "phash": "55" * 32, "clip_embedding": emb(0, 0, 1)}]
    h = hashes_of(rows, None)
    before = 1 * 10**6
    verdicts = decide(h, cfg, index.query_sha(h.sha, before), index.query_phash(h.phash, 4, before),
                      index.query_clip(h.clip, 0.9, before))
    assert [v and v.reason for v in verdicts] == ["duplicate", "near_duplicate_phash", None, "near_duplicate_clip",
                                                 "duplicate"]
    assert verdicts[0].detail == "same bytes (sha256) as 000000000005"
    assert verdicts[1].detail == "phash distance 3 to 000000000005"
    assert verdicts[4].detail == "same bytes (sha256) as 000001000002"  # an earlier row of the same shard
    # the index never answers with rows from the querying shard or later ones
    assert index.query_sha(h.sha[:1], 5) == [None]


def test_config_refuses_contradictions():
    with pytest.raises(ValueError, match="clip.enabled"):
        CurateConfig(dedup=DedupConfig(clip_cosine=0.9))
    with pytest.raises(ValueError, match="clip.aesthetic.weights"):
        CurateConfig(clip=ClipConfig(aesthetic=HeadConfig(weights="x.safetensors")))


def test_clip_stage_scores_and_thresholds(tmp_path, scene_image):
    from datapipe.filters.clip import ClipStage
    from datapipe.filters.heads import load_head

    tiny_clip_files(tmp_path)
    with pytest.raises(ValueError, match="nothing is downloaded"):
        ClipStage(ClipConfig(enabled=True, model="tiny-clip", model_config=str(tmp_path / "tiny-clip.json")))
    cfg = ClipConfig(enabled=True, model="tiny-clip", model_config=str(tmp_path / "tiny-clip.json"),
                     allow_random_init=True, batch_size=3,
                     aesthetic=HeadConfig(weights=str(tmp_path / "aesthetic.safetensors")),
                     nsfw=HeadConfig(weights=str(tmp_path / "nsfw.safetensors")),
                     watermark=HeadConfig(weights=str(tmp_path / "watermark.safetensors")))
    images = {f"i{i}": variants.png(scene_image.rotate(i * 40)) for i in range(7)}
    decoded = _decode(images, clip_size=32)
    table = to_table(list(decoded.values()))
    stage = ClipStage(cfg)
    rows = stage(table).to_pylist()
    for r in rows:
        assert r["reject_stage"] is None and r["clip_pixels"] is None
        emb = np.frombuffer(r["clip_embedding"], np.float16).astype(np.float32)
        assert emb.shape == (32,) and abs(np.linalg.norm(emb) - 1) < 1e-2
        assert -100 <= r["clip_score"] <= 100 and 0 <= r["nsfw"] <= 1 and 0 <= r["watermark"] <= 1
        # the stored head score is the head applied to the stored embedding
        expect = load_head(tmp_path / "nsfw.safetensors")(__import__("torch").from_numpy(emb)[None]).item()
        assert abs(expect - r["nsfw"]) < 1e-2
    # a threshold between the scores rejects exactly the rows on the wrong side, with the value
    median = float(np.median([r["nsfw"] for r in rows]))
    cfg.nsfw.max = median
    rows2 = ClipStage(cfg)(table).to_pylist()
    for r, r2 in zip(rows, rows2):
        if r["nsfw"] > median + 1e-6:
            assert (r2["reject_stage"], r2["reject_reason"]) == ("filter", "high_nsfw")
        elif r["nsfw"] < median - 1e-6:
            assert r2["reject_stage"] is None


def test_the_download_stage_loads_img2dataset_without_torch_and_the_rest_of_it_still_works(tmp_path):
    """A shard task loads img2dataset's downloader alone: not its package __init__ (torch), not
    wandb (its logger's import, for a feature a task never uses), not its Resizer (albumentations,
    OpenCV) in resize mode keep. Everything it skipped still works when asked for."""
    import subprocess
    import sys

    code = f"""
import io, sys
from datapipe.config import CurateConfig
from datapipe.download import install_download_patch, download_image, _downloader, PassThroughResizer
import datapipe.shard_task
cfg = CurateConfig()
install_download_patch(cfg.download, cfg.decode)
from img2dataset.downloader import Downloader
import img2dataset.downloader
assert img2dataset.downloader.download_image is download_image
downloader = _downloader(cfg.download, cfg.decode, 10, {str(tmp_path)!r})
assert isinstance(downloader.resizer, PassThroughResizer)
print("skipped:", [m for m in ("torch", "wandb.sdk", "albumentations", "cv2") if m in sys.modules])
from img2dataset.resizer import Resizer
real = Resizer(image_size=64, resize_mode="no", resize_only_if_bigger=True, encode_format="png", encode_quality=3,
               skip_reencode=True, disable_all_reencoding=True)
assert real(io.BytesIO(b"abc")) == downloader.resizer(io.BytesIO(b"abc")) == (b"abc", None, None, None, None, None)
import img2dataset.logger
print("wandb works:", callable(img2dataset.logger.wandb.init), "wandb.sdk" in sys.modules)
import img2dataset
print("download:", callable(img2dataset.download), "main:", callable(img2dataset.main))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "skipped: []" in out.stdout, out.stdout
    assert "wandb works: True True" in out.stdout and "download: True main: True" in out.stdout
