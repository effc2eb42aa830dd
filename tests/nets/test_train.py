from __future__ import annotations

import pytest
import torch

from dpmodels.data import ImageSet
from dpmodels.nets import SmallCNN, TrainReport, evaluate_accuracy, load_checkpoint, train_classifier


def _fresh(seed: int = 0) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN(num_classes=4, widths=(8, 16))


def test_learns_a_separable_problem_quickly(grating_data):
    train, val = grating_data
    model = _fresh()
    chance = evaluate_accuracy(model, val)
    report = train_classifier(model, train, val, epochs=8, batch_size=16, patience=None, progress=False)
    assert report.best_val_accuracy >= 0.95 > chance
    assert evaluate_accuracy(model, val) == pytest.approx(report.best_val_accuracy)  # best weights restored
    assert not model.training
    assert report.epochs_run == 8 and len(report.val_accuracy) == 8 and len(report.train_loss) == 8
    assert report.train_loss[-1] < report.train_loss[0]
    assert TrainReport.from_dict(report.to_dict()) == report


def test_deterministic_by_seed(grating_data):
    train, val = grating_data
    states = []
    for seed in (3, 3, 4):
        model = _fresh()
        train_classifier(model, train, val, epochs=2, augment=True, seed=seed, progress=False)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


def test_does_not_touch_the_callers_rng(grating_data):
    train, _ = grating_data
    model = _fresh()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_classifier(model, train.subset(slice(0, 32)), epochs=1, progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_early_stopping_fires_and_keeps_the_best_epoch(grating_data):
    train, val = grating_data
    shuffled = ImageSet(
        val.images, targets=val.targets[torch.randperm(len(val))], name="noise"
    )  # unlearnable
    model = _fresh()
    report = train_classifier(model, train, shuffled, epochs=30, patience=2, lr=1e-2, progress=False)
    assert report.stopped_early
    assert report.epochs_run < 30
    assert report.epochs_run - 1 - report.best_epoch == 2
    assert report.best_val_accuracy == max(report.val_accuracy)
    assert evaluate_accuracy(model, shuffled) == pytest.approx(report.best_val_accuracy)


def test_checkpoint_path_saves_best_weights(grating_data, tmp_path):
    train, val = grating_data
    model = _fresh()
    report = train_classifier(model, train, val, epochs=1, progress=False, checkpoint_path=tmp_path / "m.pt")
    state, meta = load_checkpoint(tmp_path / "m.pt", model=_fresh(1))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert meta["report"]["best_epoch"] == report.best_epoch


def test_bad_inputs_are_explained(grating_data):
    train, _ = grating_data
    with pytest.raises(ValueError, match="no targets"):
        train_classifier(_fresh(), ImageSet(train.images), progress=False)
    with pytest.raises(ValueError, match="num_classes"):
        train_classifier(SmallCNN(num_classes=2, widths=(4,)), train, progress=False)
    with pytest.raises(ValueError, match="epochs"):
        train_classifier(_fresh(), train, epochs=0, progress=False)
    with pytest.raises(ValueError, match="ImageSet"):
        evaluate_accuracy(_fresh(), train.images)


@pytest.mark.gpu
def test_trains_on_cuda(grating_data):
    train, val = grating_data
    model = _fresh()
    report = train_classifier(model, train, val, epochs=6, batch_size=16, device="cuda", progress=False)
    assert next(model.parameters()).is_cuda
    assert report.best_val_accuracy >= 0.9
    assert evaluate_accuracy(model, val, device="cuda") == pytest.approx(report.best_val_accuracy)
