"""End to end with the project's own pieces: SmallCNN trained on texture family A, activations
extracted from A and from a noisier A, the per-layer shift table, CKA and a measured sweep on B."""

import pytest
import torch

from dpmodels.activations import extract
from dpmodels.data.textures import Shift, texture_patches
from dpmodels.nets import SmallCNN, train_classifier
from dpmodels.transfer import finetune, layer_cka, layer_shift_table, transfer_sweep

pytestmark = pytest.mark.usefixtures("single_thread")

LAYERS = ["block1.relu", "block2.relu"]


@pytest.fixture(scope="module")
def source_net(single_thread):
    torch.manual_seed(0)
    model = SmallCNN(in_channels=3, num_classes=7, widths=(8, 16))
    train_classifier(model, texture_patches(24, size=16, family="A", seed=0), epochs=3, progress=False)
    return model


def test_shift_table_ranks_noise_above_fresh_samples(source_net):
    kw = dict(positions_per_image=12, progress=False, seed=0)
    src = extract(
        source_net, texture_patches(24, size=16, family="A", seed=1), LAYERS, standardize=True, **kw
    )
    transforms = {name: acts.transform for name, acts in src.items()}
    fresh = extract(
        source_net, texture_patches(8, size=16, family="A", seed=2), LAYERS, transforms=transforms, **kw
    )
    noisy_set = texture_patches(8, size=16, family="A", shift=Shift(noise=0.25), seed=2)
    noisy = extract(source_net, noisy_set, LAYERS, transforms=transforms, **kw)
    fits_kw = dict(heldout_fraction=0.25, seed=0, truncation=10, covariance="diag")
    same = layer_shift_table(src, fresh, **fits_kw).set_index("layer")
    shifted = layer_shift_table(src, noisy, **fits_kw).set_index("layer")
    assert list(same.index) == LAYERS and list(same.channels) == [8, 16]
    assert (shifted.predictive_drop > same.predictive_drop + 0.1).all()
    assert (shifted.novelty_share > same.novelty_share).all()


def test_cka_and_measured_sweep_on_another_family(source_net):
    train = texture_patches(16, size=16, family="B", seed=3)
    test = texture_patches(8, size=16, family="B", seed=4)
    budget = dict(epochs=2, batch_size=16, lr=1e-2, seed=0)
    table = transfer_sweep(source_net, LAYERS, train, test, **budget)
    assert list(table.layer) == LAYERS and (table.chance == 1 / 8).all()
    assert ((table.frozen_accuracy >= 0) & (table.frozen_accuracy <= 1)).all()
    target_net = finetune(source_net, None, train, **budget)
    cka = layer_cka(source_net, target_net, test, LAYERS)
    assert all(0.0 <= v <= 1.0 for v in cka.values())
    assert layer_cka(source_net, source_net, test, LAYERS) == {k: pytest.approx(1.0) for k in LAYERS}
