"""The dashboard page. Offline by construction: Plotly comes from the installed plotly package
(plotly.js bundled in its wheel), the page's own CSS/JS from jobs/dashboard/assets/.

The static export inlines everything, data included. Data goes into a
`<script type="application/json">` block with `<`, `>`, `&` and the two JS line separators
written as \\u escapes, so no dataset text can end the block or be parsed as markup.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from pathlib import Path

from datapipe.contract import Storage

ASSETS = Path(__file__).resolve().parent / "assets"
JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def plotly_js() -> bytes:
    return resources.files("plotly").joinpath("package_data/plotly.min.js").read_bytes()


def asset(name: str) -> bytes:
    return (ASSETS / name).read_bytes()


def json_for_script(data) -> str:
    text = json.dumps(data, ensure_ascii=False)
    return "".join(JSON_ESCAPES.get(ch, ch) for ch in text)


def _inline_script(code: bytes) -> str:
    # plotly.min.js contains no "</script" (checked in the tests); ours neither
    return f"<script>{code.decode()}</script>"


BODY = """\
<header><h1>deepfusion dataset</h1><span class="meta" id="meta"></span><span class="meta live" id="status">loading</span></header>
<main>
<div class="cards" id="headline"></div>
<section><h2>Curation</h2><div class="charts">
<div class="chart" id="chart-funnel"></div><div class="chart" id="chart-reasons"></div>
<div class="chart" id="chart-resolution"></div><div class="chart" id="chart-aspect"></div>
<div class="chart" id="chart-scores"></div><div class="chart" id="chart-progress"></div>
</div></section>
<section><h2>Captions</h2><div class="charts">
<div class="chart" id="chart-coverage"></div><div class="chart" id="chart-words"></div><div class="chart" id="chart-finish"></div>
</div><h2>Caption versions</h2><div class="scroll" id="versions"></div></section>
<section><h2>Trace a row</h2><div class="controls"><input id="trace-q" type="search" placeholder="a key (12 digits) or a URL" aria-label="key or URL">
<button id="trace-go" type="button">trace</button><span class="meta" id="trace-note"></span></div>
<pre class="trace-out" id="trace-out"></pre></section>
<section><h2>Samples</h2><div class="controls"><label for="gallery-version">captions of</label><select id="gallery-version"></select>
<span class="meta" id="gallery-note"></span></div>
<div class="gallery" id="gallery"></div></section>
<section><h2>Rejects by stage and reason</h2><div class="scroll" id="rejects-explorer"></div>
<h2>Reject rows</h2><div class="controls"><select id="reject-filter"></select><span class="meta" id="rejects-note"></span></div>
<div class="scroll" id="rejects"></div></section>
</main>
"""


def render_page(mode: str = "live", refresh_s: float = 5, title: str = "deepfusion dataset",
                summary: dict | None = None, gallery: list | None = None, traces: dict | None = None) -> str:
    """live: assets and data are fetched from the dashboard server; static: everything inline."""
    if mode not in ("live", "static"):
        raise ValueError(f"mode must be live or static, got {mode!r}")
    head = ['<meta charset="utf-8">', '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{html.escape(title)}</title>"]
    if mode == "live":
        head.append('<link rel="stylesheet" href="assets/dashboard.css">')
        scripts = '<script src="assets/plotly.min.js"></script><script src="assets/dashboard.js"></script>'
        data = ""
    else:
        head.append(f"<style>{asset('dashboard.css').decode()}</style>")
        data = f'<script id="df-data" type="application/json">{json_for_script({"summary": summary, "gallery": gallery, "traces": traces or {}})}</script>'
        scripts = _inline_script(plotly_js()) + _inline_script(asset("dashboard.js"))
    return (f'<!doctype html><html lang="en"><head>{"".join(head)}</head>'
            f'<body data-mode="{mode}" data-refresh="{float(refresh_s)}">{BODY}{data}{scripts}</body></html>\n')


def export_traces(root: str, summary: dict, gallery: list, limit: int) -> dict:
    """The traces an offline page can show: its gallery's rows, then the rejects explorer's examples
    (at most `limit`), as {key: {"text": the trace, "urls": [its URL]}}."""
    from datapipe.contract import Dataset
    from jobs.trace import TraceConfig, format_trace, trace_key

    keys = [it["key"] for it in gallery]
    keys += [e["key"] for r in summary.get("rejects_explorer", []) for e in r["examples"]]
    ds, cfg, out = Dataset(root), TraceConfig(), {}
    for key in dict.fromkeys(keys):
        if len(out) >= limit:
            break
        row = trace_key(ds, key, cfg)
        out[key] = {"text": format_trace({"query": key, "root": ds.storage.uri, "rows": [row]}), "urls": [row.get("url")]}
    return out


def export_html(root: str, out: str | Path, traces: int = 200) -> Path:
    """Write the dashboard of a dataset (its current stats/) as one self-contained HTML file, with
    the traces of up to `traces` of the rows it shows."""
    from jobs.statistics.aggregate import GALLERY, SUMMARY

    storage = Storage(root)
    if not storage.exists(SUMMARY):
        raise FileNotFoundError(f"{storage.path(SUMMARY)} does not exist: run `deepfusion stats {root}` first")
    summary = json.loads(storage.read_bytes(SUMMARY))
    gallery = json.loads(storage.read_bytes(GALLERY)) if storage.exists(GALLERY) else []
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    page = render_page("static", summary=summary, gallery=gallery, traces=export_traces(root, summary, gallery, traces))
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out
