"""The dataset dashboard: one page over <root>/stats/, served on 127.0.0.1 or exported as one file.

    render_page(...)      the HTML (live: fetches data/*.json; static: data and Plotly inlined)
    export_html(root, f)  one self-contained HTML file, no network needed to open it
    serve(root, ...)      a local HTTP server; optionally re-runs the statistics as shards arrive
"""

from .page import export_html, render_page
from .server import DashboardServer

__all__ = ["render_page", "export_html", "DashboardServer"]
