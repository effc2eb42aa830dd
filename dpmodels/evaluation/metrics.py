"""Cluster maps against ground-truth region masks.

Headline protocol (``resolution="input"``): label maps are resampled to input resolution (nearest
position centre, :func:`dpmodels.maps.upsample_map`) and compared with every labelled mask pixel.
The alternative (``resolution="positions"``) compares each map position with the mask label of its
centre pixel (:func:`dpmodels.maps.mask_at_positions`). Pixels/positions with mask ``-1`` or label
``-1`` (not extracted) are ignored.

Metrics: ARI and NMI over the whole set and averaged per image (scikit-learn's definitions,
computed here from one contingency table per image so that a layer's whole evaluation sorts the
pixels once; :func:`adjusted_rand_from_table`, :func:`nmi_from_table` give the same floats as
``sklearn.metrics``); Hungarian-matched
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

from math import log

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.stats import rankdata

__all__ = [
    "ECE_BINS",
    "adjusted_rand_from_table",
    "calibration_error",
    "evaluate_labels",
    "hungarian_match",
    "majority_match",
    "nmi_from_table",
]

ECE_BINS = 15


def _as_int(a, name: str) -> np.ndarray:
    arr = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise ValueError(f"{name} must hold integer labels, got dtype {arr.dtype}.")
    return arr.astype(np.int64)


def _table(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(confusion (K_pred, K_true) int64, predicted ids, true ids, each point's predicted index)``."""
    p_ids, p_inv = np.unique(pred, return_inverse=True)
    t_ids, t_inv = np.unique(true, return_inverse=True)
    conf = np.bincount(p_inv * len(t_ids) + t_inv, minlength=len(p_ids) * len(t_ids))
    return conf.reshape(len(p_ids), len(t_ids)), p_ids, t_ids, p_inv


def _hungarian(conf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(matched true index of each predicted cluster or -1, IoU of each true label)``."""
    conf = conf.astype(np.float64)
    union = conf.sum(1, keepdims=True) + conf.sum(0, keepdims=True) - conf
    iou = conf / np.maximum(union, 1.0)
    rows, cols = linear_sum_assignment(iou, maximize=True)
    per_true = np.zeros(conf.shape[1])
    per_true[cols] = iou[rows, cols]
    matched = np.full(conf.shape[0], -1)
    matched[rows] = cols
    return matched, per_true


def hungarian_match(pred: np.ndarray, true: np.ndarray) -> tuple[dict[int, int], np.ndarray, np.ndarray]:
    """One-to-one matching of predicted clusters to true labels maximising the summed IoU.

    ``pred``, ``true``: ``(n,)`` non-negative labels. Returns ``(mapping pred -> true, IoU of each
    true label (sorted), the true labels)``; a true label left unmatched has IoU 0."""
    conf, p_ids, t_ids, _ = _table(pred, true)
    matched, per_true = _hungarian(conf)
    return {int(p_ids[r]): int(t_ids[c]) for r, c in enumerate(matched) if c >= 0}, per_true, t_ids


def majority_match(pred: np.ndarray, true: np.ndarray) -> dict[int, int]:
    """Many-to-one matching: each predicted cluster -> the true label most of its pixels carry (ties:
    the smallest label). ``pred``, ``true``: ``(n,)`` non-negative labels."""
    conf, p_ids, t_ids, _ = _table(pred, true)
    return {int(p): int(t_ids[j]) for p, j in zip(p_ids, conf.argmax(1), strict=True)}


def adjusted_rand_from_table(table: np.ndarray) -> float:
    """Adjusted Rand index of the labelling whose contingency table (counts, either orientation)
    is ``table``; equals ``sklearn.metrics.adjusted_rand_score`` (exact integer pair counts)."""
    c = np.asarray(table, dtype=np.int64)
    n = int(c.sum())
    sum_squares = int((c**2).sum())
    rows, cols = c.sum(1), c.sum(0)
    fp = int((c @ cols).sum()) - sum_squares
    fn = int((c.T @ rows).sum()) - sum_squares
    tp = sum_squares - n
    tn = n * n - fp - fn - sum_squares
    if fn == 0 and fp == 0:
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


def _entropy_of_counts(counts: np.ndarray) -> float:
    pi = counts[counts > 0].astype(np.float64)
    if pi.size <= 1:
        return 0.0
    total = np.sum(pi)
    return float(-np.sum((pi / total) * (np.log(pi) - log(total))))


def nmi_from_table(table: np.ndarray) -> float:
    """Normalised mutual information (arithmetic mean of the entropies) of the labelling whose
    contingency table is ``table`` (rows: true labels); equals
    ``sklearn.metrics.normalized_mutual_info_score``. Empty rows and columns are ignored."""
    c = np.asarray(table, dtype=np.int64)
    c = c[c.sum(1) > 0][:, c.sum(0) > 0]
    if c.shape[0] == c.shape[1] <= 1:
        return 1.0
    if c.shape[0] == 1 or c.shape[1] == 1:
        return 0.0
    nzx, nzy = np.nonzero(c)
    nz = c[nzx, nzy].astype(np.float64)
    total = float(c.sum())
    pi, pj = c.sum(1), c.sum(0)
    p_nm = nz / total
    log_outer = -np.log(pi.take(nzx) * pj.take(nzy)) + log(pi.sum()) + log(pj.sum())
    mi = p_nm * (np.log(nz) - log(total)) + p_nm * log_outer
    mi = np.where(np.abs(mi) < np.finfo(mi.dtype).eps, 0.0, mi)
    mi = float(np.clip(mi.sum(), 0.0, None))
    if mi == 0:
        return 0.0
    return float(mi / np.mean([_entropy_of_counts(pi), _entropy_of_counts(pj)]))


def _auroc(ranks: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of scores with average ``ranks`` for labels ``positive`` (the
    Mann-Whitney statistic; ties count one half, as the trapezoidal ROC area does)."""
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _calibration(out: dict, suffix: str, correct: np.ndarray, entropy_ranks, confidence) -> None:
    """Fill ``entropy_auroc<suffix>`` and ``ece<suffix>`` given per-pixel correctness ``(n,)``;
    ``entropy_ranks``: ``(finite mask, average ranks of the finite entropies)`` or ``None``;
    ``confidence``: the valid pixels' confidences ``(n,)`` or ``None``."""
    if entropy_ranks is not None:
        ok, ranks = entropy_ranks
        wrong = ~correct[ok]
        if 0 < wrong.sum() < ok.sum():
            out[f"entropy_auroc{suffix}"] = _auroc(ranks, wrong)
    if confidence is not None:
        ok = np.isfinite(confidence)
        out[f"ece{suffix}"] = calibration_error(np.clip(confidence[ok], 0.0, 1.0), correct[ok])


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
    conf, p_ids, t_ids, p_inv = _table(p, t)
    t_inv = np.searchsorted(t_ids, t)
    k_true = len(t_ids)
    matched, iou = _hungarian(conf)
    correct = matched[p_inv] == t_inv  # each pixel's cluster matched to its own true label
    k_used = len(p_ids)
    k_hat = k_used if k_hat is None else int(k_hat)
    out = {
        "ari": adjusted_rand_from_table(conf),
        "nmi": nmi_from_table(conf.T),
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
    entropy_ranks = None
    if entropy is not None:  # one ranking of the entropies serves both matchings
        e = np.asarray(entropy, dtype=float)[valid]
        ok = np.isfinite(e)
        entropy_ranks = (ok, rankdata(e[ok]))
    c = None if confidence is None else np.asarray(confidence, dtype=float)[valid]
    _calibration(out, "", correct, entropy_ranks, c)
    correct_majority = conf.argmax(1)[p_inv] == t_inv
    out["majority_accuracy"] = float(correct_majority.mean())
    _calibration(out, "_majority", correct_majority, entropy_ranks, c)
    images = np.repeat(np.arange(pred.shape[0]), valid.reshape(pred.shape[0], -1).sum(1))  # (n,)
    per_table = np.bincount(
        (images * len(p_ids) + p_inv) * k_true + t_inv, minlength=pred.shape[0] * len(p_ids) * k_true
    ).reshape(pred.shape[0], len(p_ids), k_true)  # (I, K_pred, K_true) counts per image
    per = {k: np.full(pred.shape[0], np.nan) for k in ("ari", "nmi", "k_error")}
    for i, table in enumerate(per_table):
        if table.any():
            per["ari"][i] = adjusted_rand_from_table(table)
            per["nmi"][i] = nmi_from_table(table.T)
            per["k_error"][i] = abs(int((table.sum(1) > 0).sum()) - int((table.sum(0) > 0).sum()))
    out.update({f"{k}_image_mean": float(np.nanmean(v)) for k, v in per.items()})
    out["per_image"] = per
    return out
