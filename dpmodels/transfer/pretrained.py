"""Which layer of a pretrained network transfers to a target? Measured transfer (few-shot linear
probes on frozen, pooled stage features, several seeds) against label-free predictors computed from
the DPGMM of each stage's positions on the target's unlabelled images, with linear CKA as the
comparator (protocol P18 in ``experiments/bench/PROTOCOLS.md``).

The target labels enter only the measured transfer: every predictor is computed from an unlabelled
pool of target images (and, for the shift scores, from a source of natural photos).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from ..activations import extract
from ..activations.layers import Tap, layer_names, preserve_mode, probe_layers, probe_names
from ..analysis.fitting import read_points
from ..data.bundled import load_bundled
from ..data.digits import digits_images
from ..data.images import ImageSet
from ..data.textures import texture_patches
from ..estimator import DPGMM
from ..maps import n_active_draws
from ..nets.preprocessing import model_preprocessing
from .cka import linear_cka
from .scores import shift_scores
from .stats import spearman_with_ci

__all__ = [
    "PREDICTORS",
    "TARGETS",
    "Target",
    "bundled_crops",
    "instrument_check",
    "measured_transfer",
    "predictor_correlations",
    "stage_predictors",
]

log = logging.getLogger(__name__)

PREDICTORS = (
    "k_hat",
    "k_interval",
    "entropy",
    "heldout_density",
    "predictive_drop",
    "occupancy_jsd",
    "novelty_share",
    "cka",
)
"""Label-free predictors (``cka`` is the comparator)."""

REAL_TEXTURES = ("brick", "grass", "gravel", "moon", "immunohistochemistry")
SOURCE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "camera", "coins")


def bundled_crops(names: Sequence[str], num_per_class: int, size: int, seed: int = 0) -> ImageSet:
    """Random ``size`` x ``size`` crops of bundled scikit-image photos, RGB (grey replicated), in a
    seeded random order; ``targets`` = index into ``names``. Sources smaller than ``size`` on a side
    are first resized so their shorter side is ``size``."""
    g = torch.Generator().manual_seed(seed)
    crops, labels = [], []
    for k, name in enumerate(names):
        src = load_bundled(name).expand(3, -1, -1)  # (3, H, W)
        if min(src.shape[1:]) < size:
            scale = size / min(src.shape[1:])
            src = F.interpolate(src[None], scale_factor=scale, mode="bilinear", antialias=True)[0]
        for _ in range(num_per_class):
            top = int(torch.randint(0, src.shape[1] - size + 1, (1,), generator=g))
            left = int(torch.randint(0, src.shape[2] - size + 1, (1,), generator=g))
            crops.append(src[:, top : top + size, left : left + size])
            labels.append(k)
    order = torch.randperm(len(crops), generator=g)
    images = torch.stack(crops)[order].clamp(0, 1)  # (I, 3, size, size)
    targets = torch.tensor(labels)[order]
    names_out = [f"{names[int(t)]}-{i}" for i, t in enumerate(targets)]
    return ImageSet(images, None, targets, names_out, None, list(names), "bundled_crops", {"seed": seed})


def _textures(family: str) -> Callable[[int, int, int], ImageSet]:
    def load(num_per_class: int, size: int, seed: int) -> ImageSet:
        return texture_patches(num_per_class, size, family, seed=seed)

    return load


def _digits(num_per_class: int, size: int, seed: int) -> ImageSet:
    images = digits_images(size=size, seed=seed).with_channels(3)
    g = np.random.default_rng(seed)
    index = np.concatenate(
        [
            g.choice(np.flatnonzero(images.targets.numpy() == c), num_per_class, replace=False)
            for c in range(10)
        ]
    )
    return images.subset(torch.from_numpy(g.permutation(index)))


TARGETS: dict[str, Callable[[int, int, int], ImageSet]] = {
    "textures_a": _textures("A"),
    "textures_b": _textures("B"),
    "real_textures": lambda n, size, seed: bundled_crops(REAL_TEXTURES, n, size, seed),
    "digits": _digits,
}
"""Labelled targets by name: ``loader(num_per_class, size, seed) -> ImageSet``."""


@dataclass(frozen=True)
class Target:
    name: str
    loader: Callable[[int, int, int], ImageSet]


def _pooled(
    model: nn.Module, images: ImageSet, layers: Sequence[str], batch_size: int = 64
) -> dict[str, np.ndarray]:
    """Global-average-pooled features ``(I, C_l)`` of each layer, float64 (the model's preprocessing
    applied; no geometry probe: one forward pass per batch)."""
    x = images.images
    names, mode = layer_names(model)
    probed = probe_layers(model, probe_names(model, list(layers))[0], mode, tuple(x.shape[1:]), "cpu")
    missing = [n for n in layers if n not in probed]
    if missing:
        raise ValueError(f"layers {missing} are not spatial layers of {type(model).__name__}.")
    pre = model_preprocessing(model)
    tap = Tap(model, list(layers), mode, layouts={n: probed[n][1] for n in layers})
    out: dict[str, list] = {n: [] for n in layers}
    with preserve_mode(model), torch.no_grad():
        model.eval()
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size]
            for n, o in tap(pre(xb) if pre is not None else xb).items():
                out[n].append(o.double().mean((2, 3)))  # (b, C_l)
    return {n: torch.cat(v).numpy() for n, v in out.items()}


def measured_transfer(
    model: nn.Module,
    layers: Sequence[str],
    target: Target,
    *,
    size: int = 128,
    shots: int = 5,
    test_per_class: int = 30,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    C: float = 1.0,
) -> pd.DataFrame:
    """Few-shot linear-probe accuracy per (layer, seed): ``shots`` training images per class (data
    seed ``2 s``), ``test_per_class`` fresh test images (seed ``2 s + 1``). Columns ``target, layer,
    seed, accuracy``."""
    rows = []
    for s in seeds:
        train, test = target.loader(shots, size, 2 * s), target.loader(test_per_class, size, 2 * s + 1)
        f_train, f_test = _pooled(model, train, layers), _pooled(model, test, layers)
        for layer in layers:
            probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000))
            probe.fit(f_train[layer], train.targets.numpy())
            acc = float(np.mean(probe.predict(f_test[layer]) == test.targets.numpy()))
            rows.append({"target": target.name, "layer": layer, "seed": s, "accuracy": acc})
    return pd.DataFrame(rows)


def summarise_transfer(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Mean, SD and 95 % t-interval of the accuracy per (target, layer)."""
    g = per_seed.groupby(["target", "layer"], sort=False)["accuracy"]
    out = g.agg(["mean", "std", "count"]).reset_index()
    half = stats.t.ppf(0.975, out["count"] - 1) * out["std"] / np.sqrt(out["count"])
    return out.assign(ci_low=out["mean"] - half, ci_high=out["mean"] + half).rename(
        columns={"mean": "accuracy", "std": "accuracy_sd", "count": "seeds"}
    )


def instrument_check(summary: pd.DataFrame, factor: float = 3.0, min_targets: int = 2) -> dict:
    """Does measured transfer vary across layers by more than ``factor`` x its seed SD in at least
    ``min_targets`` targets? ``{"targets": {name: {"range", "seed_sd", "ratio"}}, "passed"}``."""
    per = {}
    for name, frame in summary.groupby("target", sort=False):
        spread = float(frame["accuracy"].max() - frame["accuracy"].min())
        sd = float(frame["accuracy_sd"].mean())
        # no seed noise: any spread counts (ratio None keeps metrics.json strict JSON); 0/0 is saturation
        ratio = spread / sd if sd > 0 else None
        varies = spread > factor * sd if sd > 0 else spread > 0
        per[name] = {"range": spread, "seed_sd": sd, "ratio": ratio, "varies": bool(varies),
                     "saturated": bool(spread == 0 and sd == 0)}  # fmt: skip
    passed = sum(v["varies"] for v in per.values()) >= min_targets
    return {"targets": per, "factor": factor, "passed": bool(passed)}


def _fit(points: torch.Tensor, fit_points: int, heldout_points: int, seed: int, dpgmm: Mapping):
    g = np.random.default_rng(seed)
    perm = g.permutation(len(points))
    n_held = min(heldout_points, len(points) // 5)
    fit_idx, held_idx = np.sort(perm[n_held : n_held + fit_points]), np.sort(perm[:n_held])
    model = DPGMM(**{"truncation": 30, **dpgmm}, seed=seed).fit(points[fit_idx])
    return model, points[held_idx]


def stage_predictors(
    model: nn.Module,
    layers: Sequence[str],
    pool: ImageSet,
    source: ImageSet,
    *,
    pca_dim: int = 16,
    fit_points: int = 8000,
    heldout_points: int = 2000,
    seed: int = 0,
    dpgmm: Mapping | None = None,
) -> pd.DataFrame:
    """The label-free predictors (:data:`PREDICTORS`) per layer for the unlabelled target ``pool``
    against ``source`` images (labels of neither are read). One row per layer."""
    dpgmm = dict(dpgmm or {})
    kw = dict(progress=False, seed=seed, batch_size=32)
    own = extract(model, pool, list(layers), standardize=True, pca_dim=pca_dim, **kw)
    src = extract(model, source, list(layers), standardize=True, pca_dim=pca_dim, **kw)
    projected = extract(model, pool, list(layers), transforms={n: src[n].transform for n in layers}, **kw)
    head = _pooled(model, pool, [_last_spatial(model, layers)])
    pooled = _pooled(model, pool, layers)
    rows = []
    for layer in layers:
        fit, held = _fit(
            read_points(own[layer], np.arange(own[layer].num_points)), fit_points, heldout_points, seed, dpgmm
        )
        post = fit.posterior_
        k_draws = n_active_draws(post, num_draws=200, seed=seed)
        resp = torch.as_tensor(fit.predict_proba(held.numpy()), dtype=torch.float64)  # (n, K)
        entropy = float(-(resp * torch.log(resp.clamp_min(1e-300))).sum(1).mean())
        src_fit, src_held = _fit(
            read_points(src[layer], np.arange(src[layer].num_points)), fit_points, heldout_points, seed, dpgmm
        )
        tgt = read_points(projected[layer], np.arange(projected[layer].num_points))
        tgt = tgt[torch.from_numpy(np.random.default_rng(seed).permutation(len(tgt))[:heldout_points])]
        shift = shift_scores(src_fit, src_held, tgt)
        rows.append(
            {
                "layer": layer,
                "k_hat": int(fit.n_active_),
                "k_interval": float(np.quantile(k_draws, 0.95) - np.quantile(k_draws, 0.05)),
                "entropy": entropy,
                "heldout_density": float(fit.score_samples(held.numpy()).mean() / held.shape[1]),
                "predictive_drop": float(shift["predictive_drop"]),
                "occupancy_jsd": float(shift["occupancy_jsd"]),
                "novelty_share": float(shift["novelty_share"]),
                "cka": linear_cka(pooled[layer], next(iter(head.values()))),
            }
        )
    return pd.DataFrame(rows)


def _last_spatial(model: nn.Module, layers: Sequence[str]) -> str:
    """The head's node when the model has one (``head``), else the deepest of ``layers``."""
    return "head" if "head" in dict(model.named_children()) else list(layers)[-1]


def predictor_correlations(table: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> dict[str, dict]:
    """Spearman ρ of each predictor in ``table`` against ``accuracy`` over all rows (layer x target),
    with a 95 % bootstrap interval: ``{predictor: {"rho", "ci": [lo, hi], "n"}}``."""
    out = {}
    for name in PREDICTORS:
        if name not in table:
            continue
        ok = np.isfinite(table[name].to_numpy(float)) & np.isfinite(table["accuracy"].to_numpy(float))
        if ok.sum() < 3 or np.ptp(table[name][ok]) == 0:  # undefined: too few pairs or a constant predictor
            out[name] = {"rho": float("nan"), "ci": [float("nan"), float("nan")], "n": int(ok.sum())}
            continue
        rho, lo, hi = spearman_with_ci(table[name][ok], table["accuracy"][ok], n_boot=n_boot, seed=seed)
        out[name] = {"rho": float(rho), "ci": [float(lo), float(hi)], "n": int(ok.sum())}
    return out


def model_inputs_note(model: nn.Module) -> dict | None:
    pre = model_preprocessing(model)
    return None if pre is None else pre.as_dict()
