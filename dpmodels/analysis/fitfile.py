"""``fits/<layer>.pt``: everything needed to map new images with a run's fitted layer, exactly.

The main job writes one file per layer: the fitted posterior (variational parameters in the data's
units, the model's prior and base measure, expected counts), the layer's standardisation/PCA
transform, the extraction settings that decide which positions become points, the layer's mean
activation over the run's positions in the raw channel space (the "reference mean" that concept
importance puts in place of a removed concept) and a fingerprint of the network's weights. Only
tensors, numbers, strings, lists and dicts are stored, so ``torch.load(..., weights_only=True)``
reads it back.
"""

from __future__ import annotations

import hashlib
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..activations.types import FeatureTransform, LayerActivations
from ..infer.checkpoint import params_from_state, params_to_state
from ..io import atomic_path
from ..models.base_measure import BaseMeasure
from ..models.dpgmm import ModelSpec
from ..posterior import MixturePosterior
from ..priors import make_prior
from .outputs import layer_file

__all__ = ["FIT_FORMAT", "LayerFitFile", "load_fit", "network_fingerprint", "raw_mean", "save_fit"]

FIT_FORMAT = 1
_TRANSFORM_FIELDS = ("mean", "scale", "pca_mean", "components", "explained_variance_ratio")
_EXTRACTION_KEYS = ("positions_per_image", "seed", "smooth", "normalize", "channels")


def network_fingerprint(model: nn.Module) -> str:
    """SHA-256 (16 hex digits) over the names, shapes and values of ``model``'s state dict: two
    networks agree only if they are the same architecture, width and weights."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()[:16]


def raw_mean(acts: LayerActivations) -> Tensor:
    """The layer's mean activation ``(C,)`` over its extracted positions, in the raw channel space
    (before standardisation/PCA): read off the fitted transform, or computed from raw points."""
    t = acts.transform
    if t is not None and t.mean is not None:
        return t.mean.float().clone()
    if t is not None and t.components is not None:
        return t.pca_mean.float().clone()
    total = torch.zeros(acts.num_features, dtype=torch.float64)
    rows = 65536
    for i in range(0, acts.num_points, rows):
        block = acts.points[i : i + rows]
        block = block if isinstance(block, Tensor) else torch.from_numpy(np.asarray(block))
        total += block.double().sum(0)
    return (total / max(acts.num_points, 1)).float()


def save_fit(run_dir: str | Path, name: str, posterior: MixturePosterior, acts: LayerActivations,
             network: str) -> Path:  # fmt: skip
    """Write ``fits/<layer>.pt`` for layer ``name`` (``posterior``: the fitted ``B = 1`` posterior in
    the data's units, ``acts``: the layer's activations, ``network``: :func:`network_fingerprint`)."""
    spec = posterior.spec
    base = spec.base
    state = {
        "format": FIT_FORMAT,
        "layer": name,
        "network": network,
        "params": {
            k: v.clone() if isinstance(v, Tensor) else v for k, v in params_to_state(posterior.params).items()
        },
        "counts": posterior._counts.detach().cpu().clone(),
        "num_points": int(posterior.num_points),
        "active_threshold": float(posterior.active_threshold),
        "prior": {"name": spec.prior.name, "settings": dict(spec.prior.settings())},
        "truncation": int(spec.truncation),
        "base": {
            "covariance": base.covariance,
            **{
                k: getattr(base, k).detach().cpu().clone() for k in ("mean", "mean_precision", "dof", "scale")
            },
            "rank": int(base.rank),
            "loading_precision": float(base.loading_precision),
        },
        "transform": None if acts.transform is None else _transform_state(acts.transform),
        "extraction": {k: acts.meta.get(k) for k in _EXTRACTION_KEYS},
        "reference_mean": raw_mean(acts),
    }
    path = Path(run_dir) / "fits" / f"{layer_file(name)}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(state, tmp)
    return path


class LayerFitFile:
    """A loaded ``fits/<layer>.pt``: ``posterior`` (``B = 1`` :class:`MixturePosterior`),
    ``transform`` (or ``None``), ``extraction`` settings, ``reference_mean (C,)``, ``network``."""

    def __init__(self, state: dict):
        self.layer: str = state["layer"]
        self.network: str = state["network"]
        params = params_from_state(state["params"], "cpu")
        b = state["base"]
        base = BaseMeasure(b["covariance"], b["mean"], b["mean_precision"], b["dof"], b["scale"],
                           rank=b["rank"], loading_precision=b["loading_precision"])  # fmt: skip
        prior = make_prior(state["prior"]["name"], **state["prior"]["settings"])
        spec = ModelSpec(prior, base, state["truncation"])
        self.posterior = MixturePosterior(
            params, spec, state["counts"], state["num_points"], state["active_threshold"]
        )
        t = state["transform"]
        self.transform = None if t is None else FeatureTransform(**t)
        self.extraction: dict = dict(state["extraction"])
        self.reference_mean: Tensor = state["reference_mean"]

    @property
    def channels(self) -> int:
        """``C``: the layer's raw channel count."""
        return int(self.reference_mean.shape[0])


def load_fit(path: str | Path) -> LayerFitFile:
    """Read a ``fits/<layer>.pt`` written by :func:`save_fit` (``weights_only=True``)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FIT_FORMAT:
        raise ValueError(
            f"{path} is not a dpmodels fit file of format {FIT_FORMAT}; rerun the analysis with this "
            "version of dpmodels to write it."
        )
    return LayerFitFile(state)


def _transform_state(t: FeatureTransform) -> dict:
    out = {"channels": int(t.channels)}
    for f in fields(t):
        if f.name in _TRANSFORM_FIELDS:
            v = getattr(t, f.name)
            out[f.name] = None if v is None else v.detach().cpu()
    return out
