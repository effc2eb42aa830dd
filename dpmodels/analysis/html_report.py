"""``report.html``: one self-contained page per run, built from the run's files.

The page holds a layer × image grid (the image, the cluster map at component and concept level,
the entropy and novelty maps, all at input resolution), the per-layer table of ``summary.md``, and a
panel that opens when a cluster is clicked (on a map or in a layer's legend): its prototype patches,
weight, the layer's K̂ interval and, when the images have masks, how the cluster overlaps the
regions. Images are inlined (PNG/JPEG data URIs); the run's figures are linked by relative path, so
the page opens from disk with no network and no server.

An applied run (``experiments.apply``: a finished run's fitted layers mapping new images; its
``metrics.json`` has a ``reference`` block) gets the same page over the new images, titled as an
applied run of its reference run: the maps, positions and prototypes are the new images', the
cluster weights, K̂ interval and concepts the reference run's (recorded in the applied run's
``metrics.json``), and the per-layer table says how far the new images move each layer (their
log-likelihood beside the reference's held-out value, the novelty share).

:func:`write_html_report` builds it from any run directory read through
:class:`~dpmodels.analysis.RunOutputs` (or :meth:`RunOutputs.staged` while the job is still writing);
:func:`rebuild_report` rebuilds it in a published run and updates that run's manifest.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
import torch

from ..io import MANIFEST, atomic_write_json, atomic_write_text, file_digest, manifest_problems
from ..maps import LayerMaps
from ..maps.colours import cluster_colours
from ..maps.registry import MAPS
from ..maps.resample import mask_at_positions, upsample_map
from .outputs import RunOutputs
from .report import layer_table
from .report_page import PAGE_SCRIPT, PAGE_STYLE

__all__ = ["REPORT_FILE", "build_html_report", "rebuild_report", "write_html_report"]

REPORT_FILE = "report.html"
_CONTINUOUS = ("entropy", "novelty")  # the continuous map kinds of the grid, after the two cluster maps
_MISSING = (217, 217, 217)  # the colour of positions without a value


def _uri(img, fmt: str, **save) -> str:
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def _indexed_png(index: np.ndarray, palette: np.ndarray) -> str:
    """A palette PNG of ``index`` ``(H, W)`` uint8 with ``palette`` ``(n, 3)`` uint8 (n <= 256)."""
    from PIL import Image

    H, W = index.shape
    img = Image.frombytes("P", (W, H), np.ascontiguousarray(index, dtype=np.uint8).tobytes())
    img.putpalette(palette.astype(np.uint8).ravel().tolist())
    return _uri(img, "PNG", optimize=True)


def _photo(image: np.ndarray, max_side: int | None = None) -> str:
    """JPEG data URI of an ``(C, H, W)`` image in [0, 1]."""
    from PIL import Image

    hwc = (np.clip(image, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)
    img = Image.fromarray(hwc[..., 0] if hwc.shape[2] == 1 else hwc[..., :3])
    if max_side is not None and max(img.size) != max_side:
        scale = max_side / max(img.size)
        img = img.resize((max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale))), 3)
    return _uri(img, "JPEG", quality=88)


def _cluster_palette(k: int) -> np.ndarray:
    """``(256, 3)`` uint8: cluster ``j`` in colour ``j`` (for ``j < 255``), index 255 = no position."""
    pal = np.tile(np.array(_MISSING, dtype=np.uint8), (256, 1))
    n = min(k, 255)
    pal[:n] = (cluster_colours(max(n, 1))[:n] * 255).round().astype(np.uint8)
    return pal


def _scalar_palette(cmap: str) -> np.ndarray:
    from matplotlib import colormaps

    pal = np.tile(np.array(_MISSING, dtype=np.uint8), (256, 1))
    pal[:255] = (colormaps[cmap](np.linspace(0, 1, 255))[:, :3] * 255).round().astype(np.uint8)
    return pal


def _label_bytes(labels: torch.Tensor, k: int) -> dict:
    """Labels ``(I, H_l, W_l)`` as base64 (uint8 with 255 = none, or int16 little-endian with -1)."""
    lab = labels.numpy().astype(np.int64)
    if k < 255:
        raw, dtype = np.where(lab < 0, 255, lab).astype(np.uint8), "u8"
    else:
        raw, dtype = lab.astype("<i2"), "i16"
    return {"dtype": dtype, "data": base64.b64encode(raw.tobytes()).decode()}


def _lookups(maps: LayerMaps) -> tuple[list[int], list[int]]:
    """The map row of each input row and the map column of each input column, by the same
    nearest-position resampling as the label maps at input resolution."""
    Hl, Wl = maps.geometry.map_size
    rows = torch.arange(Hl).view(1, Hl, 1).expand(1, Hl, Wl).contiguous()
    cols = torch.arange(Wl).view(1, 1, Wl).expand(1, Hl, Wl).contiguous()
    return (
        upsample_map(rows, maps.geometry, "nearest")[0, :, 0].tolist(),
        upsample_map(cols, maps.geometry, "nearest")[0, 0, :].tolist(),
    )


def _prototypes(images: np.ndarray, maps: LayerMaps, k: int, top_k: int) -> list[dict]:
    """The ``top_k`` positions assigned to cluster ``k`` with the highest responsibility, as their
    receptive-field patches (as in ``dpmodels.viz.plot_prototypes``)."""
    conf = torch.nan_to_num(maps.confidence.double(), nan=-1.0)
    score = torch.where(maps.labels == k, conf, torch.full_like(conf, -1.0)).flatten()  # (I*H_l*W_l,)
    Hl, Wl = maps.geometry.map_size
    out = []
    for flat in score.argsort(descending=True)[:top_k].tolist():
        if score[flat] < 0:
            break
        i, rem = divmod(flat, Hl * Wl)
        y, x = divmod(rem, Wl)
        y0, y1, x0, x1 = maps.geometry.patch_box(y, x)
        out.append({"src": _photo(images[i][:, y0:y1, x0:x1], 72), "r": round(float(score[flat]), 3), "i": i})
    return out


def _overlaps(maps: LayerMaps, masks: torch.Tensor | None, names: list[str] | None) -> dict[int, dict]:
    """Per cluster, against the masks at the map positions: its majority region, the share of its
    positions there (purity), that region's share covered by it, and their IoU."""
    if masks is None:
        return {}
    gt = mask_at_positions(masks, maps.geometry).long()  # (I, H_l, W_l)
    lab = maps.labels.long()
    valid = (gt >= 0) & (lab >= 0)
    regions = int(gt[valid].max()) + 1 if valid.any() else 0
    totals = torch.bincount(gt[valid], minlength=regions)
    out = {}
    for k in torch.unique(lab[valid]).tolist():
        counts = torch.bincount(gt[valid & (lab == k)], minlength=regions)
        r, n_k, hit = int(counts.argmax()), int(counts.sum()), int(counts.max())
        out[k] = {
            "region": names[r] if names and r < len(names) else f"region {r}",
            "purity": hit / n_k,
            "coverage": hit / int(totals[r]),
            "iou": hit / (n_k + int(totals[r]) - hit),
        }
    return out


def _level(images: np.ndarray, maps: LayerMaps, masks, mask_names, top_k: int) -> dict:
    """One level (components or concepts) of one layer: map images, labels, clusters."""
    K = int(maps.weights.shape[0])
    pal = _cluster_palette(K)
    lab_in = upsample_map(maps.labels, maps.geometry, "nearest").numpy()  # (I, H, W)
    cells = [_indexed_png(np.where(lab < 0, 255, np.minimum(lab, 254)), pal) for lab in lab_in]
    shown = sorted(
        set(torch.nonzero(maps.active).flatten().tolist()) | set(torch.unique(maps.labels).tolist())
    )
    overlaps = _overlaps(maps, masks, mask_names)
    members = maps.meta.get("component_to_concept")
    n = torch.bincount(maps.labels[maps.labels >= 0].long(), minlength=K)
    clusters = {}
    for k in (k for k in shown if k >= 0):
        entry = {
            "weight": float(maps.weights[k]),
            "positions": int(n[k]),
            "colour": "#" + "".join(f"{int(c):02x}" for c in pal[min(k, 254)]),
            "prototypes": _prototypes(images, maps, k, top_k),
        }
        if k in overlaps:
            entry["scores"] = overlaps[k]
        if members is not None:
            entry["components"] = [j for j, c in enumerate(members) if c == k]
        clusters[str(k)] = entry
    return {"cells": cells, "labels": _label_bytes(maps.labels, K), "clusters": clusters}


def _scalar_cells(maps: LayerMaps, kind: str) -> tuple[list[str], dict]:
    values = upsample_map(maps.get(kind), maps.geometry, "bilinear").numpy()  # (I, H, W)
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    scaled = np.clip(np.round((values - lo) / max(hi - lo, 1e-12) * 254), 0, 254)
    index = np.where(np.isfinite(values), scaled, 255).astype(np.uint8)
    pal = _scalar_palette(MAPS[kind].cmap if kind in MAPS else "viridis")
    bar = _indexed_png(np.arange(255, dtype=np.uint8)[None, :], pal)
    label = MAPS[kind].label if kind in MAPS else kind
    return [_indexed_png(v, pal) for v in index], {"lo": lo, "hi": hi, "bar": bar, "label": label}


def _reference(metrics: dict) -> dict | None:
    """The ``reference`` block of an applied run's metrics (``None`` for a run of the main job)."""
    ref = metrics.get("reference")
    return ref if isinstance(ref, dict) and "run" in ref else None


def _layer(run: RunOutputs, name: str, images: np.ndarray, masks, mask_names, top_k: int) -> dict:
    maps = run.maps(name)
    ref = _reference(run.metrics)
    shift = run.metrics["layers"][name] if ref is not None else None
    # K̂ and concepts: the run's own, or for an applied run the reference run's (its fitted posterior)
    row = run.metrics["layers"][name] if ref is None else ref.get("layers", {}).get(name, {})
    concept_maps = run.concept_maps(name) if hasattr(run, "concept_maps") else None
    levels = {"components": _level(images, maps, masks, mask_names, top_k)}
    if concept_maps is not None:
        levels["concepts"] = _level(images, concept_maps, masks, mask_names, top_k)
    scalars = {kind: _scalar_cells(maps, kind) for kind in _CONTINUOUS if kind in maps.values}
    rows, cols = _lookups(maps)
    concepts = row.get("concepts", {})
    return {
        "name": name,
        "map_size": list(maps.geometry.map_size),
        "rows": rows,
        "cols": cols,
        "k": row.get("n_active"),
        "k_interval": row.get("n_active_interval"),
        "concepts_k": concepts.get("k"),
        "concepts_interval": concepts.get("k_interval"),
        "levels": levels,
        "scalars": scalars,
        "shift": None if shift is None else {k: _finite(shift.get(k)) for k in _SHIFT_KEYS},
    }


_SHIFT_KEYS = ("heldout_loglik", "reference_heldout_loglik", "loglik_drop", "novelty_share")
_APPLY_COLUMNS = [  # the per-layer table of an applied run: (key, header, format, from the reference)
    ("n_active", "reference K̂", "{}", True),
    ("n_active_interval", "reference K 90% interval", "[{0[0]:.0f}, {0[1]:.0f}]", True),
    ("concepts.k", "reference concepts", "{}", True),
    ("heldout_loglik", "log-lik new images (nats)", "{:.2f}", False),
    ("reference_heldout_loglik", "reference held-out log-lik", "{:.2f}", False),
    ("loglik_drop", "drop", "{:.2f}", False),
    ("novelty_share", "novelty share", "{:.3f}", False),
    ("mean_entropy", "mean entropy", "{:.3f}", False),
    ("reference_mean_entropy", "reference mean entropy", "{:.3f}", False),
    ("clusters_used", "clusters used", "{}", False),
]


def _apply_table(metrics: dict, ref: dict) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of an applied run's per-layer table (columns no layer has are left out)."""

    def get(row: dict, key: str):
        for part in key.split("."):
            row = row.get(part) if isinstance(row, dict) else None
        return row

    src = {
        name: (ref.get("layers", {}).get(name, {}), row) for name, row in metrics["layers"].items()
    }  # fmt: skip

    def value(r: tuple[dict, dict], col: tuple):
        return get(r[0] if col[3] else r[1], col[0])

    cols = [c for c in _APPLY_COLUMNS if any(value(r, c) is not None for r in src.values())]
    rows = [[name] + [_fmt(value(r, c), c[2]) for c in cols] for name, r in src.items()]
    return ["layer"] + [c[1] for c in cols], rows


def _tag(tag: str, text: str = "", **attrs) -> str:
    a = "".join(f' {k.rstrip("_").replace("_", "-")}="{html.escape(str(v))}"' for k, v in attrs.items())
    return f"<{tag}{a}>{text}</{tag}>"


def _grid(layers: list[dict], image_uris: list[str], names: list[str]) -> str:
    """The layer × image table: one row per image, one column per layer, four maps per cell."""
    head = "<tr><th>image</th>" + "".join(_layer_head(L) for L in layers) + "</tr>"
    body = []
    for i, (uri, name) in enumerate(zip(image_uris, names, strict=True)):
        cells = [f'<td class="img"><img src="{uri}" alt="image {i}"><div>{html.escape(name)}</div></td>']
        for j, L in enumerate(layers):
            maps = []
            for level, title in (("components", "clusters"), ("concepts", "concepts")):
                if level in L["levels"]:
                    src = L["levels"][level]["cells"][i]
                    maps.append(
                        f'<img class="map clickable" src="{src}" title="{title} (click a cluster)" '
                        f'data-layer="{j}" data-image="{i}" data-level="{level}" alt="{title}">'
                    )
            for kind, (srcs, _) in L["scalars"].items():
                maps.append(f'<img class="map" src="{srcs[i]}" title="{kind}" alt="{kind}">')
            cells.append(f'<td class="cell" data-layer="{j}" data-image="{i}">{"".join(maps)}</td>')
        body.append(f'<tr data-image="{i}">' + "".join(cells) + "</tr>")
    return f'<table class="grid"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'


def _layer_head(L: dict) -> str:
    j = L["layers_index"]
    k_int = L["k_interval"]
    text = f'<div class="lname">{html.escape(L["name"])}</div>'
    if L["k"] is not None:
        text += f"<div>{'reference ' if L['shift'] else ''}K̂ = {L['k']}"
        text += (f" [{k_int[0]:.0f}, {k_int[1]:.0f}]" if k_int else "") + "</div>"
    if L["shift"]:
        s = L["shift"]
        text += (
            f'<div class="shift">novelty share {_fmt(s["novelty_share"], "{:.3f}")} · log-lik '
            f"{_fmt(s['heldout_loglik'], '{:.2f}')} (reference {_fmt(s['reference_heldout_loglik'], '{:.2f}')})</div>"
        )
    for level, title in (("components", "clusters"), ("concepts", "concepts")):
        if level not in L["levels"]:
            continue
        sw = "".join(
            f'<span class="swatch" style="background:{c["colour"]}" data-layer="{j}" data-level="{level}" '
            f'data-k="{k}" title="{title[:-1]} {k}: weight {c["weight"]:.3f}"></span>'
            for k, c in L["levels"][level]["clusters"].items()
        )
        text += f'<div class="legend">{title}: {sw}</div>'
    order = ["clusters", "concepts"][: len(L["levels"])] + list(L["scalars"])
    text += f'<div class="order">cell: {" · ".join(order)}</div>'
    for kind, (_, s) in L["scalars"].items():
        text += (
            f'<div class="bar">{kind} <span>{_num(s["lo"])}</span><img src="{s["bar"]}" alt="{kind} scale">'
            f"<span>{_num(s['hi'])}</span> <small>{html.escape(s['label'])}</small></div>"
        )
    return f'<th class="layer">{text}</th>'


def _finite(v):
    """``v``, or ``None`` for a missing or non-finite number (the page's JSON has no NaN)."""
    return None if v is None or (isinstance(v, float) and not np.isfinite(v)) else v


def _fmt(v, fmt: str) -> str:
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else fmt.format(v)


def _num(v: float) -> str:
    """A colour-bar end: 3 significant digits, ``0`` for magnitudes under 0.001."""
    return f"{v:.3g}" if abs(v) >= 1e-3 else "0"


def _figures(run_dir: Path) -> str:
    parts = []
    paper = run_dir / "figures" / "seed_paper.png"
    if paper.is_file():
        parts.append(
            '<h2>The paper\'s figure</h2><img class="figure" src="figures/seed_paper.png" '
            'alt="seed paper figure">'
        )
    if (run_dir / "control" / REPORT_FILE).is_file() or (run_dir / "control" / "metrics.json").is_file():
        parts.append(
            '<p>The random-weight control: <a href="control/report.html">control/report.html</a></p>'
        )
    figs = sorted((run_dir / "figures").glob("*.png")) if (run_dir / "figures").is_dir() else []
    if figs:
        links = " · ".join(f'<a href="figures/{p.name}">{html.escape(p.stem)}</a>' for p in figs)
        parts.append(f"<h2>Figures</h2><p>{links}</p>")
    return "".join(parts)


def build_html_report(run: RunOutputs, *, prototypes: int = 6) -> str:
    """The page of ``run`` (a :class:`RunOutputs`, or :meth:`RunOutputs.staged`) as one string.

    Reads ``metrics.json``, ``images.npz``, ``maps/<layer>.npz`` and ``maps/concepts/<layer>.npz``;
    ``prototypes``: patches per cluster in the cluster panel. Every image of the run, every layer;
    for an applied run the new images with the reference run's K̂ and concepts."""
    metrics = run.metrics
    image_set = run.images()
    images = image_set.images.numpy()  # (I, C, H, W) in [0, 1]
    names = list(image_set.names or [f"image {i}" for i in range(len(images))])
    layers = []
    for j, name in enumerate(run.layers):
        L = _layer(run, name, images, image_set.masks, image_set.mask_names, prototypes)
        L["layers_index"] = j
        layers.append(L)
    ref = _reference(metrics)
    header, rows = layer_table(metrics) if ref is None else _apply_table(metrics, ref)
    table = "<table class='metrics'><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
    table += "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    table += "</table>"
    data, net = metrics.get("data", {}), metrics.get("network", {})
    title = f"dpmodels: {net.get('name', 'network')} on {data.get('name', 'images')}"
    blurb = (
        f"{data.get('num_images', len(images))} images of {'×'.join(map(str, data.get('size', [])))} px, "
        f"{len(layers)} layer(s). Click a cluster on a cluster map (or in a layer's legend) for its "
        "prototypes, weight and scores."
    )
    applied = ""
    if ref is not None:
        title = f"dpmodels: applied run of {ref['run']} ({net.get('name', 'network')} on {data.get('name', 'images')})"
        applied = (
            f"<p class='applied'>An applied run of the reference run <code>{html.escape(ref['run'])}</code> "
            f"(config {html.escape(str(ref.get('config_hash') or '?'))}): the new images mapped with its "
            "network, transforms and fitted posteriors, nothing refitted. Maps, positions and prototypes "
            "are the new images'; cluster weights, K̂ and concepts are the reference run's. The table: "
            "the new images' mean log density beside the reference's held-out value (nats per position) "
            "and the novelty share (new positions above the reference's 95 % novelty quantile; 0.05 on "
            "the reference's own images).</p>"
        )
        if not any("concepts" in L["levels"] for L in layers):
            applied += "<p>Component level only: the reference run has no concept maps.</p>"
    panel_data = {
        "layers": [
            {
                "name": L["name"],
                "map_size": L["map_size"],
                "rows": L["rows"],
                "cols": L["cols"],
                "k": L["k"],
                "k_interval": L["k_interval"],
                "concepts_k": L["concepts_k"],
                "concepts_interval": L["concepts_interval"],
                "shift": L["shift"],
                "levels": {
                    lv: {"labels": d["labels"], "clusters": d["clusters"]} for lv, d in L["levels"].items()
                },
            }
            for L in layers
        ],
        "has_masks": image_set.masks is not None,
        "applied": ref is not None,
    }
    payload = json.dumps(panel_data, separators=(",", ":")).replace("</", "<\\/")
    image_uris = [_photo(im) for im in images]
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<link rel='icon' href='data:,'>"
        f"<title>{html.escape(title)}</title><style>{PAGE_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{applied}<p>{html.escape(blurb)}</p>"
        f"<h2>Layers</h2>{table}{_figures(Path(run.run_dir))}<h2>Maps</h2>"
        f"{_grid(layers, image_uris, names)}"
        "<aside id='panel' hidden><button id='close' type='button'>×</button><div id='panel-body'></div></aside>"
        f"<script type='application/json' id='report-data'>{payload}</script>"
        f"<script>{PAGE_SCRIPT}</script></body></html>"
    )


def write_html_report(run: RunOutputs | str | Path, path: str | Path | None = None, **kwargs) -> Path:
    """Write ``report.html`` of ``run`` (a :class:`RunOutputs`, or a finished run directory) into its
    run directory (or ``path``), atomically; returns the path. Keywords: :func:`build_html_report`'s."""
    run = run if isinstance(run, RunOutputs) else RunOutputs(run)
    path = Path(run.run_dir) / REPORT_FILE if path is None else Path(path)
    atomic_write_text(path, build_html_report(run, **kwargs))
    return path


def rebuild_report(run_dir: str | Path, **kwargs) -> list[Path]:
    """Rebuild ``report.html`` (and ``control/report.html`` when the run has a control) in a
    published run and record the new files in its manifest, ``run_complete.json``.

    Every other file is first checked against the manifest (SHA-256); only the report files are
    written: each atomically, then the manifest, atomically. An interruption between the two
    leaves a report the manifest does not list, which :class:`RunOutputs` names; rerunning the
    rebuild repairs it. ``prototypes`` defaults to the run's ``viz.prototypes``. Returns the written
    paths."""
    run_dir = Path(run_dir)
    reports = {REPORT_FILE, f"control/{REPORT_FILE}"}
    record_file = run_dir / MANIFEST
    if not record_file.is_file():
        RunOutputs(run_dir)  # raises its own error for an unfinished or missing run
    record = json.loads(record_file.read_text())
    files = record.get("files", {})
    problems = manifest_problems(run_dir, {k: v for k, v in files.items() if k not in reports}, full=True)
    if problems:
        raise ValueError(
            f"{run_dir}: the files disagree with {MANIFEST} ({'; '.join(problems[:5])}); the report is "
            "built from them, so it is not rebuilt. Rerun the analysis with overwrite=true."
        )
    viz = record.get("config", {}).get("viz") or {}
    kwargs.setdefault("prototypes", viz.get("prototypes", 6))  # as the job drew them
    written = []
    targets = [("", run_dir)]
    if "control/metrics.json" in files:
        targets.append(("control/", run_dir / "control"))
    for prefix, folder in targets:
        run = RunOutputs.staged(folder) if prefix else RunOutputs.staged(folder, record)
        written.append(write_html_report(run, folder / REPORT_FILE, **kwargs))
        rel = f"{prefix}{REPORT_FILE}"
        files[rel] = {"size": written[-1].stat().st_size, "sha256": file_digest(written[-1])}
    record["files"] = dict(sorted(files.items()))
    atomic_write_json(record_file, record)
    return written
