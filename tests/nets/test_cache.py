from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import torch

from dpmodels.nets import CacheWarning, cache_key, default_cache_dir, train_or_load

NET = {"name": "small_cnn", "num_classes": 4, "widths": [8, 16]}
SPEC = {"generator": "gratings", "num_per_class": 40, "size": 16, "seeds": [0, 1]}
TRAIN = {"epochs": 3, "batch_size": 16}


class DataCounter:
    """``make_data`` that counts how often training data had to be built."""

    def __init__(self, data):
        self.data, self.calls = data, 0

    def __call__(self):
        self.calls += 1
        return self.data


def test_second_call_loads_instead_of_training(grating_data, tmp_path, caplog):
    make = DataCounter(grating_data)
    model, report = train_or_load(NET, SPEC, make, TRAIN, cache_dir=tmp_path, progress=False)
    assert not report.loaded_from_cache and make.calls == 1 and report.epochs_run == 3
    entries = list(tmp_path.iterdir())
    assert [p.name for p in entries] == [f"small_cnn-{report.cache_key}.pt"]
    with caplog.at_level(logging.INFO, logger="dpmodels.nets.cache"):
        t0 = time.perf_counter()
        again, report2 = train_or_load(NET, SPEC, make, TRAIN, cache_dir=tmp_path, progress=False)
        elapsed = time.perf_counter() - t0
    assert report2.loaded_from_cache and make.calls == 1 and elapsed < 3.0
    assert "loaded small_cnn from cache" in caplog.text
    assert report2.val_accuracy == report.val_accuracy and report2.cache_key == report.cache_key
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True)
    )
    assert not again.training


def test_training_is_reproducible_from_the_seed(grating_data, tmp_path):
    a, _ = train_or_load(
        NET, SPEC, lambda: grating_data, TRAIN, seed=5, cache_dir=tmp_path / "a", progress=False
    )
    b, _ = train_or_load(
        NET, SPEC, lambda: grating_data, TRAIN, seed=5, cache_dir=tmp_path / "b", progress=False
    )
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_key_follows_the_settings():
    base, keyed = cache_key(NET, SPEC, TRAIN, seed=0)
    assert keyed["train"]["epochs"] == 3 and "version" in keyed
    assert cache_key(NET, SPEC, {**TRAIN, "augment": False}, seed=0)[0] == base  # a spelled-out default
    changed = [
        cache_key({**NET, "widths": [8, 32]}, SPEC, TRAIN, 0),
        cache_key(NET, {**SPEC, "size": 24}, TRAIN, 0),
        cache_key(NET, SPEC, {**TRAIN, "epochs": 4}, 0),
        cache_key(NET, SPEC, {**TRAIN, "lr": 1e-3}, 0),
        cache_key(NET, SPEC, TRAIN, 1),
    ]
    assert len({base, *(k for k, _ in changed)}) == 6
    with pytest.raises(ValueError, match="unknown train_kwargs"):
        cache_key(NET, SPEC, {"epoch": 3})
    with pytest.raises(ValueError, match="JSON"):
        cache_key(NET, {"data": torch.zeros(2)})


def test_corrupt_entry_is_reported_and_retrained(grating_data, tmp_path):
    make = DataCounter(grating_data)
    _, report = train_or_load(NET, SPEC, make, TRAIN, cache_dir=tmp_path, progress=False)
    entry = tmp_path / f"small_cnn-{report.cache_key}.pt"
    entry.write_bytes(entry.read_bytes()[:1000])
    with pytest.warns(CacheWarning, match="truncated or corrupt"):
        _, report2 = train_or_load(NET, SPEC, make, TRAIN, cache_dir=tmp_path, progress=False)
    assert not report2.loaded_from_cache and make.calls == 2
    _, report3 = train_or_load(NET, SPEC, make, TRAIN, cache_dir=tmp_path, progress=False)
    assert report3.loaded_from_cache and make.calls == 2


def test_default_cache_dir_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DPMODELS_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("DPMODELS_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "dpmodels"


def test_bad_arguments(grating_data, tmp_path):
    with pytest.raises(ValueError, match="'name'"):
        train_or_load({"widths": [4]}, SPEC, lambda: grating_data, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="not train_kwargs"):
        train_or_load(NET, SPEC, lambda: grating_data, {"seed": 1}, cache_dir=tmp_path)
