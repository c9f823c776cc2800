"""The synthetic scenes corpus and its fault-injecting server, fetched by a real HTTP client."""

from __future__ import annotations

import io
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests
from PIL import Image, ImageOps

from datapipe.contract import LEVEL_WORD_BUDGETS
from scenes import FAULTS, CorpusConfig, ScenesServer, generate_scene, make_corpus, reference_captions, render


def test_scene_generation_is_deterministic():
    a, b = generate_scene("x", 1234), generate_scene("x", 1234)
    assert a == b and render(a).tobytes() == render(b).tobytes()
    assert generate_scene("x", 1235) != a


def test_max_count_caps_shapes_per_group_and_keeps_the_rest_of_the_scene():
    singles = 0
    for seed in range(200):
        full = generate_scene("s", seed, max_groups=1)
        one = generate_scene("s", seed, max_groups=1, max_count=1)
        assert len(one.objects) == 1
        # the same random draws: the one shape is the full scene's first, and its colours and ground
        assert one.objects[0] == full.objects[0] and one.background == full.background
        singles += len(full.objects) == 1
    assert 40 < singles < 160  # the default still draws groups of 1-4 shapes
    assert generate_scene("s", 7) == generate_scene("s", 7, max_count=4)
    with pytest.raises(ValueError, match="max_count"):
        CorpusConfig(max_count=0)


def test_rendered_pixels_match_the_scene_graph():
    for seed in range(30):
        scene = generate_scene("s", seed)
        pixels = np.asarray(render(scene)).reshape(-1, 3)
        colours = {tuple(p) for p in np.unique(pixels, axis=0)}
        expected = {scene.background_rgb} | {o.rgb for o in scene.objects}
        if scene.text:
            expected.add(scene.text.rgb)
        assert colours == expected  # flat colours, no anti-aliasing: pixels are the truth
        for o in scene.objects:  # each object's centre pixel has its colour
            x, y = int(o.cx * scene.width), int(o.cy * scene.height)
            assert tuple(np.asarray(render(scene))[y, x]) == o.rgb


def test_reference_captions_grow_and_respect_budgets():
    for seed in range(500):
        scene = generate_scene("s", seed)
        caps = reference_captions(scene)
        words = [len(c.split()) for c in caps]
        assert all(w <= LEVEL_WORD_BUDGETS[i + 1] for i, w in enumerate(words))
        assert words == sorted(words) and len(set(words)) == 6, (seed, words)
        main = scene.groups()[0][0]
        assert main.color in caps[0] and main.shape in caps[0]
        for o in scene.objects:  # level 6 names every object's exact RGB
            assert f"RGB {o.rgb[0]}, {o.rgb[1]}, {o.rgb[2]}" in caps[5]
        if scene.text:
            assert scene.text.text in caps[2] and scene.text.text in caps[5]
            assert scene.text.text not in caps[1]


def test_corpus_is_deterministic_and_complete(tmp_path):
    cfg = CorpusConfig(n=60, seed=3, faults=0.4, duplicates=0.1, near_duplicates=0.05)
    make_corpus(tmp_path / "a", cfg, progress=False)
    make_corpus(tmp_path / "b", cfg, progress=False)
    ta = pq.read_table(tmp_path / "a/ground_truth.parquet")
    tb = pq.read_table(tmp_path / "b/ground_truth.parquet")
    assert ta.equals(tb)
    urls = pq.read_table(tmp_path / "a/urls.parquet")
    assert urls.column_names == ["URL", "TEXT", "WIDTH", "HEIGHT", "scene_id"] and urls.num_rows == 60
    assert len(set(urls.column("URL").to_pylist())) == 60
    truth = ta.to_pylist()
    assert sum(t["kind"] == "duplicate" for t in truth) == 6
    for t in truth:
        if t["duplicate_of"] is not None:
            original = truth[t["duplicate_of"]]
            assert original["kind"] == "ok" and original["scene_id"] == t["scene_id"]
    for name in sorted({p.name for p in (tmp_path / "a/images").iterdir()}):
        assert (tmp_path / "a/images" / name).read_bytes() == (tmp_path / "b/images" / name).read_bytes()


# -- the server ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from conftest import free_port

    folder = tmp_path_factory.mktemp("corpus")
    port = free_port()
    make_corpus(folder, CorpusConfig(n=3, seed=5, base_url=f"http://127.0.0.1:{port}"), progress=False)
    with ScenesServer(folder, hang_seconds=5, drip_interval=0.5) as server:
        scene_id = pq.read_table(folder / "ground_truth.parquet").column("scene_id")[0].as_py()
        base = Image.open(folder / "images" / f"{scene_id}.png").convert("RGB")
        yield server, scene_id, base


def fault_url(server, fault, scene_id):
    return f"{server.url}/fault/{fault}/{scene_id}.{FAULTS[fault].ext}"


def decode(resp) -> Image.Image:
    img = Image.open(io.BytesIO(resp.content))
    img.load()
    return img


def close_to(a: Image.Image, b: Image.Image, tol: float = 6.0) -> bool:
    return a.size == b.size and float(np.abs(np.asarray(a, float) - np.asarray(b, float)).mean()) <= tol


def check_http_404(r, base): assert r.status_code == 404
def check_http_500(r, base): assert r.status_code == 500
def check_html(r, base):
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    with pytest.raises(Image.UnidentifiedImageError):
        decode(r)
def check_noai(r, base):
    assert r.headers["X-Robots-Tag"] == "noai, noimageai" and close_to(decode(r).convert("RGB"), base, 0)
def check_truncated_image(r, base):
    assert r.status_code == 200 and int(r.headers["Content-Length"]) == len(r.content)
    with pytest.raises(OSError):
        decode(r)
def check_corrupt(r, base):
    assert r.status_code == 200 and r.content.startswith(b"\x89PNG")
    with pytest.raises(Image.UnidentifiedImageError):
        decode(r)
def check_bomb(r, base):
    assert len(r.content) < 1_000_000
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(r.content))
    Image.MAX_IMAGE_PIXELS, saved = None, Image.MAX_IMAGE_PIXELS
    try:
        assert Image.open(io.BytesIO(r.content)).size == (40000, 40000)
    finally:
        Image.MAX_IMAGE_PIXELS = saved
def check_mislabeled(r, base):
    assert r.headers["Content-Type"].startswith("text/plain") and close_to(decode(r).convert("RGB"), base, 0)
def check_redirect(r, base):
    assert [h.status_code for h in r.history] == [302] and r.url.endswith(".png") and "/images/" in r.url
    assert close_to(decode(r).convert("RGB"), base, 0)
def check_cmyk(r, base):
    img = decode(r)
    assert img.mode == "CMYK" and close_to(img.convert("RGB"), base, 12)
def check_gray16(r, base):
    img = decode(r)
    assert img.mode.startswith("I") and np.asarray(img).max() > 255  # real 16-bit values
def check_palette(r, base):
    img = decode(r)
    assert img.mode == "P" and close_to(img.convert("RGB"), base, 1)
def check_alpha(r, base):
    img = decode(r)
    assert img.mode == "RGBA" and img.getpixel((0, 0))[3] == 0 and img.getpixel((base.width // 2, base.height // 2))[3] == 255
def check_animated(r, base):
    img = decode(r)
    assert img.format == "GIF" and img.n_frames == 2
    img.seek(0)
    assert close_to(img.convert("RGB"), base, 1)
def check_exif_rotate(r, base):
    img = decode(r)
    assert img.size == (base.height, base.width) and img.getexif()[0x0112] == 6
    assert close_to(ImageOps.exif_transpose(img).convert("RGB"), base, 6)
def check_large(r, base): assert max(decode(r).size) == 2048
def check_tiny(r, base): assert decode(r).size == (24, 24)
def check_extreme_aspect(r, base):
    w, h = decode(r).size
    assert w / h >= 16


CHECKS = {name[len("check_"):]: fn for name, fn in globals().items() if name.startswith("check_")}
TRANSPORT_FAULTS = {"timeout", "slow_body", "truncated", "redirect_loop"}


def test_every_fault_has_a_check():
    assert set(FAULTS) == set(CHECKS) | TRANSPORT_FAULTS


@pytest.mark.parametrize("fault", sorted(CHECKS))
def test_fault_behaves_as_declared(served, fault):
    server, scene_id, base = served
    resp = requests.get(fault_url(server, fault, scene_id), timeout=10)
    CHECKS[fault](resp, base)


def test_timeout_sends_nothing(served):
    server, scene_id, _ = served
    t0 = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(fault_url(server, "timeout", scene_id), timeout=1.0)
    assert time.monotonic() - t0 < 4


def test_slow_body_trickles(served):
    server, scene_id, base = served
    with requests.get(fault_url(server, "slow_body", scene_id), stream=True, timeout=5) as r:
        assert r.status_code == 200
        total = int(r.headers["Content-Length"])
        got, t0 = 0, time.monotonic()
        for chunk in r.iter_content(64):
            got += len(chunk)
            if time.monotonic() - t0 > 1.2:
                break
        assert 0 < got < total  # some bytes, far from all of them after a second


def test_truncated_hangs_up_mid_body(served):
    server, scene_id, _ = served
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(fault_url(server, "truncated", scene_id), timeout=5)


def test_redirect_loop(served):
    server, scene_id, _ = served
    with pytest.raises(requests.exceptions.TooManyRedirects):
        requests.get(fault_url(server, "redirect_loop", scene_id), timeout=5)


def test_duplicates_and_near_duplicates(served):
    server, scene_id, base = served
    a = requests.get(f"{server.url}/images/{scene_id}.png", timeout=5)
    b = requests.get(f"{server.url}/dup/9/{scene_id}.png", timeout=5)
    c = requests.get(f"{server.url}/near/9/{scene_id}.jpg", timeout=5)
    assert a.content == b.content and a.content != c.content
    assert close_to(decode(c).convert("RGB"), base, 6)
    assert requests.get(f"{server.url}/images/nope.png", timeout=5).status_code == 404
    assert requests.get(f"{server.url}/images/..%2fcorpus.json", timeout=5).status_code == 404
    stats = requests.get(f"{server.url}/stats", timeout=5).json()
    assert stats["dup"] >= 1 and stats["near"] >= 1


def test_hold_keeps_image_requests_unanswered_until_release(served):
    server, scene_id, _ = served
    before = server.requests_arrived()
    server.hold()
    try:
        assert requests.get(f"{server.url}/health", timeout=5).ok  # liveness still answers
        with pytest.raises(requests.exceptions.ReadTimeout):
            requests.get(f"{server.url}/images/{scene_id}.png", timeout=0.5)
        assert server.requests_arrived() == before + 1
    finally:
        server.release()
    assert requests.get(f"{server.url}/images/{scene_id}.png", timeout=5).ok
