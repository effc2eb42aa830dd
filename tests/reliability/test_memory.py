"""Fits that cannot fit in memory are refused before they allocate (DPGMM(truncation=5000) on 600
points was OOM-killed at ~24 GB), with the estimate, what is available and the knob to turn."""

import sys
import time

import numpy as np
import pytest
import torch

import dpmodels.estimator as estimator
from dpmodels import DPGMM
from dpmodels.activations import LayerActivations, LayerGeometry
from dpmodels.analysis.fitting import fit_layers
from dpmodels.infer.memory import (
    InsufficientMemoryError,
    available_memory,
    estimate_fit_bytes,
    estimate_maps_bytes,
)

GB = 2**30


@pytest.fixture
def engine_must_not_run(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the engine started: the fit was not refused before allocating")

    monkeypatch.setattr(estimator, "fit_natural", refuse)


def test_a_huge_truncation_is_refused_at_once_with_the_estimate_and_the_knob(
    monkeypatch, engine_must_not_run
):
    monkeypatch.setenv("DPMODELS_MEMORY_LIMIT", "8G")  # a machine with 8 GB free
    X = np.random.default_rng(0).normal(size=(600, 2))
    start = time.perf_counter()
    with pytest.raises(
        InsufficientMemoryError, match=r"truncation=5000.*GB.*8\.0 GB.*Lower truncation"
    ) as err:
        DPGMM(truncation=5000).fit(X)
    assert time.perf_counter() - start < 5.0
    assert isinstance(err.value, ValueError) and isinstance(err.value, MemoryError)
    assert "covariance='diag'" in str(err.value) and "pca_dim" in str(err.value)


def test_the_estimate_grows_as_the_square_of_the_truncation():
    small, big = estimate_fit_bytes(1, 600, 2, 1000), estimate_fit_bytes(1, 600, 2, 5000)
    assert 0.2 * GB < small < 1 * GB  # measured CPU peak at K = 1000: about 0.4 GB
    assert big > 8 * GB and big / small > 15
    assert estimate_fit_bytes(1, 600, 2, 5000, merge=False) < GB  # the merge moves are the K^2 part
    assert estimate_maps_bytes(10_000, 16, 30, "full", 64) < GB


def test_ordinary_fits_pass_the_check():
    X = np.random.default_rng(0).normal(size=(600, 4))
    assert DPGMM(truncation=30).fit(X).n_active_ >= 1
    assert estimate_fit_bytes(1, 600, 4, 30) < 0.1 * available_memory()


def test_available_memory_without_psutil(monkeypatch):
    with_psutil = available_memory()
    monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil now raises ImportError
    without = available_memory()
    assert without is not None and without > 0
    assert abs(without - with_psutil) < 0.5 * with_psutil  # /proc/meminfo's MemAvailable


def test_the_limit_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("DPMODELS_MEMORY_LIMIT", "0")
    X = np.random.default_rng(0).normal(size=(200, 2))
    assert DPGMM(truncation=5).fit(X).n_active_ >= 1


def test_fit_layers_refuses_before_the_first_fit(monkeypatch, engine_must_not_run):
    monkeypatch.setenv("DPMODELS_MEMORY_LIMIT", "2G")
    N = 4 * 16 * 16
    i, y, x = np.unravel_index(np.arange(N), (4, 16, 16))
    geom = LayerGeometry((16, 16), (64, 64), (4.0, 4.0), (1.5, 1.5), (6, 6))
    index = torch.from_numpy(np.stack([i, y, x], 1)).long()
    a = LayerActivations("a", torch.randn(N, 4), index, geom, 4)
    with pytest.raises(InsufficientMemoryError, match="truncation=3000"):
        fit_layers({"a": a}, fit_points=500, truncation=3000)
    with pytest.raises(InsufficientMemoryError, match="maps of layer 'a'"):
        fit_layers({"a": a}, fit_points=500, truncation=400, maps_draws=4096)
