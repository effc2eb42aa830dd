"""Per-layer shift table: held-out images, one row per layer, and clear errors for mismatched layers."""

import numpy as np
import pytest
import torch

from dpmodels import DPGMM
from dpmodels.activations.types import FeatureTransform, LayerActivations, LayerGeometry
from dpmodels.transfer import fit_layers, heldout_split, layer_shift_table

pytestmark = pytest.mark.usefixtures("single_thread")


def _acts(points: np.ndarray, name: str, images: int, transform=None) -> LayerActivations:
    """Points laid out as ``images`` maps of equal size (row-major positions)."""
    n = points.shape[0]
    per = n // images
    side = int(np.ceil(np.sqrt(per)))
    pos = torch.arange(n) % per
    index = torch.stack([torch.arange(n) // per, pos // side, pos % side], 1)  # (N, 3)
    geometry = LayerGeometry((side, side), (2 * side, 2 * side), (2.0, 2.0), (0.5, 0.5), (3, 3))
    return LayerActivations(
        name, torch.as_tensor(points, dtype=torch.float32), index, geometry, images, transform
    )


def _layers(mix_a, mix_b, n: int, shift: float):
    src = {"early": _acts(mix_a.sample(n), "early", 40), "late": _acts(mix_b.sample(n), "late", 40)}
    tgt = {
        "early": _acts(mix_a.sample(n // 2), "early", 20),
        "late": _acts(mix_b.sample(n // 2, shift=shift), "late", 20),
    }
    return src, tgt


def test_heldout_split_holds_out_whole_images(mixture):
    acts = _acts(mixture(D=2).sample(400), "x", 20)
    fit_rows, held_rows = heldout_split(acts, 0.25, seed=3)
    assert len(fit_rows) + len(held_rows) == 400
    held_images = set(acts.index[held_rows, 0].tolist())
    assert len(held_images) == 5 and not held_images & set(acts.index[fit_rows, 0].tolist())
    again = heldout_split(acts, 0.25, seed=3)
    assert torch.equal(again[1], held_rows)
    with pytest.raises(ValueError, match="split is by image"):
        heldout_split(_acts(mixture(D=2).sample(40), "x", 1), 0.2)


def test_table_has_one_row_per_layer_and_ranks_the_shifted_layer(mixture):
    src, tgt = _layers(mixture(D=3, seed=0), mixture(D=5, seed=1), 2000, shift=2.0)
    table = layer_shift_table(src, tgt, heldout_fraction=0.25, seed=0, truncation=10)
    assert list(table.layer) == ["early", "late"]
    assert list(table.D) == [3, 5] and list(table.channels) == [3, 5]
    assert table.n_fit.tolist() == [1500, 1500] and table.n_heldout.tolist() == [500, 500]
    for col in ("predictive_drop", "occupancy_jsd", "novelty_share", "novelty_excess", "n_active"):
        assert col in table
    early, late = table.set_index("layer").loc["early"], table.set_index("layer").loc["late"]
    assert abs(early.predictive_drop) < 0.05 and early.novelty_excess < 0.02
    assert late.predictive_drop > 0.3 and late.novelty_excess > 0.05


def test_given_fits_must_come_from_the_same_split(mixture):
    src, tgt = _layers(mixture(D=2, seed=2), mixture(D=2, seed=3), 800, shift=0.0)
    fits = fit_layers(src, heldout_fraction=0.2, seed=1, truncation=8)
    table = layer_shift_table(src, tgt, fits, heldout_fraction=0.2, seed=1)
    assert len(table) == 2
    wrong = {k: DPGMM(truncation=8).fit(a.tensor()) for k, a in src.items()}  # saw held-out points
    with pytest.raises(ValueError, match="held-out positions are truly unseen"):
        layer_shift_table(src, tgt, wrong, heldout_fraction=0.2, seed=1)
    with pytest.raises(ValueError, match="no fit for layer"):
        layer_shift_table(src, tgt, {"early": fits["early"]}, heldout_fraction=0.2, seed=1)


def test_mismatched_layers_are_refused(mixture):
    mix = mixture(D=3, seed=4)
    src = {"a": _acts(mix.sample(400), "a", 20)}
    with pytest.raises(ValueError, match="only in source"):
        layer_shift_table(src, {"b": _acts(mix.sample(200), "b", 10)})
    with pytest.raises(ValueError, match="3 channels.*2 channels"):
        layer_shift_table(src, {"a": _acts(mix.sample(200)[:, :2], "a", 10)})
    with pytest.raises(ValueError, match="source is layer 'a'.*target is layer 'z'"):
        layer_shift_table(src, {"a": _acts(mix.sample(200), "z", 10)})
    t1 = FeatureTransform(3, mean=torch.zeros(3), scale=torch.ones(3))
    t2 = FeatureTransform(3, mean=torch.ones(3), scale=torch.ones(3))
    with pytest.raises(ValueError, match="standardised/projected differently"):
        layer_shift_table(
            {"a": _acts(mix.sample(400), "a", 20, t1)}, {"a": _acts(mix.sample(200), "a", 10, t2)}
        )
