"""The transfer experiment: do a layer's DPGMM shift scores predict how well it transfers?

A source network (trained on texture family A) is cut at each layer. For every target
*condition* (another texture family, the source textures under a contrast / noise / colour shift,
digits, or a user folder) three things are measured per layer:

* DPGMM shift scores (:func:`layer_shift_table`): one DPGMM per layer fitted once on positions of
  fresh source *patches* (the images the network was trained to classify, new instances), the
  target positions extracted with the source's fitted standardisation/PCA;
* measured transfer (:func:`transfer_sweep`): probe, frozen and scratch accuracy and
  ``transfer_drop = scratch - frozen`` on the target task (labelled targets only);
* linear CKA (:func:`layer_cka`) between the source network and the same architecture trained on
  the target task (cached with :func:`dpmodels.nets.train_or_load`).

:func:`correlate` then ranks each score (and CKA) against the drop with :func:`spearman_with_ci`;
:func:`verdict`, :func:`plot_scores_vs_depth`, :func:`plot_score_vs_drop` (figures returned) and
:func:`summary_markdown` turn the tables into the report; :func:`write_report` writes all of it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn
from tqdm.auto import tqdm

from ..activations import extract
from ..activations.layers import list_layers
from ..data.digits import digits_images
from ..data.folder import image_folder
from ..data.images import ImageSet
from ..data.textures import TEXTURE_FAMILIES, Shift, texture_patches
from ..io import atomic_path, atomic_write_text
from ..nets import train_or_load
from ._features import check_layers
from .cka import layer_cka
from .measured import transfer_sweep
from .stats import spearman_with_ci
from .table import fit_layers, layer_shift_table

__all__ = [
    "SCORES",
    "Condition",
    "check_scoreable",
    "correlate",
    "make_conditions",
    "plot_score_vs_drop",
    "plot_scores_vs_depth",
    "run_conditions",
    "summary_markdown",
    "verdict",
    "write_report",
]

SCORES = ("predictive_drop", "occupancy_jsd", "novelty_share")
"""Shift scores compared with the measured drop (higher = more shift; CKA is compared too)."""

_SHIFT_KINDS = ("contrast", "noise", "colour", "blur")


@dataclass(frozen=True)
class Condition:
    """One target: ``score`` images (scored under the source fits) and, when labelled, a task
    ``train``/``test`` for measured transfer and the target network. ``spec`` describes the data
    (JSON) for the network cache."""

    name: str
    kind: str
    strength: float
    score: ImageSet
    train: ImageSet | None = None
    test: ImageSet | None = None
    spec: dict = field(default_factory=dict)

    @property
    def labelled(self) -> bool:
        return self.train is not None and self.test is not None


def _fit_channels(images: ImageSet, channels: int, convert: bool, what: str) -> ImageSet:
    if images.channels == channels:
        return images
    if not convert:
        raise ValueError(
            f"{what} has {images.channels} channel(s) but the source network takes {channels}; pass "
            f"convert_channels=true (scenario.convert_channels=true) to convert them explicitly "
            f"(ImageSet.with_channels({channels}): grey replicated or luminance)."
        )
    return images.with_channels(channels)


def make_conditions(
    *,
    source_family: str = "A",
    families: Sequence[str] = (),
    shifts: Mapping[str, Sequence[float]] | None = None,
    control: bool = False,
    digits: bool = False,
    folder: str | None = None,
    size: int = 32,
    channels: int = 3,
    train_per_class: int = 40,
    test_per_class: int = 20,
    convert_channels: bool = False,
    seed: int = 0,
) -> list[Condition]:
    """The target conditions of a scenario, each with its images ``(I, channels, size, size)``.

    ``families``: other texture families (whole-family classification); ``shifts``: ``{kind:
    strengths}`` with kind in contrast | noise | colour | blur (the source textures under that
    :class:`Shift`); ``control``: fresh unshifted source textures; ``digits``: textures -> digits
    (10 classes, grey replicated to ``channels`` only with ``convert_channels``); ``folder``: a user
    folder scored only (it has no image-level labels). Target train images are the scored ones.
    """
    shifts = dict(shifts or {})
    bad = sorted(set(shifts) - set(_SHIFT_KINDS)) + [f for f in families if f not in TEXTURE_FAMILIES]
    if bad:
        raise ValueError(
            f"unknown shift kind(s)/famil(ies) {bad}; shifts: {_SHIFT_KINDS}, families: "
            f"{sorted(TEXTURE_FAMILIES)}."
        )
    if train_per_class < 2 or test_per_class < 1:
        raise ValueError(
            f"need train_per_class >= 2 and test_per_class >= 1, got {train_per_class}, {test_per_class}."
        )
    base = {"size": size, "train_per_class": train_per_class, "test_per_class": test_per_class, "seed": seed}

    def textures(name: str, kind: str, strength: float, family: str, shift: Shift | None) -> Condition:
        train = texture_patches(train_per_class, size, family, shift=shift, seed=seed + 10)
        test = texture_patches(test_per_class, size, family, shift=shift, seed=seed + 11)
        train, test = (_fit_channels(s, channels, convert_channels, name) for s in (train, test))
        spec = {"generator": "texture_patches", "family": family, "shift": kind, "strength": strength, **base}
        return Condition(name, kind, strength, train, train, test, spec)

    out = [textures("control", "control", 0.0, source_family, None)] if control else []
    out += [textures(f"family={f}", "family", 0.0, f, None) for f in families]
    for kind, strengths in shifts.items():
        for s in strengths:
            out.append(textures(f"{kind}={s:g}", kind, float(s), source_family, Shift(**{kind: float(s)})))
    if digits:
        n_train, n_test = 10 * train_per_class, 10 * test_per_class
        if n_train + n_test > 1797:
            raise ValueError(
                f"digits has 1797 images, {n_train + n_test} requested; lower the per-class counts."
            )
        allset = _fit_channels(
            digits_images(n_train + n_test, size, seed=seed), channels, convert_channels, "digits"
        )
        train, test = allset.subset(slice(0, n_train)), allset.subset(slice(n_train, None))
        out.append(Condition("digits", "digits", 0.0, train, train, test, {"generator": "digits", **base}))
    if folder is not None:
        images = _fit_channels(
            image_folder(folder, size=size), channels, convert_channels, f"folder {folder}"
        )
        out.append(Condition("folder", "folder", 0.0, images, spec={"generator": "folder"}))
    if not out:
        raise ValueError(
            "the scenario defines no target condition; choose scenario=default|family_b|noise|"
            "contrast|colour|digits, or scenario=folder scenario.folder=DIR."
        )
    return out


def check_scoreable(
    model: nn.Module,
    layers: Sequence[str],
    images: ImageSet,
    what: str,
    *,
    positions_per_image: int | None,
    min_points: int,
) -> None:
    """Raise ``ValueError`` before any fitting when ``images`` ``(I, C, H, W)`` yield fewer than
    ``min_points`` positions in some layer (``I * min(positions_per_image, H_l * W_l)``)."""
    check_layers(model, list(layers))
    for info in list_layers(model, tuple(images.images.shape[1:]), layers=list(layers)):
        per_image = info.shape[1] * info.shape[2]
        per_image = per_image if positions_per_image is None else min(positions_per_image, per_image)
        if len(images) * per_image < min_points:
            raise ValueError(
                f"{what}: {len(images)} image(s) give {len(images) * per_image} positions in layer "
                f"{info.name!r} ({per_image} per image), too few to score: at least {min_points} are needed "
                f"(>= {math.ceil(min_points / per_image)} images); pass more images (transfer experiment: "
                f"task.train_per_class, source.score_per_class) or lower min_points."
            )


def _target_network(
    model: nn.Module, cond: Condition, train_kwargs: dict, seed: int, cache_dir, device, progress: bool
) -> nn.Module:
    classes = int(max(int(cond.train.targets.max()), int(cond.test.targets.max())) + 1)
    arch = {k: v for k, v in getattr(model, "config", {}).items() if k in ("in_channels", "widths")}
    net = {"name": "small_cnn", **arch, "num_classes": classes}
    spec = {**cond.spec, "role": "target-task network", "val": None}
    target, _ = train_or_load(
        net,
        spec,
        lambda: (cond.train, None),
        train_kwargs,
        seed=seed,
        cache_dir=cache_dir,
        device=device,
        progress=progress,
    )
    return target


def run_conditions(
    model: nn.Module,
    source: ImageSet,
    conditions: Sequence[Condition],
    layers: Sequence[str],
    *,
    extraction: Mapping | None = None,
    dpgmm: Mapping | None = None,
    scoring: Mapping | None = None,
    finetune: Mapping | None = None,
    target_training: Mapping | None = None,
    seed: int = 0,
    cache_dir: str | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> pd.DataFrame:
    """One row per (condition, layer): shift scores, measured transfer and CKA (NaN where the
    target has no labels). ``extraction``: ``positions_per_image``, ``standardize``, ``pca_dim``;
    ``dpgmm``: :class:`DPGMM` settings; ``scoring``: ``heldout_fraction``, ``min_points``,
    ``novelty_quantile``; ``finetune``: ``epochs``, ``batch_size``, ``lr``, ``probe``;
    ``target_training``: :func:`train_classifier` settings of the target network. The layer DPGMMs
    are fitted once on ``source`` (minus held-out images) and reused for every condition;
    ``exclusive_source`` / ``exclusive_target`` are counts of exclusive clusters."""
    extraction, scoring = dict(extraction or {}), dict(scoring or {})
    held, min_points = scoring.get("heldout_fraction", 0.25), scoring.get("min_points", 50)
    ppi = extraction.get("positions_per_image")
    if not 0.0 < held < 1.0:
        raise ValueError(f"heldout_fraction must lie in (0, 1), got {held!r}; try 0.25.")
    need = max(min_points, math.ceil(1 / scoring.get("novelty_quantile", 0.01)))
    check_scoreable(
        model, layers, source, "source", positions_per_image=ppi, min_points=math.ceil(need / held)
    )
    for cond in conditions:
        check_scoreable(
            model, layers, cond.score, f"target {cond.name!r}", positions_per_image=ppi, min_points=min_points
        )
    kw = dict(seed=seed, device=device, progress=False)
    src = extract(model, source, list(layers), **extraction, **kw)
    # the target goes through the source's fitted standardisation/PCA (None: raw channels for both)
    transforms = {name: acts.transform for name, acts in src.items()}
    transforms = None if any(t is None for t in transforms.values()) else transforms
    fits = fit_layers(src, held, seed, progress, **{"device": device, **dict(dpgmm or {})})
    budget = {k: v for k, v in dict(finetune or {}).items() if k != "probe"}
    frames = []
    for cond in tqdm(conditions, desc="conditions", disable=not progress):
        tgt = extract(model, cond.score, list(layers), transforms=transforms, positions_per_image=ppi, **kw)
        table = layer_shift_table(src, tgt, fits, held, seed, **_scoring_kw(scoring))
        table.insert(0, "condition", cond.name)
        table.insert(1, "kind", cond.kind)
        table.insert(2, "strength", cond.strength)
        table.insert(4, "depth", range(1, len(table) + 1))
        if cond.labelled:
            sweep = transfer_sweep(
                model,
                layers,
                cond.train,
                cond.test,
                probe=dict(finetune or {}).get("probe", True),
                seed=seed,
                device=device,
                **budget,
            )
            target = _target_network(model, cond, dict(target_training or {}), seed, cache_dir, device, False)
            cka = layer_cka(model, target, cond.test, list(layers), seed=seed, device=device)
            table = table.merge(sweep, on="layer")
            table["cka"] = [cka[name] for name in table.layer]
        else:
            for col in (
                "probe_accuracy",
                "frozen_accuracy",
                "scratch_accuracy",
                "transfer_drop",
                "chance",
                "cka",
            ):
                table[col] = float("nan")
        frames.append(
            table.drop(columns=["exclusive_source", "exclusive_target"]).assign(
                exclusive_source=[len(v) for v in table.exclusive_source],
                exclusive_target=[len(v) for v in table.exclusive_target],
            )
        )
    return pd.concat(frames, ignore_index=True)


def _scoring_kw(scoring: Mapping) -> dict:
    """The :func:`layer_shift_table` keyword arguments among ``scoring``."""
    return {k: scoring[k] for k in ("novelty_quantile", "min_points", "usage_threshold") if k in scoring}


def _rho(x, y, n_boot: int, seed: int) -> tuple[float, float, float, str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rho, low, high = spearman_with_ci(x, y, n_boot=n_boot, seed=seed)
    notes = [str(w.message).removeprefix("spearman_with_ci: ") for w in caught]
    return (
        rho,
        low,
        high,
        "; ".join(
            "score or drop constant: rho undefined" if "constant" in m and "resamples" not in m else m
            for m in notes
        ),
    )


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
            if len(ok) < 3:
                rows.append(
                    {
                        "measure": measure,
                        "scope": scope,
                        "n": len(ok),
                        "rho": math.nan,
                        "low": math.nan,
                        "high": math.nan,
                        "note": "fewer than 3 points",
                    }
                )
                continue
            rho, low, high, note = _rho(ok[measure].to_numpy(), ok.transfer_drop.to_numpy(), n_boot, seed)
            rows.append(
                {
                    "measure": measure,
                    "scope": scope,
                    "n": len(ok),
                    "rho": rho,
                    "low": low,
                    "high": high,
                    "note": note,
                }
            )
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
    """Scatter of ``measure`` against the measured drop (colour = condition), rho in the title."""
    import matplotlib.pyplot as plt

    row = correlations[(correlations.scope == "all") & (correlations.measure == measure)].iloc[0]
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, part in table.groupby("condition", sort=False):
        ax.scatter(part[measure], part.transfer_drop, label=name)
        for _, r in part.iterrows():
            ax.annotate(str(r.depth), (r[measure], r.transfer_drop), fontsize=7)
    ax.set(xlabel=f"{measure} (labels: layer depth)", ylabel="transfer drop (scratch - frozen)")
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


def summary_markdown(table: pd.DataFrame, correlations: pd.DataFrame, info: Mapping) -> str:
    """The run's report: settings, the per-(condition, layer) table, the correlations and an honest
    verdict on whether a shift score predicts the measured drop (``|rho| >= 0.7`` and ``>= CKA``)."""
    v = verdict(correlations)
    cols = [
        "condition",
        "layer",
        *SCORES,
        "cka",
        "probe_accuracy",
        "frozen_accuracy",
        "scratch_accuracy",
        "transfer_drop",
    ]
    out = [f"# Transfer experiment: {info.get('scenario', '')}", ""]
    out += [f"- {k}: {val}" for k, val in info.items()]
    out += [
        "",
        "## Per condition and layer",
        "",
        _markdown(table[cols]),
        "",
        "## Spearman rho against transfer_drop (95% paired-bootstrap interval)",
        "",
        _markdown(correlations),
        "",
    ]
    if v["best_score"] is None:
        n = int(np.isfinite(table.transfer_drop.astype(float)).sum())
        out.append(
            "No labelled target: measured transfer, and so the correlations, are not available."
            if n == 0
            else f"Only {n} labelled (condition, layer) point(s): too few for a rank correlation (need 3)."
        )
    else:
        rho, cka = v["rho"], v["cka_rho"]
        out.append(
            f"Best shift score (chosen after seeing the results): **{v['best_score']}**, rho = {rho:.2f} "
            f"[{v['low']:.2f}, {v['high']:.2f}] over n = {v['n']} (condition, layer) points; CKA: rho = "
            f"{cka:.2f}. |rho| >= 0.7: **{'yes' if v['predicts'] else 'no'}**; |rho| >= |rho_CKA|: "
            f"**{'yes' if v['beats_cka'] else 'no'}**. Expected signs (score > 0, CKA < 0): score "
            f"{'yes' if v['sign_as_expected'] else 'NO'}, CKA {'yes' if v['cka_sign_as_expected'] else 'NO'}. "
            + (
                "The shift scores track the measured drop on these data."
                if v["predicts"] and v["beats_cka"] and v["sign_as_expected"]
                else "On these data the shift scores do NOT predict the measured transfer drop well enough "
                "(the experiment was not tuned to change that)."
            )
        )
        out += ["", _diagnostics(table)]
    return "\n".join(out) + "\n"


def _diagnostics(table: pd.DataFrame) -> str:
    """What limits the correlations: saturated frozen accuracy, drops that do not vary with depth."""
    labelled = table[np.isfinite(table.transfer_drop.astype(float))]
    spread = labelled.groupby("condition", sort=False).transfer_drop.agg(lambda d: d.max() - d.min())
    n_layers = int(labelled.groupby("condition").size().max())
    saturated = int((labelled.frozen_accuracy >= labelled.frozen_accuracy.max() - 1e-9).sum())
    text = (
        f"Diagnostics: the drop varies across layers in {int((spread > 1e-9).sum())} of {len(spread)} "
        f"condition(s) (elsewhere the per-condition rho is undefined; with {n_layers} layers it takes only a few "
        f"values, so per-condition intervals say little); frozen accuracy equals its maximum "
        f"{labelled.frozen_accuracy.max():.3f} in {saturated} of {len(labelled)} points"
    )
    if saturated > len(labelled) / 2:
        text += (
            ", so most of the spread in the drop comes from the scratch baseline, which all layers of a "
            "condition share"
        )
    return text + "."


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
