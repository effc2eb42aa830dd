"""Linear CKA: its defining invariances, near-zero for independent features, and per-layer CKA
between real torch networks."""

import numpy as np
import pytest
import torch

from dpmodels.transfer import layer_cka, linear_cka

pytestmark = pytest.mark.usefixtures("single_thread")


def _rng(seed=0):
    return np.random.default_rng(seed)


def test_cka_of_a_representation_with_itself_is_one():
    X = _rng().normal(size=(200, 10))
    assert linear_cka(X, X) == pytest.approx(1.0, abs=1e-12)
    wide = _rng(1).normal(size=(30, 100))  # p > n takes the Gram-matrix path
    assert linear_cka(wide, wide) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cka_is_invariant_to_orthogonal_transforms_scaling_and_offsets(seed):
    rng = _rng(seed)
    X = rng.normal(size=(150, 8)) @ rng.normal(size=(8, 8))
    Y = X[:, :5] + 0.5 * rng.normal(size=(150, 5))
    Q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    base = linear_cka(X, Y)
    assert 0.2 < base < 0.99
    assert linear_cka(X @ Q, Y) == pytest.approx(base, abs=1e-10)
    assert linear_cka(3.7 * X + 5.0, Y) == pytest.approx(base, abs=1e-10)
    assert linear_cka(Y, X) == pytest.approx(base, abs=1e-10)
    # not invariant to an anisotropic rescaling of features
    assert abs(linear_cka(X * np.linspace(0.1, 10, 8), Y) - base) > 1e-3
    # both computation paths agree
    Xt = torch.as_tensor(X)
    assert linear_cka(Xt, torch.as_tensor(Y)) == pytest.approx(base, abs=1e-10)


def test_cka_of_independent_random_features_is_small():
    rng = _rng(3)
    values = [linear_cka(rng.normal(size=(2000, 6)), rng.normal(size=(2000, 6))) for _ in range(5)]
    # E[CKA] ~ p/n for independent features; 20x that is far below any real similarity
    assert max(values) < 0.02


def test_cka_bad_input():
    with pytest.raises(ValueError, match="same inputs"):
        linear_cka(np.zeros((10, 2)) + _rng().normal(size=(10, 2)), _rng().normal(size=(11, 2)))
    with pytest.raises(ValueError, match=r"\(n, p\)"):
        linear_cka(np.zeros(10), np.zeros(10))
    with pytest.warns(RuntimeWarning, match="constant"):
        assert np.isnan(linear_cka(np.ones((10, 3)), _rng().normal(size=(10, 3))))


def test_layer_cka_between_networks(cnn, grating_set):
    torch.manual_seed(0)
    a, b = cnn(), cnn()
    images = grating_set(64, size=12)
    same = layer_cka(a, a, images, ["0", "2"], features="positions", positions_per_image=8)
    assert same == {"0": pytest.approx(1.0, abs=1e-9), "2": pytest.approx(1.0, abs=1e-9)}
    other = layer_cka(a, b, images, ["0", "2", "5"])
    assert set(other) == {"0", "2", "5"}
    assert all(0.0 <= v < 1.0 for v in other.values())
    again = layer_cka(a, b, images, {"0": "0", "2": "2", "5": "5"})
    assert again == pytest.approx(other)
    assert a.training and b.training  # modes restored
    with pytest.raises(ValueError, match="has no layer"):
        layer_cka(a, b, images, ["nope"])
    with pytest.raises(ValueError, match="equal map"):
        layer_cka(a, b, images, {"0": "2"}, features="positions")
