"""Every loader that reads a project file refuses a crafted pickle whose ``__reduce__`` would
run code (here: create a marker file). Each payload is first shown to be live: a trusting loader
(``weights_only=False`` / ``allow_pickle=True``) does create the marker.

Network checkpoints (``dpmodels.nets.load_checkpoint``) are covered in
``tests/nets/test_checkpoint.py::test_malicious_pickle_is_refused`` and once more here."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import torch
from torch import nn

from dpmodels import DPGMM
from dpmodels.activations import extract, load_store
from dpmodels.analysis.outputs import RunOutputs, load_layer_maps
from dpmodels.infer import FitCheckpointError
from dpmodels.infer.checkpoint import FORMAT
from dpmodels.io import MANIFEST, file_manifest
from dpmodels.nets import CheckpointError, load_checkpoint


class _Payload:
    """Unpickling this object calls ``pathlib.Path(marker).touch()``."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "PWNED"


def _evil_npy(path: pathlib.Path, marker: pathlib.Path) -> None:
    np.save(path, np.array([_Payload(marker)], dtype=object), allow_pickle=True)


def test_payloads_are_live(tmp_path, marker):
    torch.save({"x": _Payload(marker)}, tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()
    marker.unlink()
    _evil_npy(tmp_path / "evil.npy", marker)
    np.load(tmp_path / "evil.npy", allow_pickle=True)
    assert marker.exists()


def test_fit_checkpoint_refuses_a_pickle(tmp_path, marker):
    ckpt = tmp_path / "fit.ckpt"
    torch.save({"format": FORMAT, "fingerprint": {}, "state": _Payload(marker)}, ckpt)
    before = ckpt.read_bytes()
    x = np.random.default_rng(0).normal(size=(100, 2))
    with pytest.raises(FitCheckpointError, match="refused to load fit checkpoint"):
        DPGMM(truncation=4, checkpoint=ckpt).fit(x)
    assert not marker.exists()
    assert ckpt.read_bytes() == before


def test_network_checkpoint_refuses_a_pickle(tmp_path, marker):
    torch.save({"state_dict": {"w": torch.zeros(1)}, "meta": _Payload(marker)}, tmp_path / "net.pt")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "net.pt")
    assert not marker.exists()


@pytest.mark.parametrize("target", ["points", "index", "transform"])
def test_activation_store_refuses_a_pickle(tmp_path, marker, target):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    store = tmp_path / "store"
    extract(net, torch.rand(2, 3, 8, 8), ["0"], store=store, pca_dim=2, progress=False)
    stem = json.loads((store / "manifest.json").read_text())["layers"]["0"]
    if target == "transform":
        with np.load(store / f"{stem}.transform.npz") as z:
            arrays = {k: z[k] for k in z.files}
        arrays["mean"] = np.array([_Payload(marker)], dtype=object)
        np.savez(store / f"{stem}.transform.npz", allow_pickle=True, **arrays)
    else:
        _evil_npy(store / f"{stem}{'.index' if target == 'index' else ''}.npy", marker)
    with pytest.raises(ValueError, match="(?i)object|pickle"):
        load_store(store)
    assert not marker.exists()


def test_run_outputs_refuse_a_pickle(tmp_path, marker):
    np.savez(tmp_path / "maps.npz", meta=np.array([_Payload(marker)], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_layer_maps(tmp_path / "maps.npz")
    meta = json.dumps({"names": ["a"], "mask_names": None, "name": "x"})
    np.savez(tmp_path / "images.npz", meta=np.array(meta), images=np.array([_Payload(marker)], dtype=object))
    (tmp_path / "metrics.json").write_text(json.dumps({"layers": {}}))
    (tmp_path / MANIFEST).write_text(json.dumps({"files": file_manifest(tmp_path)}))  # a finished run
    with pytest.raises(ValueError, match="allow_pickle"):
        RunOutputs(tmp_path).images()
    assert not marker.exists()
