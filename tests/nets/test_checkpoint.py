from __future__ import annotations

import pickle

import pytest
import torch

from dpmodels.nets import (
    CheckpointError,
    SmallCNN,
    atomic_write,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)


class _Evil:
    """Unpickling this creates a marker file: what an attacker's checkpoint would do with os.system."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_round_trip_restores_weights_and_meta(tmp_path):
    model = SmallCNN(widths=(4, 8))
    path = save_checkpoint(model, tmp_path / "sub" / "m.pt", {"config": model.config, "acc": 0.5})
    other = SmallCNN(widths=(4, 8))
    meta = load_weights(other, path)
    assert meta == {"config": model.config, "acc": 0.5}
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True)
    )
    assert [p.name for p in path.parent.iterdir()] == ["m.pt"]  # no temporary files left behind


def test_plain_state_dict_files_load(tmp_path):
    model = SmallCNN(widths=(4,))
    torch.save(model.state_dict(), tmp_path / "plain.pth")
    state, meta = load_checkpoint(tmp_path / "plain.pth")
    assert meta == {} and set(state) == set(model.state_dict())


def test_meta_must_be_json(tmp_path):
    with pytest.raises(ValueError, match="JSON"):
        save_checkpoint(SmallCNN(widths=(4,)), tmp_path / "m.pt", {"t": torch.zeros(2)})
    assert not (tmp_path / "m.pt").exists()


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint("does/not/exist.pt")


def test_architecture_mismatch_names_keys_and_file(tmp_path):
    path = save_checkpoint(SmallCNN(widths=(4, 8)), tmp_path / "small.pt")
    with pytest.raises(CheckpointError) as info:
        load_weights(SmallCNN(widths=(4, 16, 16)), path)
    msg = str(info.value)
    assert "small.pt" in msg and "missing keys" in msg and "block3.conv.weight" in msg
    assert (
        "shape mismatches" in msg
        and "block2.conv.weight: checkpoint (8, 4, 3, 3) vs model (16, 4, 3, 3)" in msg
    )


def test_truncated_file_is_reported_and_left_alone(tmp_path):
    path = save_checkpoint(SmallCNN(widths=(4, 8)), tmp_path / "m.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == before


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_malicious_pickle_is_refused(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    if writer == "pickle":
        with open(path, "wb") as f:
            pickle.dump(_Evil(marker), f)
    else:
        torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Evil(marker)}, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(path)
    assert not marker.exists()


def test_atomic_write_keeps_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "entry.pt"
    target.write_bytes(b"old")

    def crash(tmp):
        tmp.write_bytes(b"half-writ")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, crash)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["entry.pt"]
