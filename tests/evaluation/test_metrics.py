"""Metrics against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpmodels.activations import LayerActivations, LayerGeometry
from dpmodels.evaluation import (
    calibration_error,
    evaluate_labels,
    evaluate_point_labels,
    evaluation_table,
    hungarian_match,
)


def stripes(I: int = 3, H: int = 8, W: int = 8, k: int = 3) -> np.ndarray:
    """``(I, H, W)`` truth: ``k`` vertical stripes, shifted per image."""
    x = np.arange(W)
    return np.stack([np.broadcast_to(((x + i) * k // W) % k, (H, W)) for i in range(I)]).astype(np.int64)


def test_perfect_and_permuted_labels_score_one():
    truth = stripes()
    for pred in (truth, (truth + 1) % 3 + 5):  # identical, then renamed clusters
        out = evaluate_labels(pred, truth)
        assert out["ari"] == pytest.approx(1.0) and out["nmi"] == pytest.approx(1.0)
        assert out["miou"] == pytest.approx(1.0) and out["matched_accuracy"] == 1.0
        assert out["k_error"] == 0 and out["k_error_image_mean"] == 0
        assert np.allclose(out["per_image"]["ari"], 1.0)


def test_random_labels_score_near_zero():
    rng = np.random.default_rng(0)
    truth = stripes(I=4, H=64, W=64, k=4)
    out = evaluate_labels(rng.integers(0, 4, truth.shape), truth)
    assert abs(out["ari"]) < 0.01 and out["nmi"] < 0.01 and out["miou"] < 0.2


def test_hungarian_iou_by_hand_and_extra_clusters_count_as_errors():
    true = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    pred = np.array([5, 5, 5, 9, 7, 7, 7, 7])  # cluster 9 is left unmatched
    mapping, iou, ids = hungarian_match(pred, true)
    assert mapping == {5: 0, 7: 1} and ids.tolist() == [0, 1]
    assert iou.tolist() == pytest.approx([3 / 4, 4 / 4])
    out = evaluate_labels(pred[None], true[None])
    assert out["matched_accuracy"] == pytest.approx(7 / 8) and out["k_used"] == 3 and out["k_error"] == 1
    fewer = evaluate_labels(np.zeros((1, 8), dtype=np.int64), true[None])  # one cluster for two regions
    assert fewer["miou"] == pytest.approx(0.5 * 4 / 8) and fewer["k_error"] == 1


def test_ignored_pixels_and_k_hat():
    truth = stripes()
    truth[:, 0] = -1
    pred = truth.copy()
    pred[truth == -1] = 2  # wrong labels on unlabelled pixels do not count
    pred[:, :, -1] = -1  # missing labels are skipped and lower the coverage
    out = evaluate_labels(pred, truth, k_hat=5)
    assert out["ari"] == pytest.approx(1.0) and out["k_hat"] == 5 and out["k_error"] == 2
    assert out["coverage"] == pytest.approx(7 / 8)


def boundary_case(seed: int):
    """Two 1-D Gaussian classes; a Bayes-optimal probabilistic labelling, calibrated by construction."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, 20_000)
    x = rng.normal(np.where(truth == 1, 1.0, -1.0), 1.0)
    p1 = 1 / (1 + np.exp(-2 * x))  # exact posterior P(class 1 | x)
    labels = (p1 > 0.5).astype(np.int64)
    conf = np.maximum(p1, 1 - p1)
    ent = -(p1 * np.log(p1) + (1 - p1) * np.log(1 - p1))
    return labels[None], truth[None], ent[None], conf[None]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_entropy_auroc_and_calibration_on_a_calibrated_case(seed):
    labels, truth, ent, conf = boundary_case(seed)
    out = evaluate_labels(labels, truth, entropy=ent, confidence=conf)
    assert out["entropy_auroc"] >= 0.75  # misassigned points sit near the boundary
    assert out["ece"] < 0.02
    overconfident = evaluate_labels(labels, truth, entropy=ent, confidence=np.ones_like(conf))
    assert overconfident["ece"] == pytest.approx(1 - overconfident["matched_accuracy"])


def test_calibration_error_by_hand():
    conf = np.array([0.95, 0.95, 0.55, 0.55])
    correct = np.array([1, 1, 1, 0])
    assert calibration_error(conf, correct) == pytest.approx(0.5 * 0.05 + 0.5 * 0.05)
    with pytest.raises(ValueError, match="0, 1"):
        calibration_error(np.array([1.5]), np.array([1]))


def test_point_labels_at_input_and_position_resolution():
    g = LayerGeometry((4, 4), (8, 8), (2.0, 2.0), (0.5, 0.5), (4, 4))
    ii, yy, xx = torch.meshgrid(torch.arange(2), torch.arange(4), torch.arange(4), indexing="ij")
    index = torch.stack([ii.flatten(), yy.flatten(), xx.flatten()], 1)
    acts = LayerActivations("l", torch.zeros(32, 1), index, g, 2)
    masks = (torch.arange(8) >= 4).long().view(1, 1, 8).expand(2, 8, 8).clone()  # left/right halves
    labels = (xx.flatten() >= 2).long() + 3
    for res in ("input", "positions"):
        out = evaluate_point_labels(acts, labels, masks, resolution=res)
        assert out["ari"] == pytest.approx(1.0) and out["layer"] == "l" and out["resolution"] == res
    with pytest.raises(ValueError, match="masks have shape"):
        evaluate_point_labels(acts, labels, masks[:, :6])
    with pytest.raises(ValueError, match="resolution"):
        evaluate_point_labels(acts, labels, masks, resolution="pixels")


def test_bad_inputs_and_table():
    truth = stripes()
    with pytest.raises(ValueError, match="share one shape"):
        evaluate_labels(truth[:, :4], truth)
    with pytest.raises(ValueError, match="integer"):
        evaluate_labels(truth.astype(float), truth)
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluate_labels(-np.ones_like(truth), truth)
    with pytest.raises(ValueError, match="entropy"):
        evaluate_labels(truth, truth, entropy=np.zeros(3))
    rows = [
        evaluate_labels(truth, truth) | {"layer": "a", "method": "m1"},
        evaluate_labels(truth, truth) | {"layer": "a", "method": "m2"},
    ]
    table = evaluation_table(rows)
    assert table.shape[0] == 2 and "per_image" not in table.columns and table.loc[("a", "m1"), "ari"] == 1.0
    with pytest.raises(ValueError, match="'layer' and 'method'"):
        evaluation_table([{"ari": 1.0}])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_table_metrics_equal_scikit_learn(seed):
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, roc_auc_score

    rng = np.random.default_rng(seed)
    true = rng.integers(0, 4, (6, 20, 20))
    pred = np.where(rng.random(true.shape) < 0.6, true, rng.integers(0, 9, true.shape))
    true[:, :2] = -1
    pred[:, :, :1] = -1
    pred[1] = 3  # one cluster in an image
    true[2] = 1  # one true region in an image
    pred[4, :, :10], true[4, :, :10] = -1, -1
    entropy = np.round(rng.random(true.shape), 2)  # ties in the scores
    entropy[0, 5, 5] = np.nan
    out = evaluate_labels(pred, true, entropy=entropy, confidence=rng.random(true.shape))
    v = (pred >= 0) & (true >= 0)
    assert out["ari"] == adjusted_rand_score(true[v], pred[v])
    assert out["nmi"] == normalized_mutual_info_score(true[v], pred[v])
    for i in range(len(pred)):
        ti, pi = true[i][v[i]], pred[i][v[i]]
        assert out["per_image"]["ari"][i] == adjusted_rand_score(ti, pi)
        assert out["per_image"]["nmi"][i] == normalized_mutual_info_score(ti, pi)
    mapping, _, _ = hungarian_match(pred[v], true[v])
    wrong = np.array([mapping.get(int(c), -2) for c in pred[v]]) != true[v]
    e = entropy[v]
    ok = np.isfinite(e)
    assert out["entropy_auroc"] == pytest.approx(roc_auc_score(wrong[ok], e[ok]), abs=1e-12)
