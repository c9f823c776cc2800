"""The dashboard in a real browser: Playwright driving Debian's headless Chromium (never a
downloaded browser). Served live (refreshes as shards arrive) and exported as one offline file."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from datapipe.contract import Storage
from jobs.dashboard import DashboardServer, export_html
from jobs.dashboard.page import json_for_script, plotly_js
from jobs.statistics import load_stats_config, run_stats
from scenes.stats_dataset import PAYLOADS, make_dataset, write_captions, write_shard

CHROMIUM = os.environ.get("DEEPFUSION_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/setup.sh installs Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def open_page(browser, url: str):
    """A page that records console errors, page errors and any request leaving 127.0.0.1/file/data."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.errors, page.foreign = [], []
    page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
    page.on("pageerror", lambda e: page.errors.append(str(e)))

    def route(r):
        if re.match(r"^(https?://127\.0\.0\.1[:/]|file:|data:)", r.request.url):
            return r.continue_()
        page.foreign.append(r.request.url)
        return r.abort()

    page.route("**/*", route)
    page.goto(url)
    page.wait_for_selector("body[data-rendered]", timeout=30_000)
    return page


CHARTS_WITH_DATA = """() => [...document.querySelectorAll('.chart')].map(d => ({
    id: d.id, traces: (d.data || []).length,
    points: (d.data || []).reduce((n, t) => n + (t.y || t.x || []).length, 0),
    svg: d.querySelectorAll('.main-svg').length}))"""


def check_page(page, n_images: int) -> None:
    assert page.errors == [], page.errors
    assert page.foreign == [], f"the page tried to reach the network: {page.foreign}"
    charts = page.evaluate(CHARTS_WITH_DATA)
    assert len(charts) == 9
    for c in charts:
        assert c["traces"] > 0 and c["points"] > 0 and c["svg"] > 0, c
    items = page.locator(".gallery .item")
    assert items.count() == n_images
    for i in range(n_images):
        assert items.nth(i).locator("ol.captions li").count() == 6
    # hostile dataset text is shown as text and never runs
    assert page.evaluate("() => window.__pwned") is None
    assert page.locator("img[src='x']").count() == 0 and page.locator("#gallery script, #rejects script").count() == 0
    gallery_text = page.locator("#gallery").inner_text()
    assert "<script>window.__pwned = 'script'</script>" in gallery_text
    assert '<img src=x onerror="window.__pwned = \'img\'">' in gallery_text
    assert PAYLOADS[2] in page.locator("#rejects").inner_text() or PAYLOADS[2] in gallery_text
    # javascript: URLs are never links
    assert page.locator("a[href^='javascript']").count() == 0
    # the rejects explorer lists every stage/reason with examples; its reason buttons filter the table
    explorer = page.locator("#rejects-explorer tbody tr")
    assert explorer.count() >= 3
    first = explorer.first
    reason = first.get_attribute("data-reason")
    first.locator("button[data-filter]").click()
    assert page.locator("#reject-filter").input_value() == reason
    assert page.locator("#rejects tbody tr").count() == int(first.locator("td").nth(2).inner_text())
    page.select_option("#reject-filter", "")


def check_partial_version(page, keys: list[str]) -> None:
    """A version covering a few rows of one shard shows exactly those rows, captioned, and says so."""
    page.select_option("#gallery-version", "partial")
    tiles = page.locator(".gallery .item")
    assert [tiles.nth(i).get_attribute("data-key") for i in range(tiles.count())] == keys
    for i in range(tiles.count()):
        assert "partial: ok" in tiles.nth(i).inner_text() and "(no caption)" not in tiles.nth(i).inner_text()
    assert page.locator("#gallery-note").inner_text().startswith("5 of ")


def check_trace(page, key: str, url: str) -> None:
    """The search box: a key, then a URL, shows the row's trace in the page (as text)."""
    page.fill("#trace-q", key)
    page.click("#trace-go")
    page.wait_for_function(f"() => document.body.dataset.traced === {json.dumps(key)}")
    text = page.locator("#trace-out").inner_text()
    assert f"{key}: sample" in text and "captions  v1" in text, text
    page.fill("#trace-q", url)
    page.press("#trace-q", "Enter")
    page.wait_for_function(f"() => document.body.dataset.traced === {json.dumps(url)}")
    assert f"{key}: sample" in page.locator("#trace-out").inner_text()
    assert page.evaluate("() => window.__pwned") is None and page.locator("#trace-out *").count() == 0


def test_dashboard_live_in_chromium_refreshes_as_shards_arrive(tmp_path, browser, artifacts_dir):
    root = tmp_path / "ds"
    keys = make_dataset(str(root), shards=3, rows_per_shard=30)
    write_captions(Storage(str(root)), "partial", {"000001": keys["000001"][4:9]}, seed=7)  # 5 rows of one shard
    run_stats(load_stats_config(None, [f"root={root}"]), progress=False)
    server = DashboardServer(str(root), port=0, refresh_s=0.5, stats_every=0.5).start()
    try:
        page = open_page(browser, server.url)
        check_page(page, n_images=6)
        assert page.locator("#gallery-version").input_value() == "v1-fix"  # the most complete version
        check_partial_version(page, keys["000001"][4:6])
        check_trace(page, keys["000002"][3], f"https://img.example.com/000002/{int(keys['000002'][3][6:])}.png")
        # a hostile query is answered as text; an unknown key says so
        page.fill("#trace-q", "<img src=x onerror=\"window.__pwned='trace'\">")
        page.click("#trace-go")
        page.wait_for_function("() => document.body.dataset.traced.startsWith('<img')")
        assert "no committed row has this URL" in page.locator("#trace-out").inner_text()
        assert page.evaluate("() => window.__pwned") is None
        first = page.locator("body").get_attribute("data-rendered")
        assert page.locator("#headline .card .value").first.inner_text() == "3"
        page.select_option("#gallery-version", "v1")
        assert page.locator(".gallery .item").first.inner_text().count("v1: ") == 1
        page.screenshot(path=str(artifacts_dir / "dashboard-live.png"), full_page=True)

        new = write_shard(Storage(str(root)), 3, 30, seed=5)  # a curation job commits a shard
        write_captions(Storage(str(root)), "v1", {"000003": new}, seed=5)  # and the caption job reaches it
        page.wait_for_function(f"() => document.body.dataset.rendered !== {json.dumps(first)}", timeout=30_000)
        page.wait_for_function("() => document.querySelector('#headline .card .value').textContent === '4'",
                               timeout=30_000)
        check_page(page, n_images=8)
        headers = page.request.get(server.url).headers
        assert "default-src 'none'" in headers["content-security-policy"]
    finally:
        server.stop()


def test_dashboard_export_is_one_offline_file(tmp_path, browser, artifacts_dir):
    root = tmp_path / "ds"
    keys = make_dataset(str(root), shards=2, rows_per_shard=30)
    run_stats(load_stats_config(None, [f"root={root}"]), progress=False)
    out = export_html(str(root), tmp_path / "dashboard.html")
    text = out.read_text()
    assert "<script>window.__pwned" not in text and "<img src=x" not in text  # escaped inside the data block
    page = open_page(browser, out.as_uri())
    check_page(page, n_images=4)
    assert page.locator("#status").inner_text() == "static export"
    check_trace(page, keys["000001"][0], f"https://img.example.com/000001/{int(keys['000001'][0][6:])}.png")
    page.fill("#trace-q", "000001000029")  # a row whose trace the export does not hold
    page.click("#trace-go")
    assert "not among the" in page.locator("#trace-out").inner_text()
    page.screenshot(path=str(artifacts_dir / "dashboard-export.png"), full_page=True)


def test_embedded_json_cannot_close_its_script_block():
    hostile = {"t": "</script><script>alert(1)</script> & \u2028"}
    encoded = json_for_script(hostile)
    assert "<" not in encoded and ">" not in encoded and "&" not in encoded and "\u2028" not in encoded
    assert json.loads(encoded) == hostile
    assert b"</script" not in plotly_js().lower()  # inlining the bundled Plotly is safe too


def test_dashboard_export_needs_statistics_first(tmp_path):
    root = tmp_path / "ds"
    make_dataset(str(root), shards=1, rows_per_shard=5, captions=False)
    with pytest.raises(FileNotFoundError, match="deepfusion stats"):
        export_html(str(root), tmp_path / "x.html")
