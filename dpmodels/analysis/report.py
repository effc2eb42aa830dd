"""The human-readable part of a run directory: ``figures/*.png`` and ``summary.md``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..data.images import ImageSet
from ..io import atomic_write_text
from ..maps import LayerMaps
from .outputs import layer_file

__all__ = ["layer_table", "write_figures", "write_summary"]

_COLUMNS = [
    ("n_active", "K̂", "{}"),
    ("n_active_interval", "K 90% interval", "[{0[0]:.0f}, {0[1]:.0f}]"),
    ("heldout_loglik", "held-out log-lik (nats)", "{:.2f}"),
    ("elbo", "ELBO per point", "{:.2f}"),
    ("fit_points", "fit points", "{}"),
    ("mean_entropy", "mean entropy", "{:.3f}"),
    ("ari", "ARI", "{:.3f}"),
    ("nmi", "NMI", "{:.3f}"),
    ("miou", "mIoU", "{:.3f}"),
    ("entropy_auroc", "entropy AUROC", "{:.3f}"),
    ("ece", "ECE", "{:.3f}"),
    ("entropy_auroc_majority", "AUROC maj.", "{:.3f}"),
    ("ece_majority", "ECE maj.", "{:.3f}"),
    ("concepts.k", "concepts", "{}"),
    ("concepts.k_interval", "concepts 90%", "[{0[0]:.0f}, {0[1]:.0f}]"),
    ("concepts.nmi", "concept NMI", "{:.3f}"),
    ("concepts.ari", "concept ARI", "{:.3f}"),
    ("concepts.miou", "concept mIoU", "{:.3f}"),
    ("concepts.entropy_auroc", "concept AUROC", "{:.3f}"),
    ("concepts.ece", "concept ECE", "{:.3f}"),
    ("concepts.entropy_auroc_majority", "concept AUROC maj.", "{:.3f}"),
    ("concepts.ece_majority", "concept ECE maj.", "{:.3f}"),
    ("fit_seconds", "fit s", "{:.1f}"),
]


def write_figures(
    out_dir: Path,
    images: ImageSet,
    maps: Mapping[str, LayerMaps],
    k_draws: Mapping[str, np.ndarray],
    true_k: int | None,
    *,
    num_images: int = 4,
    prototypes: int = 6,
    dpi: int = 110,
) -> list[Path]:
    """All figures of a run; returns their paths."""
    from ..viz.maps import (
        plot_cluster_counts,
        plot_image_layers,
        plot_prototypes,
        plot_transitions,
        save_figure,
    )

    fig_dir = Path(out_dir) / "figures"
    layers = list(maps.values())
    written = []
    for i in range(min(num_images, len(images))):
        fig = plot_image_layers(images.images[i], layers, i)
        written.append(save_figure(fig, fig_dir / f"layers_{i:02d}.png", dpi=dpi))
    written.append(
        save_figure(plot_cluster_counts(dict(k_draws), true_k=true_k), fig_dir / "clusters.png", dpi=dpi)
    )
    for name, m in maps.items():
        fig = plot_prototypes(images.images, m, top_k=prototypes)
        written.append(save_figure(fig, fig_dir / f"prototypes_{layer_file(name)}.png", dpi=dpi))
    if len(layers) > 1:
        written.append(save_figure(plot_transitions(layers), fig_dir / "transitions.png", dpi=dpi))
    return written


def _get(row: dict, key: str):
    """``row[key]``, or a nested value for a dotted key (``"concepts.nmi"``); ``None`` if absent."""
    for part in key.split("."):
        row = row.get(part) if isinstance(row, dict) else None
    return row


def _cell(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    return fmt.format(value)


def _model_line(layers: dict) -> str:
    coupling = max((row.get("coupling", 0.0) for row in layers.values()), default=0.0)
    if not coupling:
        return "**Model**: Dirichlet-process mixture (positions independent given the weights)."
    return (
        f"**Model**: spatially coupled mixture, Potts coupling β = {coupling:g} between grid neighbours "
        "(fitted on whole images; cluster and entropy maps from the coupled q(z))."
    )


def layer_table(metrics: dict) -> tuple[list[str], list[list[str]]]:
    """The per-layer table of ``summary.md`` (and ``report.html``): column headers (the first is
    ``layer``) and one row of formatted cells per layer; columns no layer has are left out."""
    layers = metrics["layers"]
    cols = [c for c in _COLUMNS if any(_get(row, c[0]) is not None for row in layers.values())]
    rows = [[name] + [_cell(_get(row, k), fmt) for k, _, fmt in cols] for name, row in layers.items()]
    return ["layer"] + [c[1] for c in cols], rows


def write_summary(out_dir: Path, metrics: dict, eval_rows: list[dict] | None = None) -> Path:
    """``summary.md``: what was analysed, the per-layer table, the figures."""
    data, net, layers = metrics["data"], metrics["network"], metrics["layers"]
    header, rows = layer_table(metrics)
    lines = [
        "# dpmodels analysis",
        "",
        f"**Data**: {data['name']}, {data['num_images']} images of {data['size'][0]}×{data['size'][1]} px"
        + (f", {data['true_k']} ground-truth regions." if data.get("true_k") else "."),
        f"**Network**: {net.get('name')}"
        + (
            f", trained (test accuracy {net['test_accuracy']:.3f})"
            if net.get("trained")
            else f", {net.get('weights')}"
        )
        + (", loaded from the cache." if net.get("loaded_from_cache") else "."),
        _model_line(layers),
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---|" * (len(header) - 1),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += [
        "",
        "K̂: clusters explaining more than 1% of the positions; ARI/NMI/mIoU against the masks at "
        "input resolution. Concepts: components merged by `dpmodels.concepts` (number of concepts at "
        "the elbow of the entropy curve, 90% interval over posterior draws). AUROC/ECE: entropy AUROC "
        "and calibration error, one-to-one matching (maj.: each cluster matched to its majority "
        "region).",
        "",
    ]
    if eval_rows:
        lines += [
            "## Against baselines",
            "",
            "See `evaluation.csv` (oracle methods are told the true K).",
            "",
        ]
        lines += ["| layer | method | oracle | K̂ | NMI | ARI |", "|---|---|---|---|---|---|"]
        for r in eval_rows:
            lines.append(
                f"| {r.get('layer')} | {r.get('method')} | {r.get('oracle')} | {r.get('k_hat')} | "
                f"{_cell(r.get('nmi'), '{:.3f}')} | {_cell(r.get('ari'), '{:.3f}')} |"
            )
        lines.append("")
    fig_dir = Path(out_dir) / "figures"
    if fig_dir.is_dir():
        lines += ["## Figures", ""]
        lines += [f"![{p.stem}](figures/{p.name})" for p in sorted(fig_dir.glob("*.png"))]
        lines.append("")
    t = metrics.get("timings", {})
    lines.append(
        "Timings: " + ", ".join(f"{k.replace('_seconds', '')} {v:.1f} s" for k, v in t.items()) + "."
    )
    path = Path(out_dir) / "summary.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
