"""Measured transfer: the linear probe reads a frozen layer, fine-tuning freezes exactly the
intended parameters of a copy, results are seeded, and the sweep reports transfer_drop."""

import copy

import pytest
import torch

from dpmodels.data.images import ImageSet
from dpmodels.transfer import (
    accuracy,
    few_shot_subset,
    few_shot_transfer,
    finetune,
    finetune_accuracy,
    frozen_parameter_names,
    linear_probe_accuracy,
    scratch_accuracy,
    transfer_sweep,
)

pytestmark = pytest.mark.usefixtures("single_thread")

BUDGET = dict(epochs=3, batch_size=16, lr=1e-2)


@pytest.fixture(scope="module")
def source_model(cnn, grating_set, single_thread):
    """A tiny CNN trained on 4 grating orientations (the source task)."""
    torch.manual_seed(0)
    return finetune(cnn(4), None, grating_set(256, seed=0), epochs=8, batch_size=16, lr=1e-2, seed=0)


def test_source_model_learns_its_task(source_model, grating_set):
    assert accuracy(source_model, grating_set(128, seed=9)) > 0.8


def test_linear_probe_beats_chance_on_a_separable_task(source_model, grating_set):
    train, test = grating_set(200, freq=0.6, seed=1), grating_set(100, freq=0.6, seed=2)
    acc = linear_probe_accuracy(source_model, "2", train, test)
    assert acc > 0.7  # chance is 0.25
    assert 0.0 <= linear_probe_accuracy(source_model, "0", train, test) <= 1.0


def test_frozen_parameter_names_follow_module_order(cnn):
    model = cnn(4)
    assert frozen_parameter_names(model, "0") == ["0.0.weight", "0.0.bias", "0.1.weight", "0.1.bias"]
    assert frozen_parameter_names(model, "0.1") == ["0.0.weight", "0.0.bias", "0.1.weight", "0.1.bias"]
    assert frozen_parameter_names(model, "0.0") == ["0.0.weight", "0.0.bias"]
    assert frozen_parameter_names(model, "1") == frozen_parameter_names(model, "0")  # a pooling layer
    assert (
        frozen_parameter_names(model, "2")[-1] == "2.1.bias" and len(frozen_parameter_names(model, "2")) == 8
    )
    assert frozen_parameter_names(model, None) == []


def test_finetune_freezes_exactly_the_intended_parameters(source_model, grating_set):
    before = copy.deepcopy(source_model.state_dict())
    target = grating_set(128, classes=3, freq=0.5, seed=3)
    net = finetune(source_model, "0", target, seed=1, **BUDGET)
    frozen = set(frozen_parameter_names(source_model, "0"))
    for name, param in net.named_parameters():
        assert param.requires_grad == (name not in frozen), name
    after = net.state_dict()
    for name in ["0.0.weight", "0.0.bias", "0.1.weight", "0.1.bias", "0.1.running_mean", "0.1.running_var"]:
        assert torch.equal(after[name], before[name]), f"{name} changed though frozen"
    assert not torch.allclose(after["2.0.weight"], before["2.0.weight"])  # re-initialised and trained
    assert after["5.weight"].shape == (3, 8)  # head sized to the 3 target classes
    for name, value in source_model.state_dict().items():  # the caller's model is untouched
        assert torch.equal(value, before[name]), name
    assert source_model[5].out_features == 4


def test_finetune_is_deterministic_by_seed(source_model, grating_set):
    train, test = grating_set(96, freq=0.5, seed=4), grating_set(64, freq=0.5, seed=5)
    a = finetune_accuracy(source_model, "0", train, test, seed=3, **BUDGET)
    b = finetune_accuracy(source_model, "0", train, test, seed=3, **BUDGET)
    assert a == b
    n1 = finetune(source_model, None, train, seed=3, **BUDGET)
    n2 = finetune(source_model, None, train, seed=3, **BUDGET)
    for (k, v), w in zip(n1.state_dict().items(), n2.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    assert scratch_accuracy(source_model, train, test, seed=3, **BUDGET) == accuracy(n1, test)


def test_transfer_sweep_reports_drop_against_scratch(source_model, grating_set):
    train, test = grating_set(160, freq=0.7, seed=6), grating_set(80, freq=0.7, seed=7)
    table = transfer_sweep(source_model, ["0", "2"], train, test, seed=0, **BUDGET)
    assert list(table.layer) == ["0", "2"]
    assert (table.transfer_drop == table.scratch_accuracy - table.frozen_accuracy).all()
    assert table.scratch_accuracy.nunique() == 1 and (table.chance == 0.25).all()
    # orientation features transfer to the same task at another frequency: frozen beats chance
    assert (table.frozen_accuracy > 0.5).all() and (table.probe_accuracy > 0.5).all()


def test_bad_input_is_refused(source_model, grating_set):
    train = grating_set(32, seed=8)
    unlabelled = ImageSet(train.images)
    with pytest.raises(ValueError, match="no targets"):
        finetune(source_model, "0", unlabelled)
    with pytest.raises(ValueError, match="has no layer"):
        finetune(source_model, "conv9", train)
    with pytest.raises(ValueError, match="no parameter to train"):
        finetune(source_model, "5", train)
    with pytest.raises(ValueError, match="single class"):
        linear_probe_accuracy(source_model, "2", train.subset(train.targets == 0), train)


def test_few_shot_subset_draws_the_same_number_per_class_by_seed(grating_set):
    pool = grating_set(64, seed=10)
    sub = few_shot_subset(pool, 3, seed=0)
    assert torch.bincount(sub.targets).tolist() == [3, 3, 3, 3]
    assert sub.names == few_shot_subset(pool, 3, seed=0).names
    assert sub.names != few_shot_subset(pool, 3, seed=1).names
    with pytest.raises(ValueError, match="smallest class"):
        few_shot_subset(pool, 1000)


def test_few_shot_transfer_measures_drop_against_a_matched_reference(source_model, grating_set, cnn):
    pool, test = grating_set(64, freq=0.6, seed=11), grating_set(64, freq=0.6, seed=12)
    kw = dict(shots=4, seeds=(0, 1), **BUDGET)
    same = few_shot_transfer(source_model, ["0", "2"], pool, test, reference=source_model, **kw)
    assert list(same.layer) == ["0", "2"] and (same.n_seeds == 2).all() and (same.shots == 4).all()
    # a reference identical to the source, same draws and seeds: identical retraining, zero drop
    assert (same.transfer_drop == 0).all() and (same.frozen_accuracy == same.reference_accuracy).all()
    torch.manual_seed(5)
    naive = few_shot_transfer(cnn(4), ["0", "2"], pool, test, reference=source_model, probe=False, **kw)
    assert naive.probe_accuracy.isna().all()
    assert (naive.transfer_drop == naive.reference_accuracy - naive.frozen_accuracy).all()
    # untrained "source" features frozen up to the last block are worse than the trained reference's
    assert float(naive.transfer_drop.iloc[-1]) > 0.0
    assert (naive.filter(regex="_sd$").fillna(0).to_numpy() >= 0).all()
