// deepfusion dashboard. Renders <root>/stats/summary.json and gallery.json with bundled Plotly.
//
// Every string from the dataset (alt texts, captions, URLs, reject details) is untrusted web
// text: it reaches the page only through textContent or as escaped Plotly labels, never as HTML.
"use strict";
(function () {
  const LEVELS = 6;
  const page = document.body.dataset;

  // -- DOM helpers: text only ------------------------------------------------------------------
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "text") node.textContent = v == null ? "" : String(v);
      else if (k === "class") node.className = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) if (c != null) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return node;
  }
  const $ = (id) => document.getElementById(id);
  const fmt = (v, digits) => v == null ? "n/a" : (typeof v === "number" ? v.toLocaleString(undefined, { maximumFractionDigits: digits ?? 3 }) : String(v));
  const pct = (v) => v == null ? "n/a" : (100 * v).toFixed(1) + "%";
  // Plotly renders a few HTML-like tags inside labels; dataset-derived labels are escaped first.
  const plain = (s) => String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  const safeHref = (u) => /^https?:\/\//i.test(u || "") ? u : null;

  // -- charts ----------------------------------------------------------------------------------
  const CONFIG = { displaylogo: false, responsive: true };
  function chart(id, title, traces, layout) {
    const div = $(id);
    const has = traces.some((t) => (t.y || t.x || t.values || []).length > 0);
    Plotly.purge(div);
    div.replaceChildren();
    div.classList.toggle("empty", !has);
    if (!has) { div.textContent = title + ": no data yet"; return; }
    Plotly.react(div, traces, Object.assign({
      title: { text: title, font: { size: 14 } }, margin: { l: 50, r: 10, t: 40, b: 50 }, height: 300,
      legend: { orientation: "h" }, bargap: 0.05,
    }, layout || {}), CONFIG);
  }
  const hist = (h, name) => h ? { type: "bar", name, x: h.x, y: h.y, width: h.width } : { type: "bar", x: [], y: [] };

  function renderCharts(s) {
    chart("chart-funnel", "Rows entering each stage", [
      { type: "bar", name: "passed", x: s.funnel.map((f) => f.stage), y: s.funnel.map((f) => f.entering - f.rejected) },
      { type: "bar", name: "rejected", x: s.funnel.map((f) => f.stage), y: s.funnel.map((f) => f.rejected) },
    ], { barmode: "stack" });
    chart("chart-reasons", "Rejects by stage / reason", [{
      type: "bar", orientation: "h", y: s.rejects_by_reason.map((r) => plain(r.stage + " / " + r.reason)),
      x: s.rejects_by_reason.map((r) => r.count),
      text: s.rejects_by_reason.map((r) => pct(r.rate) + " of stage"), hoverinfo: "x+y+text",
    }], { yaxis: { automargin: true }, margin: { l: 160, r: 10, t: 40, b: 40 } });
    chart("chart-resolution", "Resolution (longest side, px)", [hist(s.resolution, "original"), hist(s.stored_resolution, "stored")],
      { barmode: "overlay" });
    chart("chart-aspect", "Aspect ratio (log2 width/height)", [hist(s.aspect_log2, "images")]);
    // one panel per score: CLIP similarity, aesthetic, NSFW and watermark live on different scales
    const scores = Object.entries(s.scores).filter(([, h]) => h);
    const axes = {};
    scores.forEach(([name], i) => {
      axes["xaxis" + (i ? i + 1 : "")] = { title: { text: plain(name), font: { size: 11 } } };
    });
    chart("chart-scores", "Score distributions", scores.map(([name, h], i) =>
      Object.assign(hist(h, name), { xaxis: "x" + (i ? i + 1 : ""), yaxis: "y" + (i ? i + 1 : "") })),
      Object.assign({ grid: { rows: 1, columns: Math.max(scores.length, 1), pattern: "independent" }, showlegend: false }, axes));
    chart("chart-progress", "Shard progress over time", [
      { type: "scatter", mode: "lines+markers", name: "samples", x: s.progress.map((p) => p.committed_at), y: s.progress.map((p) => p.samples) },
      { type: "scatter", mode: "lines+markers", name: "input rows", x: s.progress.map((p) => p.committed_at), y: s.progress.map((p) => p.inputs) },
    ]);
    const v = s.captions;
    chart("chart-coverage", "Caption coverage per version", [{
      type: "bar", x: v.map((c) => plain(c.version)), y: v.map((c) => c.coverage), text: v.map((c) => pct(c.coverage)),
    }], { yaxis: { range: [0, 1], tickformat: ".0%" } });
    chart("chart-words", "Words per caption level (mean)", v.map((c) => ({
      type: "bar", name: plain(c.version), x: c.words.map((w) => "level " + w.level), y: c.words.map((w) => w.mean),
    })), { barmode: "group" });
    const reasons = [...new Set(v.flatMap((c) => Object.keys(c.finish_reasons)))];
    chart("chart-finish", "Finish reasons per version", reasons.map((r) => ({
      type: "bar", name: plain(r), x: v.map((c) => plain(c.version)), y: v.map((c) => c.finish_reasons[r] || 0),
    })), { barmode: "stack" });
  }

  // -- headline, tables, gallery ----------------------------------------------------------------
  function renderHeadline(s) {
    const h = s.headline;
    const cards = [["shards", h.shards], ["input rows", h.inputs], ["samples", h.samples], ["rejects", h.rejects],
      ["pass rate", pct(h.pass_rate)], ["duplicates", h.duplicates], ["caption versions", h.caption_versions]];
    $("headline").replaceChildren(...cards.map(([label, value]) =>
      el("div", { class: "card" }, el("div", { class: "value", text: fmt(value) }), el("div", { class: "label", text: label }))));
    $("meta").textContent = s.root + " · stats of " + s.created_at;
  }

  function table(columns, rows) {
    return el("table", {}, el("thead", {}, el("tr", {}, ...columns.map(([, title]) => el("th", { text: title })))),
      el("tbody", {}, ...rows.map((r) => el("tr", {}, ...columns.map(([key]) => el("td", { text: fmt(typeof key === "function" ? key(r) : r[key]) }))))));
  }

  function renderVersions(s) {
    $("versions").replaceChildren(table([
      ["version", "version"], ["backend", "backend"], [(c) => c.parent || "", "parent"], ["model", "model"],
      [(c) => c.prompt_ids.join(", "), "prompt set"], [(c) => pct(c.coverage), "coverage"], ["ok", "ok"], ["failed", "failed"],
      ...Array.from({ length: LEVELS }, (_, i) => [(c) => c.words[i].mean, "words L" + (i + 1)]),
      [(c) => Object.entries(c.failed_reasons).map(([k, n]) => k + ": " + n).join(", "), "failed because"],
    ], s.captions));
  }

  function renderRejects(s) {
    const select = $("reject-filter");
    const chosen = select.value;
    const reasons = [...new Set(s.rejects_table.map((r) => r.stage + " / " + r.reason))].sort();
    select.replaceChildren(el("option", { value: "", text: "all reasons" }), ...reasons.map((r) => el("option", { value: r, text: r })));
    select.value = reasons.includes(chosen) ? chosen : "";
    const rows = s.rejects_table.filter((r) => !select.value || r.stage + " / " + r.reason === select.value);
    $("rejects").replaceChildren(table([["shard", "shard"], ["key", "key"], ["stage", "stage"], ["reason", "reason"],
      ["url", "url"], ["detail", "detail"]], rows));
    $("rejects-note").textContent = `${rows.length} of ${s.headline.rejects} reject rows shown (newest shards first)`;
  }

  function renderExplorer(s) {
    const rows = s.rejects_explorer || [];
    const total = s.headline.rejects;
    $("rejects-explorer").replaceChildren(rows.length ? el("table", {},
      el("thead", {}, el("tr", {}, ...["stage", "reason", "rows", "of stage", "of all rejects", "examples (newest shards first)"].map((t) => el("th", { text: t })))),
      el("tbody", {}, ...rows.map((r) => el("tr", { "data-reason": r.stage + " / " + r.reason },
        el("td", { text: r.stage }),
        el("td", {}, el("button", { class: "link", type: "button", "data-filter": r.stage + " / " + r.reason, text: r.reason })),
        el("td", { text: fmt(r.count) }), el("td", { text: pct(r.share_of_stage) }), el("td", { text: pct(total ? r.count / total : null) }),
        el("td", {}, el("ul", { class: "examples" }, ...r.examples.map((e) => el("li", {},
          el("button", { class: "link", type: "button", "data-trace": e.key, text: e.key }), " ",
          el("span", { text: e.url ?? "" }), el("span", { class: "small", text: e.detail ? " — " + e.detail : "" }))))))))
    ) : el("p", { class: "meta", text: "no rejects" }));
  }

  function renderGallery(s, items) {
    const select = $("gallery-version");
    const versions = s.captions.map((c) => c.version);
    const tiles = (s.gallery || {}).by_version || {};
    const fallback = (s.gallery || {}).default_version || versions[0] || "";
    const chosen = versions.includes(select.value) ? select.value : fallback;
    select.replaceChildren(...versions.map((v) => el("option", { value: v, text: v })));
    select.value = chosen;
    const byKey = new Map(items.map((it) => [it.key, it]));
    // the tiles of the chosen version are rows it captioned; a summary without them shows the first rows
    const mine = tiles[chosen];
    const shown = (mine ? mine.keys : items.map((it) => it.key)).map((k) => byKey.get(k)).filter(Boolean);
    $("gallery-note").textContent = mine
      ? `${fmt(mine.covered)} of ${fmt(s.headline.samples)} samples captioned ok by ${chosen} (${pct(mine.coverage)}); ${shown.length} shown`
      : "";
    $("gallery").replaceChildren(...(shown.length ? shown : [null]).map((it) => {
      if (it === null) return el("p", { class: "meta", text: `no sample has an ok caption of ${chosen} yet` });
      const img = el("img", { alt: "sample " + it.key });
      if (typeof it.thumb === "string" && it.thumb.startsWith("data:image/")) img.src = it.thumb;
      const cap = (it.captions || {})[chosen];
      const levels = cap ? cap.levels : [];
      const list = el("ol", { class: "captions" }, ...Array.from({ length: LEVELS }, (_, i) => el("li", { text: levels[i] ?? "(no caption)" })));
      const href = safeHref(it.url);
      const url = href ? el("a", { href, rel: "noopener noreferrer nofollow", target: "_blank", text: it.url }) : el("span", { text: it.url });
      const scores = ["clip_score", "aesthetic", "nsfw", "watermark"].map((k) => k + " " + fmt(it[k], 3)).join(" · ");
      return el("div", { class: "item", "data-key": it.key },
        el("div", {}, img, el("div", { class: "small", text: it.width + "×" + it.height }),
          el("button", { class: "link", type: "button", "data-trace": it.key, text: "trace " + it.key })),
        el("div", {}, el("div", { class: "small", text: "alt: " + (it.caption ?? "") }), list,
          el("div", { class: "small", text: scores }), el("div", { class: "small" }, url),
          el("div", { class: "small", text: cap ? `${chosen}: ${cap.status} (from ${cap.from})` : `${chosen}: not captioned` })));
    }));
  }

  // -- trace: the live server answers api/trace; an export holds the traces of the rows it shows --
  async function runTrace(query) {
    const q = String(query || "").trim();
    const out = $("trace-out");
    if (!q) return;
    $("trace-q").value = q;
    if (page.mode === "static") {
      const traces = current.traces || {};
      const hit = traces[q] || Object.values(traces).find((t) => (t.urls || []).includes(q));
      out.textContent = hit ? hit.text
        : `${q}: not among the ${Object.keys(traces).length} rows this export holds traces for (its gallery and reject examples); ` +
          "`deepfusion trace ROOT " + q + "` traces any row";
      $("trace-note").textContent = "from the export";
    } else {
      $("trace-note").textContent = "tracing…";
      try {
        const r = await fetch("api/trace?q=" + encodeURIComponent(q), { cache: "no-store" });
        const body = await r.json();
        out.textContent = body.text || ("trace failed: " + (body.error || "HTTP " + r.status));
        $("trace-note").textContent = r.ok ? "live" : "";
      } catch (e) {
        out.textContent = "trace failed: " + e.message;
        $("trace-note").textContent = "";
      }
    }
    document.body.dataset.traced = q;
  }

  // -- data ------------------------------------------------------------------------------------
  let current = { summary: null, gallery: [], traces: {} };
  function render() {
    const s = current.summary;
    renderHeadline(s); renderCharts(s); renderVersions(s); renderExplorer(s); renderRejects(s); renderGallery(s, current.gallery);
    document.body.dataset.rendered = s.created_at;  // tests and users can tell when a refresh landed
  }
  async function fetchJson(path) {
    const r = await fetch(path, { cache: "no-store" });
    if (!r.ok) throw new Error(path + ": HTTP " + r.status);
    return r.json();
  }
  async function poll() {
    try {
      const summary = await fetchJson("data/summary.json");
      if (!current.summary || summary.created_at !== current.summary.created_at) {
        current = { summary, gallery: await fetchJson("data/gallery.json"), traces: {} };
        render();
      }
      $("status").textContent = "live · checked " + new Date().toLocaleTimeString();
    } catch (e) {
      $("status").textContent = "waiting for statistics: " + e.message;
    }
  }

  $("reject-filter").addEventListener("change", () => renderRejects(current.summary));
  $("gallery-version").addEventListener("change", () => renderGallery(current.summary, current.gallery));
  $("trace-go").addEventListener("click", () => runTrace($("trace-q").value));
  $("trace-q").addEventListener("keydown", (e) => { if (e.key === "Enter") runTrace($("trace-q").value); });
  document.addEventListener("click", (e) => {
    const b = e.target.closest("button[data-trace], button[data-filter]");
    if (!b) return;
    if (b.dataset.trace) runTrace(b.dataset.trace);
    if (b.dataset.filter) { $("reject-filter").value = b.dataset.filter; renderRejects(current.summary); }
  });
  if (page.mode === "static") {
    const data = JSON.parse($("df-data").textContent);
    current = { summary: data.summary, gallery: data.gallery, traces: data.traces || {} };
    $("status").textContent = "static export";
    render();
  } else {
    poll();
    setInterval(poll, 1000 * Number(page.refresh || 5));
  }
})();
