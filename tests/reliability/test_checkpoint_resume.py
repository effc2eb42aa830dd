"""Fit checkpoints: a fit killed with SIGKILL and started again ends bit for bit where an
uninterrupted fit ends (CPU), in the full-batch and in the minibatch phase; mismatched, corrupt
and unsafe checkpoints are refused and left untouched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from dpmodels import DPGMM
from dpmodels.infer import ConvergenceWarning, FitCheckpointError

SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from dpmodels import DPGMM
    from tests_data import make_data
    out, ckpt, batch = sys.argv[1], sys.argv[2], sys.argv[3]
    model = DPGMM(truncation=12, seed=3, checkpoint=ckpt, checkpoint_every=0, max_iter=40,
                  tol=1e-7 if batch == "none" else 1e-5,
                  batch_size=None if batch == "none" else int(batch))
    model.fit(make_data())
    r = model.fit_result_
    torch.save({"mean": r.params.mean, "weights": torch.as_tensor(model.weights_), "elbo": r.elbo,
                "history": r.elbo_history, "n_iter": r.n_iter}, out)
    """
)

DATA = textwrap.dedent(
    """
    import torch
    def make_data():
        g = torch.Generator().manual_seed(11)
        centres = 4.0 * torch.randn(6, 3, generator=g)
        labels = torch.randint(6, (20000,), generator=g)
        return centres[labels] + torch.randn(20000, 3, generator=g)
    """
)


def _fit_kwargs(batch):
    return dict(truncation=12, seed=3, tol=1e-7 if batch is None else 1e-5, max_iter=40, batch_size=batch)


def _run(tmp_path: Path, out: Path, ckpt: Path, batch, kill: bool):
    (tmp_path / "tests_data.py").write_text(DATA)
    (tmp_path / "fit_script.py").write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    cmd = [sys.executable, str(tmp_path / "fit_script.py"), str(out), str(ckpt), str(batch).lower()]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if not kill:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        return None
    deadline = time.monotonic() + 120
    while not ckpt.exists():  # wait for the first checkpoint, then kill without warning
        assert proc.poll() is None, f"fit ended before its first checkpoint: {proc.communicate()[1].decode()}"
        assert time.monotonic() < deadline, "no checkpoint appeared within 120 s"
        time.sleep(0.005)
    time.sleep(0.01)  # let it run on a little, so the kill may land mid-write of a later save
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return torch.load(ckpt, weights_only=True)["state"]


@pytest.mark.slow
@pytest.mark.parametrize("batch", [None, 500], ids=["full_batch", "minibatch"])
def test_sigkill_and_resume_is_bit_identical(tmp_path, batch):
    sys.path.insert(0, str(tmp_path))
    (tmp_path / "tests_data.py").write_text(DATA)
    try:
        from tests_data import make_data  # noqa: PLC0415 - written just above

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # a fixed number of steps is wanted
            reference = DPGMM(**_fit_kwargs(batch)).fit(make_data())
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("tests_data", None)
    ckpt, out = tmp_path / "fit.ckpt", tmp_path / "result.pt"
    state = _run(tmp_path, out, ckpt, batch, kill=True)
    assert state["phase"] == ("full" if batch is None else "minibatch")
    assert not out.exists()
    _run(tmp_path, out, ckpt, batch, kill=False)  # the same command again, to the end
    assert not ckpt.exists(), "the checkpoint is removed after a successful fit"
    got = torch.load(out, weights_only=True)
    r = reference.fit_result_
    assert torch.equal(got["mean"], r.params.mean)
    assert torch.equal(got["weights"], torch.as_tensor(reference.weights_))
    assert torch.equal(got["elbo"], r.elbo)
    assert torch.equal(got["history"], r.elbo_history)
    assert got["n_iter"] == r.n_iter


def _blobs(n: int = 600, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[-4.0, 0.0], [4.0, 0.0], [0.0, 5.0]])
    return centres[torch.randint(3, (n,), generator=g)] + torch.randn(n, 2, generator=g)


def test_kept_checkpoint_returns_the_same_fit_and_refuses_other_settings(tmp_path):
    ckpt = tmp_path / "fit.ckpt"
    x = _blobs()
    first = DPGMM(truncation=8, seed=1, checkpoint=ckpt, keep_checkpoint=True).fit(x)
    assert ckpt.exists()
    again = DPGMM(truncation=8, seed=1, checkpoint=ckpt, keep_checkpoint=True).fit(x)
    assert torch.equal(again.fit_result_.params.mean, first.fit_result_.params.mean)
    assert torch.equal(again.fit_result_.elbo_history, first.fit_result_.elbo_history)
    before = ckpt.read_bytes()
    for kwargs, data, what in [
        ({"seed": 2}, x, "seed"),
        ({"truncation": 9}, x, "truncation"),
        ({"tol": 1e-3}, x, "options"),
        ({"concentration": 2.0}, x, "prior"),
        ({}, x + 1e-3, "data"),
        ({}, x[:-1], "data"),
    ]:
        settings = {"truncation": 8, "seed": 1, **kwargs}
        with pytest.raises(FitCheckpointError, match=what) as info:
            DPGMM(checkpoint=ckpt, **settings).fit(data)
        assert "delete it" in str(info.value) and str(ckpt) in str(info.value)
        assert ckpt.read_bytes() == before, "a mismatched checkpoint must be left untouched"


@pytest.mark.parametrize("cut", [0, 10, 0.5])
def test_truncated_checkpoint_is_reported_and_left_untouched(tmp_path, cut):
    ckpt = tmp_path / "fit.ckpt"
    DPGMM(truncation=6, checkpoint=ckpt, keep_checkpoint=True).fit(_blobs(300))
    full = ckpt.read_bytes()
    damaged = full[: int(cut * len(full)) if isinstance(cut, float) else cut]
    ckpt.write_bytes(damaged)
    with pytest.raises(FitCheckpointError, match="corrupt or truncated") as info:
        DPGMM(truncation=6, checkpoint=ckpt).fit(_blobs(300))
    assert str(ckpt) in str(info.value)
    assert ckpt.read_bytes() == damaged


def test_checkpoint_needs_the_natural_engine_and_a_valid_interval(tmp_path):
    with pytest.raises(ValueError, match="engine='natural'"):
        DPGMM(engine="pyro", checkpoint=tmp_path / "c.ckpt").validate()
    with pytest.raises(ValueError, match="checkpoint_every"):
        DPGMM(checkpoint=tmp_path / "c.ckpt", checkpoint_every=-1).validate()
    with pytest.raises(FitCheckpointError, match="directory"):
        DPGMM(truncation=4, checkpoint=tmp_path).fit(np.random.default_rng(0).normal(size=(50, 2)))


class _Interrupted(Exception):
    """Raised by a timer signal in the middle of a fit (a crash that Python gets to see)."""


def _layer(name: str, D: int, seed: int):
    from dpmodels.activations import LayerActivations, LayerGeometry  # noqa: PLC0415
    from dpmodels.data import PlantedMixture  # noqa: PLC0415

    side, images = 16, 8
    N = images * side * side
    X, _ = PlantedMixture(4, D, "full", separation=6.0, imbalance=1.0, seed=seed).sample(N)
    i, y, x = np.unravel_index(np.arange(N), (images, side, side))
    geom = LayerGeometry((side, side), (4 * side, 4 * side), (4.0, 4.0), (1.5, 1.5), (6, 6))
    index = torch.from_numpy(np.stack([i, y, x], 1)).long()
    return LayerActivations(name, torch.as_tensor(X, dtype=torch.float32), index, geom, images)


@pytest.mark.slow
def test_fit_layers_resumes_after_an_interruption(tmp_path, monkeypatch):
    from dpmodels.analysis.fitting import fit_layers  # noqa: PLC0415
    from dpmodels.infer.checkpoint import FitCheckpointer  # noqa: PLC0415

    acts = {"a": _layer("a", 2, 0), "b": _layer("b", 3, 1), "c": _layer("c", 2, 2)}  # one call per layer
    kwargs = dict(fit_points=1500, heldout_points=200, seed=4, truncation=10, tol=1e-5)
    reference = fit_layers(acts, **kwargs)
    ckpt_dir = tmp_path / "ckpts"

    # interrupt halfway through the saves of a checkpointed call (counted on a first call), so the
    # interruption lands mid-run whatever the machine's speed (a timer did not, on a loaded machine)
    save, saves = FitCheckpointer.save, []

    def counting(self, state):
        saves.append(1)
        return save(self, state)

    monkeypatch.setattr(FitCheckpointer, "save", counting)
    fit_layers(acts, checkpoint_dir=tmp_path / "count", checkpoint_every=0.0, **kwargs)
    total, saves[:] = len(saves), []
    assert total >= 4

    def interrupting(self, state):
        out = counting(self, state)
        if len(saves) == total // 2:
            raise _Interrupted
        return out

    monkeypatch.setattr(FitCheckpointer, "save", interrupting)
    with pytest.raises(_Interrupted):
        fit_layers(acts, checkpoint_dir=ckpt_dir, checkpoint_every=0.0, **kwargs)
    monkeypatch.setattr(FitCheckpointer, "save", save)
    assert list(ckpt_dir.glob("*.ckpt")), "the interrupted call left no checkpoint to resume from"
    resumed = fit_layers(acts, checkpoint_dir=ckpt_dir, checkpoint_every=0.0, **kwargs)
    assert not ckpt_dir.exists(), "checkpoints (and their folder) are removed once every layer is fitted"
    for name, fit in reference.items():
        got = resumed[name].model.fit_result_
        assert torch.equal(got.params.mean, fit.model.fit_result_.params.mean)
        assert torch.equal(got.elbo_history, fit.model.fit_result_.elbo_history)
        assert np.array_equal(resumed[name].fit_index, fit.fit_index)
        assert resumed[name].heldout_loglik == fit.heldout_loglik
