"""Cluster maps against ground-truth region masks.

Headline protocol (``resolution="input"``): label maps are resampled to input resolution (nearest
position centre, :func:`dpmodels.maps.upsample_map`) and compared with every labelled mask pixel.
The alternative (``resolution="positions"``) compares each map position with the mask label of its
centre pixel (:func:`dpmodels.maps.mask_at_positions`). Pixels/positions with mask ``-1`` or label
``-1`` (not extracted) are ignored.

Metrics: ARI and NMI (scikit-learn) over the whole set and averaged per image; Hungarian-matched
mean IoU (one-to-one matching of clusters to true regions maximising total IoU; pixels in clusters
left unmatched count as errors) and the matched accuracy; ``|K̂ - K*|`` with ``K*`` the number of
distinct true labels present (over the set and per image, where ``K̂`` per image is the number of
clusters present in it); calibration: AUROC of the entropy for detecting misassigned pixels (label
differs from its matched truth) and the expected calibration error of the maximum responsibility
against correctness (15 equal-width bins).

Two matchings define "correct" for the calibration metrics:

* one-to-one (``entropy_auroc``, ``ece``): the Hungarian matching above; every pixel of a cluster
  left unmatched counts as misassigned, so a method that splits one true region into several pure
  clusters is penalised for the split itself (this measures segmentation at the true K);
* many-to-one (``entropy_auroc_majority``, ``ece_majority``): each cluster is matched to the true
  label holding most of its pixels (:func:`majority_match`), several clusters may share a label,
  and a pixel is misassigned only when it differs from its cluster's majority label. This measures
  whether the uncertainty flags the pixels a cluster gets wrong, independently of over-clustering
  (it is trivially perfect for one cluster per pixel, so read it beside NMI/ARI and ``k_hat``).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, roc_auc_score

__all__ = ["ECE_BINS", "calibration_error", "evaluate_labels", "hungarian_match", "majority_match"]

ECE_BINS = 15


def _as_int(a, name: str) -> np.ndarray:
    arr = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise ValueError(f"{name} must hold integer labels, got dtype {arr.dtype}.")
    return arr.astype(np.int64)


def hungarian_match(pred: np.ndarray, true: np.ndarray) -> tuple[dict[int, int], np.ndarray, np.ndarray]:
    """One-to-one matching of predicted clusters to true labels maximising the summed IoU.

    ``pred``, ``true``: ``(n,)`` non-negative labels. Returns ``(mapping pred -> true, IoU of each
    true label (sorted), the true labels)``; a true label left unmatched has IoU 0."""
    p_ids, p_inv = np.unique(pred, return_inverse=True)
    t_ids, t_inv = np.unique(true, return_inverse=True)
    conf = np.zeros((len(p_ids), len(t_ids)))
    np.add.at(conf, (p_inv, t_inv), 1.0)  # confusion counts (K_pred, K_true)
    union = conf.sum(1, keepdims=True) + conf.sum(0, keepdims=True) - conf
    iou = conf / np.maximum(union, 1.0)
    rows, cols = linear_sum_assignment(iou, maximize=True)
    per_true = np.zeros(len(t_ids))
    per_true[cols] = iou[rows, cols]
    return {int(p_ids[r]): int(t_ids[c]) for r, c in zip(rows, cols, strict=True)}, per_true, t_ids


def majority_match(pred: np.ndarray, true: np.ndarray) -> dict[int, int]:
    """Many-to-one matching: each predicted cluster -> the true label most of its pixels carry (ties:
    the smallest label). ``pred``, ``true``: ``(n,)`` non-negative labels."""
    p_ids, p_inv = np.unique(pred, return_inverse=True)
    t_ids, t_inv = np.unique(true, return_inverse=True)
    conf = np.zeros((len(p_ids), len(t_ids)))
    np.add.at(conf, (p_inv, t_inv), 1.0)  # confusion counts (K_pred, K_true)
    return {int(p): int(t_ids[j]) for p, j in zip(p_ids, conf.argmax(1), strict=True)}


def _calibration(out: dict, suffix: str, correct: np.ndarray, valid, pred_shape, entropy, confidence) -> None:
    """Fill ``entropy_auroc<suffix>`` and ``ece<suffix>`` given per-pixel correctness ``(n,)``."""
    if entropy is not None:
        e = np.asarray(entropy, dtype=float)[valid]
        ok = np.isfinite(e)
        if 0 < (~correct[ok]).sum() < ok.sum():
            out[f"entropy_auroc{suffix}"] = float(roc_auc_score(~correct[ok], e[ok]))
    if confidence is not None:
        c = np.asarray(confidence, dtype=float)[valid]
        ok = np.isfinite(c)
        out[f"ece{suffix}"] = calibration_error(np.clip(c[ok], 0.0, 1.0), correct[ok])


def calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: ``sum_b (n_b / n) |accuracy_b - mean confidence_b|`` over
    ``bins`` equal-width confidence bins on ``[0, 1]`` (the last bin includes 1)."""
    confidence, correct = np.asarray(confidence, float), np.asarray(correct, float)
    if confidence.shape != correct.shape or confidence.size == 0:
        raise ValueError(
            f"confidence and correct must be non-empty and of equal shape, got {confidence.shape} "
            f"and {correct.shape}."
        )
    if np.nanmin(confidence) < 0 or np.nanmax(confidence) > 1:
        raise ValueError("confidence must lie in [0, 1] (a probability such as the max responsibility).")
    b = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    n_b = np.bincount(b, minlength=bins)
    acc = np.bincount(b, weights=correct, minlength=bins)
    conf = np.bincount(b, weights=confidence, minlength=bins)
    used = n_b > 0
    return float(np.abs(acc[used] - conf[used]).sum() / confidence.size)


def evaluate_labels(
    labels,
    truth,
    *,
    entropy=None,
    confidence=None,
    k_hat: int | None = None,
) -> dict:
    """Compare cluster labels with true labels of the same pixels (or positions).

    ``labels``, ``truth``: ``(I, ...)`` integer arrays of equal shape (first axis = images);
    ``-1`` in either is ignored. ``entropy`` (nats) and ``confidence`` (max responsibility): float
    arrays of the same shape, optional (their metrics are ``NaN`` without them). ``k_hat``: the
    method's number of clusters (default: distinct labels present). Returns a dict of floats, plus
    ``"per_image"``: a dict of ``(I,)`` arrays (``ari``, ``nmi``, ``k_error``; ``NaN`` for images
    without labelled pixels).
    """
    pred, true = _as_int(labels, "labels"), _as_int(truth, "truth")
    if pred.shape != true.shape or pred.ndim < 2:
        raise ValueError(
            f"labels and truth must share one shape (I, ...), got {pred.shape} and {true.shape}; "
            "resample the label maps to the masks' resolution first (LayerMaps.at_input)."
        )
    valid = (pred >= 0) & (true >= 0)
    n = int(valid.sum())
    if n == 0:
        raise ValueError("no pixel has both a cluster label and a true label (all -1); nothing to evaluate.")
    p, t = pred[valid], true[valid]
    k_true = len(np.unique(t))
    mapping, iou, _ = hungarian_match(p, t)
    matched = np.array([mapping.get(int(c), -2) for c in np.unique(p)])
    matched_p = matched[np.searchsorted(np.unique(p), p)]  # each pixel's matched true label, -2 if none
    correct = matched_p == t
    k_used = len(np.unique(p))
    k_hat = k_used if k_hat is None else int(k_hat)
    out = {
        "ari": float(adjusted_rand_score(t, p)),
        "nmi": float(normalized_mutual_info_score(t, p)),
        "miou": float(iou.mean()),
        "matched_accuracy": float(correct.mean()),
        "k_hat": k_hat,
        "k_used": k_used,
        "k_true": k_true,
        "k_error": abs(k_hat - k_true),
        "coverage": float(valid.sum() / max((true >= 0).sum(), 1)),
        "entropy_auroc": float("nan"),
        "ece": float("nan"),
    }
    for name, arr in (("entropy", entropy), ("confidence", confidence)):
        if arr is not None and np.shape(arr) != pred.shape:
            raise ValueError(f"{name} must have the labels' shape {pred.shape}, got {np.shape(arr)}.")
    out.update(entropy_auroc_majority=float("nan"), ece_majority=float("nan"))
    _calibration(out, "", correct, valid, pred.shape, entropy, confidence)
    majority = majority_match(p, t)
    correct_majority = (
        np.array([majority[int(c)] for c in np.unique(p)])[np.searchsorted(np.unique(p), p)] == t
    )
    out["majority_accuracy"] = float(correct_majority.mean())
    _calibration(out, "_majority", correct_majority, valid, pred.shape, entropy, confidence)
    per = {k: np.full(pred.shape[0], np.nan) for k in ("ari", "nmi", "k_error")}
    for i in range(pred.shape[0]):
        v = valid[i]
        if v.any():
            pi, ti = pred[i][v], true[i][v]
            per["ari"][i] = adjusted_rand_score(ti, pi)
            per["nmi"][i] = normalized_mutual_info_score(ti, pi)
            per["k_error"][i] = abs(len(np.unique(pi)) - len(np.unique(ti)))
    out.update({f"{k}_image_mean": float(np.nanmean(v)) for k, v in per.items()})
    out["per_image"] = per
    return out
