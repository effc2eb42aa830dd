from __future__ import annotations

import pytest

from dpmodels.data.textures import TEXTURE_FAMILIES, texture_patches
from dpmodels.nets import SmallCNN, evaluate_accuracy, texture_cnn, texture_training_data


def test_training_data_split_is_disjoint_and_seeded():
    train, val = texture_training_data(num_per_class=10, size=16, seed=3)
    assert len(train) + len(val) == 10 * len(TEXTURE_FAMILIES["A"])
    assert not set(train.names) & set(val.names)
    again, _ = texture_training_data(num_per_class=10, size=16, seed=3)
    assert train.names == again.names


def test_texture_cnn_trains_then_loads(tmp_path):
    kwargs = {"family": "A", "num_per_class": 20, "widths": (8, 16), "epochs": 4, "batch_size": 16}
    kwargs["cache_dir"] = tmp_path
    model, report = texture_cnn(**kwargs, progress=False)
    assert isinstance(model, SmallCNN) and model.config["num_classes"] == len(TEXTURE_FAMILIES["A"])
    assert not report.loaded_from_cache and report.epochs_run <= 4
    test = texture_patches(num_per_class=20, family="A", seed=1)
    assert evaluate_accuracy(model, test) > 0.5  # chance is 1/7; 4 short epochs reach about 0.86
    again, report2 = texture_cnn(**kwargs, progress=False)
    assert report2.loaded_from_cache and report2.cache_key == report.cache_key
    with pytest.raises(ValueError, match="unknown texture family"):
        texture_cnn(family="Z", cache_dir=tmp_path)
