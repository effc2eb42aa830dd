"""Shift scores: no shift scores ~0, a planted novel cluster is found, a location shift raises the
predictive drop monotonically, and bad input is refused with a clear message."""

import numpy as np
import pytest
import torch

from dpmodels import DPGMM
from dpmodels._validation import NotFittedError
from dpmodels.activations.types import LayerActivations, LayerGeometry
from dpmodels.transfer import joint_usage, js_divergence, shift_scores

pytestmark = pytest.mark.usefixtures("single_thread")


def _fit(mix, seed: int, n: int = 2000) -> DPGMM:
    return DPGMM(truncation=12, seed=seed).fit(mix.sample(n))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_identical_sets_score_no_shift(mixture, seed):
    mix = mixture(D=4, seed=seed)
    fit = _fit(mix, seed)
    q = 0.02
    s = shift_scores(fit, mix.sample(1500), mix.sample(1500), novelty_quantile=q)
    assert abs(s["predictive_drop"]) < 0.04  # nats/dim; |drop| <= 0.024 over 12 seeds, 4 sd shift: ~1.8
    assert s["occupancy_jsd"] < 0.01
    assert abs(s["novelty_share"] - q) < 0.025  # over 12 seeds: 0.009 to 0.042
    assert s["novelty_excess"] == pytest.approx(s["novelty_share"] - q)
    assert s["exclusive_clusters"] == {"source": [], "target": []}
    assert s["source_occupancy"].sum() == pytest.approx(1.0, abs=1e-6)
    assert (s["n_heldout"], s["n_target"], s["D"]) == (1500, 1500, 4)


@pytest.mark.parametrize("seed", [0, 3])
def test_planted_new_cluster_is_found(mixture, seed):
    mix = mixture(D=4, seed=seed)
    fit = _fit(mix, seed)
    planted = 0.1
    target = mix.sample(1500, new=planted)
    s = shift_scores(fit, mix.sample(1500), target, novelty_quantile=0.01)
    # every planted position is novel; the rest are as novel as held-out source (~1%)
    assert abs(s["novelty_share"] - (planted + 0.01 * (1 - planted))) < 0.02
    assert s["predictive_drop"] > 0.2
    # the source fit has no cluster for it, a joint fit does: exclusive to the target
    joint = joint_usage(mix.sample(1500), target, truncation=12, seed=seed)
    assert len(joint.target_only) == 1 and joint.source_only == []
    row = joint.usage.set_index("cluster").loc[joint.target_only[0]]
    assert abs(row.target_share - planted) < 0.02 and row.source_share < 0.005
    assert row.kind == "target-only"
    assert joint.occupancy_jsd > 0.03
    assert joint.n_source == joint.n_target == 1500


def test_cluster_missing_from_target_is_exclusive_to_source(mixture):
    mix = mixture(D=3, seed=4)
    fit = _fit(mix, 4)
    s = shift_scores(fit, mix.sample(1200), mix.sample(1200, drop=1), novelty_quantile=0.02)
    assert len(s["exclusive_clusters"]["source"]) == 1 and s["exclusive_clusters"]["target"] == []
    assert s["occupancy_jsd"] > 0.1
    assert s["novelty_share"] < 0.04  # nothing new in the target, only something missing


@pytest.mark.parametrize("seed", [0, 1])
def test_location_shift_increases_predictive_drop_monotonically(mixture, seed):
    mix = mixture(D=4, seed=seed)
    fit = _fit(mix, seed)
    held = mix.sample(1500)
    drops = [
        shift_scores(fit, held, mix.sample(1500, shift=d))["predictive_drop"] for d in (0.0, 0.5, 1, 2, 4)
    ]
    assert np.all(np.diff(drops) > 0), drops
    assert drops[-1] > 1.0


def test_posterior_and_estimator_give_the_same_scores(mixture):
    mix = mixture(D=2, seed=5)
    fit = _fit(mix, 5, n=800)
    held, tgt = mix.sample(300), mix.sample(300, shift=1.0)
    a = shift_scores(fit, held, tgt)
    b = shift_scores(fit.posterior_, torch.as_tensor(held), torch.as_tensor(tgt))
    assert a["predictive_drop"] == pytest.approx(b["predictive_drop"], abs=1e-5)
    assert a["occupancy_jsd"] == pytest.approx(b["occupancy_jsd"], abs=1e-6)


def test_js_divergence_bounds():
    assert js_divergence([0.5, 0.5], [0.5, 0.5]) == pytest.approx(0.0, abs=1e-12)
    assert js_divergence([1.0, 0.0], [0.0, 1.0]) == pytest.approx(1.0)
    assert 0 < js_divergence([0.7, 0.3], [0.3, 0.7]) < 1


def _acts(points: np.ndarray, name: str) -> LayerActivations:
    n = points.shape[0]
    geometry = LayerGeometry((1, n), (1, n), (1.0, 1.0), (0.0, 0.0), (1, 1))
    index = torch.stack(
        [torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long), torch.arange(n)], 1
    )
    return LayerActivations(name, torch.as_tensor(points, dtype=torch.float32), index, geometry, 1)


def test_bad_input_is_refused(mixture):
    mix = mixture(D=3, seed=6)
    fit = _fit(mix, 6, n=600)
    held = mix.sample(200)
    with pytest.raises(ValueError, match="has 2 features but the source"):
        shift_scores(fit, held, mix.sample(200)[:, :2])
    with pytest.raises(ValueError, match="at least 50 are needed"):
        shift_scores(fit, held, mix.sample(20))
    with pytest.raises(ValueError, match=r"at least 100 are needed.*quantile"):
        shift_scores(fit, held[:80], mix.sample(200), novelty_quantile=0.01)
    bad = mix.sample(200)
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        shift_scores(fit, held, bad)
    with pytest.raises(ValueError, match=r"layer 'conv1'.*layer 'conv2'"):
        shift_scores(fit, _acts(held, "conv1"), _acts(mix.sample(200), "conv2"))
    with pytest.raises(NotFittedError):
        shift_scores(DPGMM(), held, mix.sample(200))
    with pytest.raises(ValueError, match="novelty_quantile"):
        shift_scores(fit, held, mix.sample(200), novelty_quantile=0.7)
    with pytest.raises(ValueError, match="has 2 features"):
        joint_usage(held, mix.sample(200)[:, :2])


def test_layer_activations_are_accepted(mixture):
    mix = mixture(D=3, seed=7)
    fit = _fit(mix, 7, n=600)
    held, tgt = mix.sample(200), mix.sample(200)
    a = shift_scores(fit, _acts(held, "conv1"), _acts(tgt, "conv1"))
    b = shift_scores(fit, held, tgt)
    assert a["predictive_drop"] == pytest.approx(b["predictive_drop"], abs=1e-6)
