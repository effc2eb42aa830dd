"""Many-to-one (majority) matching for the calibration metrics, beside the one-to-one ones."""

from __future__ import annotations

import numpy as np
import pytest

from dpmodels.evaluation.metrics import evaluate_labels, majority_match


def _split_scene(seed: int = 0):
    """Two true regions per image; the method splits region 1 into two pure clusters (1, 2) and
    mislabels a random 10% of region 0 as cluster 1, where its entropy is high."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((4, 16, 16), dtype=np.int64)
    truth[:, :, 8:] = 1
    pred = truth.copy()
    pred[:, 8:, 8:] = 2  # pure split of region 1
    wrong = (truth == 0) & (rng.random(truth.shape) < 0.1)
    pred[wrong] = 1
    entropy = np.where(wrong, 0.6, 0.05) + 0.02 * rng.random(truth.shape)
    confidence = np.where(wrong, 0.55, 0.97)
    return pred, truth, entropy, confidence, wrong


def test_majority_match_maps_each_cluster_to_its_majority_label():
    pred = np.array([0, 0, 1, 1, 1, 2, 2, 5])
    true = np.array([3, 3, 3, 4, 4, 4, 4, 3])
    assert majority_match(pred, true) == {0: 3, 1: 4, 2: 4, 5: 3}


def test_pure_split_is_wrong_one_to_one_but_right_many_to_one():
    pred, truth, entropy, confidence, wrong = _split_scene()
    out = evaluate_labels(pred, truth, entropy=entropy, confidence=confidence)
    # one-to-one: the quarter in cluster 2 is unmatched, so counted wrong though pure
    assert out["matched_accuracy"] < 0.8
    assert out["majority_accuracy"] == pytest.approx(1.0 - wrong.mean())
    # the entropy flags exactly the truly wrong pixels: perfect under majority matching only
    assert out["entropy_auroc_majority"] == pytest.approx(1.0)
    assert out["entropy_auroc"] < 0.9
    assert out["ece_majority"] < out["ece"]
    assert out["ece_majority"] < 0.06


def test_both_matchings_agree_when_clusters_are_one_to_one():
    pred, truth, entropy, confidence, _ = _split_scene(1)
    pred = np.where(pred == 2, 1, pred)  # undo the split
    out = evaluate_labels(pred, truth, entropy=entropy, confidence=confidence)
    assert out["entropy_auroc"] == pytest.approx(out["entropy_auroc_majority"])
    assert out["ece"] == pytest.approx(out["ece_majority"])


def test_majority_metrics_are_nan_without_uncertainty():
    pred, truth, *_ = _split_scene()
    out = evaluate_labels(pred, truth)
    assert np.isnan(out["entropy_auroc_majority"]) and np.isnan(out["ece_majority"])
    with pytest.raises(ValueError, match="entropy must have"):
        evaluate_labels(pred, truth, entropy=np.zeros(3))
