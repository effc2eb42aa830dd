"""Linear centred kernel alignment (CKA; Kornblith et al. 2019) between two networks, layer by layer.

For representations ``X`` ``(n, p1)`` and ``Y`` ``(n, p2)`` of the same ``n`` inputs, columns
centred, ``CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` in ``[0, 1]``: 1 for representations
equal up to an orthogonal transform and isotropic scaling. It is the comparator for the shift
scores: how similar are a layer's features in a source-trained and a target-trained network?
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..data.images import ImageSet
from ._features import REDUCTIONS, check_layers, layer_features

__all__ = ["layer_cka", "linear_cka"]


def _as_matrix(x, name: str) -> Tensor:
    t = x.detach() if isinstance(x, Tensor) else torch.from_numpy(np.asarray(x, dtype=np.float64))
    if t.dim() != 2:
        raise ValueError(f"{name} must be a representation (n, p), got shape {tuple(t.shape)}.")
    t = t.to(torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf; check the layer's activations.")
    return t


def linear_cka(X, Y) -> float:
    """Linear CKA between ``X`` ``(n, p1)`` and ``Y`` ``(n, p2)`` (rows = the same inputs), in
    float64. NaN with a ``RuntimeWarning`` when either representation is constant over inputs."""
    x, y = _as_matrix(X, "X"), _as_matrix(Y, "Y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"X and Y must describe the same inputs (rows), got {x.shape[0]} and {y.shape[0]} rows."
        )
    if x.shape[0] < 2:
        raise ValueError(f"CKA needs at least 2 inputs (rows), got {x.shape[0]}.")
    x = x - x.mean(0, keepdim=True)  # (n, p1) centred
    y = y - y.mean(0, keepdim=True)  # (n, p2)
    n, p = x.shape[0], max(x.shape[1], y.shape[1])
    if p <= n:  # feature space: p x p products
        cross = torch.linalg.matrix_norm(y.T @ x) ** 2
        norm_x = torch.linalg.matrix_norm(x.T @ x)
        norm_y = torch.linalg.matrix_norm(y.T @ y)
    else:  # sample space: n x n Gram matrices, tr(K L) = ||Y^T X||_F^2
        K, L = x @ x.T, y @ y.T  # (n, n) each
        cross = (K * L).sum()
        norm_x, norm_y = torch.linalg.matrix_norm(K), torch.linalg.matrix_norm(L)
    denom = float(norm_x * norm_y)
    if denom <= 0.0 or not np.isfinite(denom):
        warnings.warn(
            "linear_cka: a representation is constant over the inputs, so CKA is undefined; returning NaN.",
            RuntimeWarning,
            stacklevel=2,
        )
        return float("nan")
    return float(min(max(float(cross) / denom, 0.0), 1.0))


def layer_cka(
    model_a: nn.Module,
    model_b: nn.Module,
    images: ImageSet | Tensor,
    layers: Sequence[str] | Mapping[str, str],
    *,
    features: str = "pool",
    positions_per_image: int = 16,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> dict[str, float]:
    """Per-layer linear CKA between two networks on the same ``images`` ``(I, C, H, W)``.

    ``layers``: names present in both models (``named_modules`` names), or a mapping from a layer of
    ``model_a`` to its counterpart in ``model_b``. ``features``: ``"pool"`` (global average pool,
    ``(I, C)``), ``"positions"`` (``positions_per_image`` map positions per image, the same
    positions in both networks, ``(I * P, C)``; needs equal map sizes) or ``"flatten"`` (``(I, C*H*W)``).
    Both models run in eval mode without gradients. Returns ``{layer of model_a: CKA}``.
    """
    if features not in REDUCTIONS:
        raise ValueError(f"features must be one of {REDUCTIONS}, got {features!r}; try 'pool'.")
    pairs = dict(layers) if isinstance(layers, Mapping) else {name: name for name in layers}
    check_layers(model_a, list(pairs), "model_a")
    check_layers(model_b, list(pairs.values()), "model_b")
    kw = dict(
        reduce=features,
        positions_per_image=positions_per_image,
        seed=seed,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )
    shapes_a: dict[str, tuple[int, ...]] = {}
    shapes_b: dict[str, tuple[int, ...]] = {}
    feats_a = layer_features(model_a, images, list(pairs), shapes=shapes_a, **kw)
    feats_b = layer_features(model_b, images, list(pairs.values()), shapes=shapes_b, **kw)
    out = {}
    for name_a, name_b in pairs.items():
        xa, xb = feats_a[name_a], feats_b[name_b]
        if features == "positions" and shapes_a[name_a][1:] != shapes_b[name_b][1:]:
            raise ValueError(
                f"layers {name_a!r} and {name_b!r} have maps {shapes_a[name_a][1:]} and "
                f"{shapes_b[name_b][1:]}; features='positions' pairs positions, so it needs equal map "
                "sizes: use features='pool'."
            )
        out[name_a] = linear_cka(xa, xb)
    return out
