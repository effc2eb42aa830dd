"""The style sheet and the script of ``report.html`` (no libraries, no network)."""

from __future__ import annotations

__all__ = ["PAGE_SCRIPT", "PAGE_STYLE"]

PAGE_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1em 2em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.5em; }
table.metrics { border-collapse: collapse; font-size: 12px; }
table.metrics td, table.metrics th { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
table.metrics td:first-child { text-align: left; }
table.grid { border-collapse: collapse; }
table.grid th, table.grid td { border: 1px solid #ddd; padding: 4px; vertical-align: top; }
table.grid th.layer { font-weight: normal; text-align: left; min-width: 200px; max-width: 260px; }
.lname { font-weight: bold; font-family: monospace; }
td.img img { width: 112px; image-rendering: pixelated; }
td.img div { font-size: 11px; max-width: 112px; overflow-wrap: anywhere; }
td.cell { width: 230px; }
img.map { width: 112px; height: auto; margin: 1px; image-rendering: pixelated; }
img.clickable { cursor: crosshair; }
.swatch { display: inline-block; width: 12px; height: 12px; margin: 1px; border: 1px solid #0004;
  cursor: pointer; vertical-align: middle; }
.legend, .order, .bar, .shift { font-size: 11px; margin-top: 2px; }
p.applied { background: #fff6d8; border-left: 4px solid #d9a400; padding: 6px 10px; }
.bar img { width: 70px; height: 9px; vertical-align: middle; margin: 0 3px; }
img.figure { max-width: 100%; }
#panel { position: fixed; top: 1em; right: 1em; width: 330px; max-height: 90vh; overflow: auto;
  background: #fff; border: 1px solid #888; box-shadow: 0 2px 12px #0003; padding: 10px; z-index: 5; }
#panel .protos img { width: 72px; height: 72px; object-fit: contain; margin: 2px; border: 1px solid #ccc; }
#panel table td { padding: 1px 6px 1px 0; }
#close { float: right; border: none; background: none; font-size: 18px; cursor: pointer; }
.chip { display: inline-block; width: 14px; height: 14px; vertical-align: middle; border: 1px solid #0006; }
"""

PAGE_SCRIPT = """
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("report-data").textContent);
  const cache = {};
  function labels(j, level) {
    const key = j + "/" + level;
    if (!cache[key]) {
      const lab = data.layers[j].levels[level].labels;
      const bytes = Uint8Array.from(atob(lab.data), (c) => c.charCodeAt(0));
      cache[key] = lab.dtype === "u8" ? bytes : new Int16Array(bytes.buffer);
    }
    return cache[key];
  }
  function fmt(v, d) { return v === null || v === undefined ? "–" : Number(v).toFixed(d); }
  function interval(iv) { return iv ? "[" + fmt(iv[0], 0) + ", " + fmt(iv[1], 0) + "]" : "–"; }
  function show(j, level, k) {
    const layer = data.layers[j];
    const c = layer.levels[level].clusters[String(k)];
    const panel = document.getElementById("panel");
    const body = document.getElementById("panel-body");
    if (!c) { return; }
    const what = level === "concepts" ? "concept" : "cluster";
    const ref = data.applied ? "reference " : "";
    const rows = [[data.applied ? "weight (reference posterior)" : "weight", fmt(c.weight, 3)],
      ["positions (map)", String(c.positions)]];
    if (level === "concepts") {
      rows.push([ref + "concepts", fmt(layer.concepts_k, 0) + " " + interval(layer.concepts_interval)]);
      rows.push(["components", (c.components || []).join(", ")]);
    } else {
      rows.push([ref + "K̂ (90% interval)", fmt(layer.k, 0) + " " + interval(layer.k_interval)]);
    }
    if (layer.shift) {
      rows.push(["layer novelty share", fmt(layer.shift.novelty_share, 3)]);
      rows.push(["layer log-lik new / reference",
        fmt(layer.shift.heldout_loglik, 2) + " / " + fmt(layer.shift.reference_heldout_loglik, 2)]);
    }
    if (c.scores) {
      rows.push(["majority region", c.scores.region]);
      rows.push(["purity", fmt(c.scores.purity, 3)]);
      rows.push(["region covered", fmt(c.scores.coverage, 3)]);
      rows.push(["IoU", fmt(c.scores.iou, 3)]);
    } else if (data.has_masks === false) {
      rows.push(["scores", "no masks"]);
    }
    body.textContent = "";
    const h = document.createElement("h3");
    const chip = document.createElement("span");
    chip.className = "chip";
    chip.style.background = c.colour;
    h.append(chip, " " + layer.name + ": " + what + " " + k);
    const table = document.createElement("table");
    for (const [name, value] of rows) {
      const tr = table.insertRow();
      tr.insertCell().textContent = name;
      tr.insertCell().textContent = value;
    }
    const protos = document.createElement("div");
    protos.className = "protos";
    const caption = document.createElement("p");
    caption.textContent = "Prototypes (receptive field of the surest positions):";
    for (const p of c.prototypes) {
      const img = document.createElement("img");
      img.src = p.src;
      img.title = "image " + p.i + ", responsibility " + p.r;
      img.alt = "prototype";
      protos.append(img);
    }
    body.append(h, table, caption, protos);
    panel.dataset.layer = String(j);
    panel.dataset.level = level;
    panel.dataset.k = String(k);
    panel.hidden = false;
  }
  document.addEventListener("click", function (ev) {
    const t = ev.target;
    if (t.id === "close") { document.getElementById("panel").hidden = true; return; }
    if (t.classList.contains("swatch")) {
      show(Number(t.dataset.layer), t.dataset.level, Number(t.dataset.k));
      return;
    }
    if (!t.classList.contains("clickable")) { return; }
    const j = Number(t.dataset.layer), i = Number(t.dataset.image), level = t.dataset.level;
    const layer = data.layers[j];
    const rect = t.getBoundingClientRect();
    const W = layer.cols.length, H = layer.rows.length;
    const px = Math.min(W - 1, Math.max(0, Math.floor((ev.clientX - rect.left) / rect.width * W)));
    const py = Math.min(H - 1, Math.max(0, Math.floor((ev.clientY - rect.top) / rect.height * H)));
    const [Hl, Wl] = layer.map_size;
    const k = labels(j, level)[i * Hl * Wl + layer.rows[py] * Wl + layer.cols[px]];
    const none = layer.levels[level].labels.dtype === "u8" ? 255 : -1;
    if (k >= 0 && k !== none) { show(j, level, k); }
  });
})();
"""
