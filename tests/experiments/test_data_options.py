"""The data group: every option is a loader named by ``_target_`` with a structured schema, built by
``hydra.utils.instantiate``; a new data set is one loader plus one YAML."""

from __future__ import annotations

import inspect
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_method
from omegaconf import OmegaConf

from dpmodels.data import texture_mosaics
from experiments.builders import dataset_from_config
from experiments.schema import DataConf, register

CONF = Path(__file__).resolve().parents[2] / "conf"
NEEDS_ROOT = ("folder", "mnist", "fashion_mnist", "cifar10")


def _compose(overrides, conf=CONF):
    register()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose("analyze", overrides=overrides)


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF / "data").glob("*.yaml")))
def test_every_option_names_a_loader_that_takes_its_fields(option):
    cfg = _compose([f"data={option}"] + (["data.root=/somewhere"] if option in NEEDS_ROOT else []))
    assert isinstance(OmegaConf.to_object(cfg.data), DataConf)
    fields = OmegaConf.to_container(cfg.data, resolve=True)
    loader = get_method(fields.pop("_target_"))
    inspect.signature(loader).bind(**fields)  # every key is a keyword of the loader


def test_the_textures_option_is_the_loader_called_with_its_fields():
    cfg = _compose(["data=textures", "data.num_images=3", "data.size=16", "data.seed=2"])
    images = dataset_from_config(cfg.data)
    assert torch.equal(images.images, texture_mosaics(num_images=3, size=16, seed=2).images)
    assert images.meta["shift"] is None  # identity strengths: no shift
    shifted = dataset_from_config(_compose(["data=textures_b", "data.num_images=3", "data.noise=0.2"]).data)
    assert shifted.meta["shift"]["noise"] == 0.2 and shifted.meta["family"] == "B"


def test_keys_a_loader_does_not_take_fail_at_composition():
    with pytest.raises(Exception, match="family"):
        _compose(["data=digits", "data.family=B"])
    with pytest.raises(Exception, match="num_images"):
        _compose(["data=skimage", "data.num_images=3"])


def test_missing_root_and_loader_errors_are_plain_messages(tmp_path):
    with pytest.raises(ValueError, match=r"data=folder needs data.root: pass data.root=\.\.\."):
        dataset_from_config(_compose(["data=folder"]).data)
    with pytest.raises(FileNotFoundError, match="does_not_exist"):
        dataset_from_config(_compose(["data=folder", f"data.root={tmp_path / 'does_not_exist'}"]).data)


def test_a_new_data_set_is_one_loader_and_one_yaml(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    (conf / "data" / "mine.yaml").write_text(
        "defaults:\n  - schema\n  - _self_\n_target_: dpmodels.data.digits.digits_images\nnum_images: 4\nsize: 16\n"
    )
    images = dataset_from_config(_compose(["data=mine", "data.seed=1"], conf).data)
    assert images.images.shape == (4, 1, 16, 16) and images.masks is not None
