"""Fitting from disk: memory-mapped .npy files read chunk by chunk, and batched fits."""

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from dpmodels import DPGMM, fit_batched
from dpmodels.data import PlantedMixture, PointSource
from dpmodels.infer import NaturalOptions, fit_natural
from dpmodels.models import ModelSpec, empirical_base_measure
from dpmodels.priors import WeightPrior


@pytest.mark.parametrize("cov", [pytest.param("full", marks=pytest.mark.slow), "diag"])  # full: ~10 s
def test_fit_from_memory_mapped_file_matches_in_memory_fit(tmp_path, cov):
    X, labels = PlantedMixture(4, 6, cov, seed=21).sample(6000)
    path = tmp_path / "layer.npy"
    np.save(path, X.astype(np.float32))
    on_disk = DPGMM(truncation=12, covariance=cov, chunk_size=700).fit(path)  # 9 chunks per pass
    in_memory = DPGMM(truncation=12, covariance=cov).fit(X.astype(np.float32))
    assert on_disk.n_active_ == 4
    assert adjusted_rand_score(labels, on_disk.predict(X)) > 0.99
    assert on_disk.elbo_ == pytest.approx(in_memory.elbo_, rel=1e-4)
    memmap = np.load(path, mmap_mode="r")
    np.testing.assert_array_equal(
        DPGMM(truncation=12, covariance=cov, chunk_size=700).fit(memmap).predict(X), on_disk.predict(X)
    )


def test_minibatches_from_disk(tmp_path):
    X, labels = PlantedMixture(3, 4, "full", seed=22).sample(8000)
    path = tmp_path / "layer.npy"
    np.save(path, X)
    model = DPGMM(truncation=10, batch_size=1000, chunk_size=1500).fit(path)
    assert model.n_active_ == 3
    assert adjusted_rand_score(labels, model.predict(X)) > 0.99


def test_chunked_moments_match_numpy():
    X = np.random.default_rng(0).normal(5.0, 3.0, size=(5003, 4)) @ np.diag([1, 2, 3, 4.0])
    mean, cov = PointSource(X).moments("full", chunk_size=333)
    np.testing.assert_allclose(mean[0].numpy(), X.mean(0), rtol=1e-10)
    np.testing.assert_allclose(cov[0].numpy(), np.cov(X.T), rtol=1e-8)


def test_warm_start_on_a_subsample_reaches_the_full_fit():
    mix = PlantedMixture(5, 4, "full", seed=23)
    X, labels = mix.sample(12_000)
    data = torch.tensor(X, dtype=torch.float32).unsqueeze(0)
    spec = ModelSpec(WeightPrior(), empirical_base_measure(data, "full"), 15)
    warm = fit_natural(data, spec, options=NaturalOptions(progress=False, warm_start_points=2000))
    cold = fit_natural(data, spec, options=NaturalOptions(progress=False, warm_start_points=None))
    assert warm.info["warm_start"]["points"] == 2000
    assert cold.info["warm_start"] is None
    assert float(warm.elbo[0]) == pytest.approx(float(cold.elbo[0]), rel=2e-4)
    assert warm.n_iter < cold.n_iter


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: p / "missing.npy", "no such file"),
        (
            lambda p: (
                np.save(p / "bad.npy", np.array([[1.0, np.nan], [0.0, 1.0], [2.0, 2.0]])),
                p / "bad.npy",
            )[1],
            "NaN or Inf",
        ),
        (lambda p: (np.save(p / "r3.npy", np.zeros((2, 3, 4))), p / "r3.npy")[1], r"shape \(N, D\)"),
        (lambda p: (p / "junk.npy").write_text("not an array") and p / "junk.npy", "not a readable .npy"),
    ],
)
def test_bad_files_are_clear_errors(tmp_path, make, match):
    with pytest.raises(ValueError, match=match):
        DPGMM(truncation=3).fit(make(tmp_path))


def test_fit_batched_returns_one_model_per_data_set():
    mixes = [PlantedMixture(k, 5, "full", seed=30 + k) for k in (2, 3, 5)]
    samples = [m.sample(1500) for m in mixes]
    models = fit_batched([X for X, _ in samples], truncation=12)
    assert [m.n_active_ for m in models] == [2, 3, 5]
    for model, (X, labels) in zip(models, samples, strict=True):
        assert adjusted_rand_score(labels, model.predict(X)) > 0.99
        alone = DPGMM(truncation=12).fit(X)
        assert model.elbo_ == pytest.approx(alone.elbo_, rel=1e-4)


def test_fit_batched_bad_input():
    with pytest.raises(ValueError, match="share one shape"):
        fit_batched([np.zeros((10, 2)), np.zeros((12, 2))])
    with pytest.raises(ValueError, match="empty list"):
        fit_batched([])
    with pytest.raises(ValueError, match=r"shape \(B, N, D\)"):
        fit_batched(np.zeros((10, 2)))
    with pytest.raises(ValueError, match="n_restarts=1"):
        fit_batched([np.zeros((10, 2))], n_restarts=2)


def test_fit_stream_spools_batches_and_matches_the_array_fit(tmp_path):
    X, labels = PlantedMixture(3, 4, "diag", seed=24).sample(5000)
    batches = (torch.tensor(X[i : i + 512]) for i in range(0, len(X), 512))  # a one-pass generator
    streamed = DPGMM(truncation=10, covariance="diag", chunk_size=900).fit_stream(batches, spool_dir=tmp_path)
    direct = DPGMM(truncation=10, covariance="diag").fit(X.astype(np.float32))
    assert streamed.n_active_ == 3
    assert streamed.elbo_ == pytest.approx(direct.elbo_, rel=1e-5)
    assert list(tmp_path.iterdir()) == []  # the spool file is gone


@pytest.mark.parametrize(
    "batches, match",
    [
        ([], "yielded no points"),
        ([np.zeros((5, 3)), np.zeros((5, 4))], "batch 1 has 4 features but the earlier batches had 3"),
        ([np.zeros(5)], r"batch 0 has shape \(5,\)"),
        ([np.array([[1.0, np.inf]])], "batch 0 contains NaN or Inf"),
        (np.zeros((5, 3)), "use fit"),
    ],
)
def test_bad_streams_are_clear_errors(batches, match):
    with pytest.raises(ValueError, match=match):
        DPGMM(truncation=3).fit_stream(batches)


def test_a_sliced_memmap_reads_its_own_rows(tmp_path):
    X = np.arange(40, dtype=np.float32).reshape(20, 2)
    np.save(tmp_path / "x.npy", X)
    view = np.load(tmp_path / "x.npy", mmap_mode="r")[10:15]
    np.testing.assert_array_equal(PointSource(view)[:, :].numpy()[0], X[10:15])


def _npy(path, n=20_000, d=4, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    np.save(path, x)
    return x


def test_a_truncated_npy_file_is_refused_with_its_sizes(tmp_path):
    path = tmp_path / "x.npy"
    _npy(path, 1000)
    with open(path, "r+b") as fh:
        fh.truncate(3000)  # an unfinished write
    with pytest.raises(
        ValueError, match=r"header says \(1000, 4\) float32, 16128 bytes, but it holds 3000: it is truncated"
    ):
        DPGMM(truncation=5).fit(path)


@pytest.mark.parametrize("change", ["truncate", "rewrite"])
def test_a_file_changed_between_reads_is_an_error_not_garbage(tmp_path, change):
    path = tmp_path / "x.npy"
    x = _npy(path)
    source = PointSource(path)
    assert torch.equal(source[:, :100][0], torch.from_numpy(x[:100]))
    if change == "truncate":
        with open(path, "r+b") as fh:
            fh.truncate(path.stat().st_size // 2)
    else:  # same size, other values: what a fit would read as garbage
        np.save(path, x[::-1].copy())
    word = "truncated" if change == "truncate" else "rewritten"
    for key in [(slice(None), slice(0, 100)), (slice(None), torch.tensor([5, 7]))]:  # chunks and minibatches
        with pytest.raises(ValueError, match=rf"changed while it was being read.*\({word}\)"):
            source[key]


def test_a_fit_whose_file_is_truncated_meanwhile_stops_with_one_clear_error(tmp_path):
    import threading
    import time

    path = tmp_path / "x.npy"
    rng = np.random.default_rng(0)
    np.save(path, np.concatenate([rng.normal(c, 1, (100_000, 8)) for c in (0, 6, 12)]).astype(np.float32))
    before = path.stat().st_size

    def cut():
        time.sleep(0.3)  # the fit below runs for seconds: it is reading the file by now
        with open(path, "r+b") as fh:
            fh.truncate(before // 2)

    thread = threading.Thread(target=cut)
    thread.start()
    try:
        with pytest.raises(ValueError, match=r"changed while it was being read.*\(truncated\)"):
            DPGMM(truncation=10, max_iter=10_000, tol=1e-12, seed=0).fit(path)
    finally:
        thread.join()
    assert path.stat().st_size == before // 2  # the cut happened during the fit


def test_rows_of_a_file_are_read_without_a_memory_map_and_a_cut_file_is_an_error(tmp_path):
    from dpmodels.data import PointSource

    path = tmp_path / "x.npy"
    x = np.random.default_rng(0).normal(size=(5000, 7)).astype(np.float32)
    np.save(path, x)
    source = PointSource(path)
    rows = np.random.default_rng(1).choice(5000, size=900, replace=True)  # unsorted, with repeats
    got = source[:, torch.as_tensor(rows)]
    assert torch.equal(got[0], torch.from_numpy(x[rows]))
    small = source._read_rows(np.array([4999, 0, 17, -1]), window_bytes=64)  # many small windows
    assert np.array_equal(small, x[[4999, 0, 17, -1]])
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 3)
    with pytest.raises(ValueError, match=r"changed while it was being read.*\(truncated\)"):
        source[:, torch.as_tensor(rows)]
    with pytest.raises(ValueError, match=r"\(truncated\)"):  # a cut between the check and the read
        source._read_rows(np.array([4000, 10]))  # a short read, where a memory map would crash (SIGBUS)
