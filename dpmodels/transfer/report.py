"""The transfer experiment's report: correlations, verdict, figures, summary and files.

:func:`correlate` ranks each shift score (and CKA) against the measured ``transfer_drop`` with
:func:`spearman_with_ci`; :func:`verdict` states whether a score predicts the drop;
:func:`measurement_check` says whether the measured drop is informative at all (not at
ceiling/floor, spread across layers); :func:`layer_summary` gives per-layer scalars for sweep
tables; :func:`plot_scores_vs_depth`, :func:`plot_score_vs_drop` return figures,
:func:`summary_markdown` the text, and :func:`write_report` writes all of it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import atomic_path, atomic_write_text
from .stats import spearman_with_ci

__all__ = [
    "DROP_DEFINITION",
    "SCORES",
    "correlate",
    "describe_measurement",
    "layer_summary",
    "measurement_check",
    "plot_score_vs_drop",
    "plot_scores_vs_depth",
    "summary_markdown",
    "verdict",
    "write_report",
]

SCORES = ("predictive_drop", "occupancy_jsd", "novelty_share")
"""Shift scores compared with the measured drop (higher = more shift; CKA is compared too)."""

DROP_DEFINITION = (
    "transfer_drop(L) = reference_accuracy(L) - frozen_accuracy(L), averaged over seeds: on a few-shot "
    "target training set (shots labelled images per class, redrawn per seed) and the same retraining "
    "budget, frozen_accuracy(L) freezes the SOURCE network up to and including L and retrains the rest "
    "from re-initialised weights; reference_accuracy(L) does the same with a network of the same "
    "architecture trained on the full target training pool (Yosinski et al. 2014: BnB - AnB). Both "
    "cuts are at the same depth, so the drop isolates what the source features cost, not what "
    "freezing more layers costs. ~0: layer L transfers; > 0: source features are worse."
)


def _rho(x, y, n_boot: int, seed: int) -> tuple[float, float, float, str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rho, low, high = spearman_with_ci(x, y, n_boot=n_boot, seed=seed)
    notes = [str(w.message).removeprefix("spearman_with_ci: ") for w in caught]
    note = "; ".join(
        "score or drop constant: rho undefined" if "constant" in m and "resamples" not in m else m
        for m in notes
    )
    return rho, low, high, note


def correlate(table: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Spearman's rho (with a paired-bootstrap 95% interval) of each score in :data:`SCORES` and of
    ``cka`` against ``transfer_drop``: over all labelled (condition, layer) points (``scope="all"``)
    and over the layers of each condition with at least 3 of them. Columns: ``measure, scope, n,
    rho, low, high, note`` (``note`` says why a value is NaN)."""
    rows = []
    labelled = table[np.isfinite(table.transfer_drop.astype(float))]
    groups = [("all", labelled)] + [(c, g) for c, g in labelled.groupby("condition", sort=False)]
    for scope, part in groups:
        for measure in (*SCORES, "cka"):
            ok = part[np.isfinite(part[measure].astype(float))]
            row = {"measure": measure, "scope": scope, "n": len(ok)}
            if len(ok) < 3:
                rows.append(
                    {**row, "rho": math.nan, "low": math.nan, "high": math.nan, "note": "fewer than 3 points"}
                )
                continue
            rho, low, high, note = _rho(ok[measure].to_numpy(), ok.transfer_drop.to_numpy(), n_boot, seed)
            rows.append({**row, "rho": rho, "low": low, "high": high, "note": note})
    return pd.DataFrame(rows)


def verdict(correlations: pd.DataFrame) -> dict:
    """The best score over all points (largest ``|rho|``, chosen after the fact: say so), its rho and
    interval, CKA's, whether ``|rho| >= 0.7`` and ``|rho| >= |rho_CKA|``, and whether the signs are
    the expected ones (scores: positive, CKA: negative)."""
    every = correlations[(correlations.scope == "all") & np.isfinite(correlations.rho)]
    scores = every[every.measure.isin(SCORES)]
    if scores.empty:
        return {"best_score": None, "n": 0, "predicts": False, "beats_cka": False}
    best = scores.loc[scores.rho.abs().idxmax()]
    cka = every[every.measure == "cka"]
    cka_rho = float(cka.rho.iloc[0]) if len(cka) else math.nan
    return {
        "best_score": str(best.measure),
        "n": int(best.n),
        "rho": float(best.rho),
        "low": float(best.low),
        "high": float(best.high),
        "cka_rho": cka_rho,
        "predicts": bool(abs(best.rho) >= 0.7),
        "beats_cka": bool(not math.isfinite(cka_rho) or abs(best.rho) >= abs(cka_rho)),
        # more shift should mean a larger drop (rho > 0); more similar networks a smaller one (rho < 0)
        "sign_as_expected": bool(best.rho > 0),
        "cka_sign_as_expected": bool(cka_rho < 0),
    }


def measurement_check(table: pd.DataFrame, low: float = 0.3, high: float = 0.95) -> dict:
    """Is the measured transfer informative? Over labelled points: the share of frozen accuracies in
    ``[low, high]`` and at ceiling (>= 0.999), the median and minimum over conditions of the drop's
    spread (max - min) across layers, and the mean seed SD of the drop (the noise floor)."""
    labelled = table[np.isfinite(table.transfer_drop.astype(float))]
    if labelled.empty:
        return {"n_points": 0}
    frozen = labelled.frozen_accuracy.astype(float)
    spread = labelled.groupby("condition", sort=False).transfer_drop.agg(lambda d: float(d.max() - d.min()))
    sd = labelled["transfer_drop_sd"] if "transfer_drop_sd" in labelled else pd.Series([math.nan])
    return {
        "n_points": len(labelled),
        "frozen_in_range": float(((frozen >= low) & (frozen <= high)).mean()),
        "range": [low, high],
        "frozen_at_ceiling": float((frozen >= 0.999).mean()),
        "frozen_min": float(frozen.min()),
        "frozen_max": float(frozen.max()),
        "drop_spread_median": float(spread.median()),
        "drop_spread_min": float(spread.min()),
        "drop_sd_mean": float(sd.mean()),
    }


def layer_summary(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    """``{layer: {column_mean: value}}``: each numeric measured/score column averaged over the
    conditions (labelled ones for the measured columns), for ``experiments.callbacks.sweep_table``."""
    cols = [*SCORES, "cka", "probe_accuracy", "frozen_accuracy", "reference_accuracy", "transfer_drop"]
    cols = [c for c in cols if c in table]
    out = {}
    for layer, part in table.groupby("layer", sort=False):
        means = part[cols].astype(float).mean()  # NaN-skipping: unlabelled conditions drop out
        out[str(layer)] = {f"{c}_mean": (None if math.isnan(v) else float(v)) for c, v in means.items()}
    return out


def plot_scores_vs_depth(table: pd.DataFrame):
    """One panel per score, CKA and the measured drop against layer depth; one line per condition."""
    import matplotlib.pyplot as plt

    panels = [*SCORES, "cka", "transfer_drop"]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2), squeeze=False)
    for ax, col in zip(axes[0], panels, strict=True):
        for name, part in table.groupby("condition", sort=False):
            ax.plot(part.depth, part[col].astype(float), marker="o", label=name)
        ax.set(title=col, xlabel="layer depth", xticks=sorted(table.depth.unique()))
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_score_vs_drop(table: pd.DataFrame, correlations: pd.DataFrame, measure: str):
    """Scatter of ``measure`` against the measured drop (colour = condition; error bars: seed SD when
    the table has ``transfer_drop_sd``), rho in the title."""
    import matplotlib.pyplot as plt

    row = correlations[(correlations.scope == "all") & (correlations.measure == measure)].iloc[0]
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, part in table.groupby("condition", sort=False):
        sd = part["transfer_drop_sd"] if "transfer_drop_sd" in part else None
        ax.errorbar(part[measure], part.transfer_drop, yerr=sd, fmt="o", capsize=2, label=name)
        for _, r in part.iterrows():
            ax.annotate(str(r.depth), (r[measure], r.transfer_drop), fontsize=7)
    ax.set(xlabel=f"{measure} (labels: layer depth)", ylabel="transfer drop (reference - frozen)")
    ax.set_title(f"Spearman rho = {row.rho:.2f} [{row.low:.2f}, {row.high:.2f}], n = {row.n}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _markdown(frame: pd.DataFrame) -> str:
    def cell(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def _verdict_text(v: dict) -> str:
    rho, cka = v["rho"], v["cka_rho"]
    good = v["predicts"] and v["beats_cka"] and v["sign_as_expected"]
    return (
        f"Best shift score (chosen after seeing the results): **{v['best_score']}**, rho = {rho:.2f} "
        f"[{v['low']:.2f}, {v['high']:.2f}] over n = {v['n']} (condition, layer) points; CKA: rho = "
        f"{cka:.2f}. |rho| >= 0.7: **{'yes' if v['predicts'] else 'no'}**; |rho| >= |rho_CKA|: "
        f"**{'yes' if v['beats_cka'] else 'no'}**. Expected signs (score > 0, CKA < 0): score "
        f"{'yes' if v['sign_as_expected'] else 'NO'}, CKA {'yes' if v['cka_sign_as_expected'] else 'NO'}. "
        + (
            "The shift scores track the measured drop on these data."
            if good
            else "On these data the shift scores do NOT predict the measured transfer drop well enough "
            "(the experiment was not tuned to change that)."
        )
    )


def _check_text(check: dict) -> str:
    lo, hi = check["range"]
    return (
        f"Measurement check (is the drop informative?): frozen accuracy in [{lo}, {hi}] in "
        f"{check['frozen_in_range']:.0%} of {check['n_points']} points, at ceiling in "
        f"{check['frozen_at_ceiling']:.0%} (range {check['frozen_min']:.3f}-{check['frozen_max']:.3f}); "
        f"spread of the drop across layers within a condition: median {check['drop_spread_median']:.3f}, "
        f"min {check['drop_spread_min']:.3f}; mean seed SD of the drop {check['drop_sd_mean']:.3f}."
    )


def summary_markdown(table: pd.DataFrame, correlations: pd.DataFrame, info: Mapping) -> str:
    """The run's report: settings, the drop's definition, the per-(condition, layer) table, the
    measurement check, the correlations and an honest verdict (``|rho| >= 0.7`` and ``>= CKA``)."""
    v = verdict(correlations)
    measured = ["probe_accuracy", "frozen_accuracy", "frozen_accuracy_sd", "reference_accuracy"]
    measured += ["scratch_accuracy", "transfer_drop", "transfer_drop_sd"]
    cols = [c for c in ["condition", "layer", *SCORES, "cka", *measured] if c in table]
    out = [f"# Transfer experiment: {info.get('scenario', '')}", ""]
    out += [f"- {k}: {val}" for k, val in info.items()]
    out += ["", "## Measured transfer", "", DROP_DEFINITION, "", "## Per condition and layer", ""]
    out += [
        _markdown(table[cols]),
        "",
        "## Spearman rho against transfer_drop (95% paired-bootstrap interval)",
    ]
    out += ["", _markdown(correlations), ""]
    n = int(np.isfinite(table.transfer_drop.astype(float)).sum())
    if n == 0:
        out.append("No labelled target: measured transfer, and so the correlations, are not available.")
    else:
        out.append(
            _verdict_text(v)
            if v["best_score"] is not None
            else f"No shift score has a defined rank correlation with the drop over the {n} labelled "
            "(condition, layer) point(s) (fewer than 3 points, or a constant score or drop: see the notes)."
        )
        out += ["", _check_text(measurement_check(table))]
    return "\n".join(out) + "\n"


def write_report(out_dir: str | Path, table: pd.DataFrame, correlations: pd.DataFrame, info: Mapping) -> dict:
    """Write ``transfer_table.csv``, ``correlations.csv``, ``figures/scores_vs_depth.png``,
    ``figures/score_vs_drop.png`` (only with labelled targets) and ``summary.md`` into ``out_dir``
    atomically; returns :func:`verdict`."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    v = verdict(correlations)
    for name, frame in (("transfer_table.csv", table), ("correlations.csv", correlations)):
        with atomic_path(out_dir / name, ".csv") as tmp:
            frame.to_csv(tmp, index=False)
    figures = {"scores_vs_depth.png": plot_scores_vs_depth(table)}
    if v["best_score"] is not None:
        figures["score_vs_drop.png"] = plot_score_vs_drop(table, correlations, v["best_score"])
    for name, fig in figures.items():
        with atomic_path(out_dir / "figures" / name, ".png") as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
    atomic_write_text(out_dir / "summary.md", summary_markdown(table, correlations, info))
    return v


def describe_measurement(task: dict) -> str:
    """How the measured transfer was obtained, in words (for summary.md and metrics.json)."""
    return (
        f"{task['shots']} labelled target images per class (redrawn per seed, {task['seeds']} seeds, mean and "
        f"SD reported), {task['epochs']} epochs, batch {task['batch_size']}, lr {task['lr']}; reference: the "
        f"network trained on the {task['train_per_class']}-per-class target pool for {task['target_epochs']} "
        "epochs. The budget was chosen from the measured transfer alone (frozen accuracies off ceiling, "
        "spread across layers), before any correlation with the scores was computed"
    )
