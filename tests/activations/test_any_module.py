"""Listing, default selection, extraction and geometry on models as users bring them: torchvision's
common architectures (random weights), dpmodels' EfficientNet-Lite, vision transformers' tokens, and
custom modules with non-tensor nodes, input-independent branches, tuple/dict outputs and channel-last
tensors. For every default layer: the point dimension equals the channel count and the label maps
have the layer's spatial shape."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from dpmodels import DPGMM
from dpmodels.activations import conv_layers, extract, list_layers
from dpmodels.analysis.network import check_layers
from dpmodels.maps import layer_maps
from dpmodels.nets import build_net


def _check_default_layers(model: nn.Module, size: int, num_images: int = 2) -> dict:
    torch.manual_seed(0)
    x = torch.rand(num_images, 3, size, size)
    names = conv_layers(model, (3, size, size))
    assert names, "the default selection is empty"
    acts = extract(model, x, names, positions_per_image=None, progress=False, batch_size=num_images)
    assert list(acts) == names
    for name, a in acts.items():
        C, (Hl, Wl) = a.meta["channels"], a.geometry.map_size
        assert a.num_features == C, (name, a.num_features, C)
        assert a.num_points == num_images * Hl * Wl
        fit = DPGMM(truncation=3, covariance="diag", max_iter=5, seed=0).fit(a.points[:400])
        maps = layer_maps(fit, a, num_draws=2, progress=False)
        assert tuple(maps.labels.shape) == (num_images, Hl, Wl)
        assert int(maps.labels.min()) >= 0
    return acts


@pytest.mark.filterwarnings("ignore::dpmodels.ConvergenceWarning")
@pytest.mark.filterwarnings("ignore:all .* components are active")  # 3 components: a shape check, not a fit
@pytest.mark.filterwarnings("ignore::dpmodels.infer.degenerate.DegenerateDataWarning")  # dead ReLU channels
@pytest.mark.parametrize(
    "arch",
    [
        pytest.param("resnet18", marks=pytest.mark.slow),  # ~20 s; test_extract covers resnet18 too
        pytest.param("vgg11_bn", marks=pytest.mark.slow),
        pytest.param("mobilenet_v3_small", marks=pytest.mark.slow),
        pytest.param("efficientnet_b0", marks=pytest.mark.slow),
        pytest.param("regnet_y_400mf", marks=pytest.mark.slow),
        pytest.param("efficientnet_lite0", marks=pytest.mark.slow),
        pytest.param("convnext_tiny", marks=pytest.mark.slow),
    ],
)
def test_common_architectures_default_layers_extract_and_map(arch):
    torch.manual_seed(0)
    model = build_net(arch, weights=None)
    acts = _check_default_layers(model, 64)
    if arch == "convnext_tiny":  # its blocks compute channel-last (b, H, W, C)
        assert any(a.meta["layout"] == "nhwc" for a in acts.values())


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::dpmodels.ConvergenceWarning")
@pytest.mark.filterwarnings("ignore:all .* components are active")  # 3 components: a shape check, not a fit
@pytest.mark.filterwarnings("ignore::dpmodels.infer.degenerate.DegenerateDataWarning")  # dead ReLU channels
def test_vision_transformer_tokens_become_patch_grid_maps():
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(weights=None)
    acts = _check_default_layers(model, 224, num_images=1)
    for a in acts.values():
        assert a.meta["layout"] == "tokens" and a.num_points == 14 * 14  # the class token dropped
        assert a.num_features == 768 and a.geometry.map_size == (14, 14)


def test_token_maps_put_each_patch_at_its_grid_position():
    class Tokens(nn.Module):  # patch embedding + a class token, as vision transformers do
        def __init__(self):
            super().__init__()
            self.patch = nn.Conv2d(3, 4, 8, 8)
            self.cls = nn.Parameter(torch.zeros(1, 1, 4))
            self.mix = nn.Linear(4, 4)

        def forward(self, x):
            t = self.patch(x).flatten(2).transpose(1, 2)  # (b, T, 4)
            t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], 1)  # (b, 1 + T, 4)
            return self.mix(t)

    torch.manual_seed(0)
    model = Tokens()
    x = torch.rand(1, 3, 32, 48)
    (info,) = list_layers(model, (3, 32, 48), layers=["mix"])
    assert info.layout.kind == "tokens" and info.layout.prefix == 1 and info.shape == (4, 4, 6)
    acts = extract(model, x, ["mix"], progress=False)["mix"]
    with torch.no_grad():
        direct = model.mix(model.patch(x).flatten(2).transpose(1, 2))[0]  # (T, 4) in raster order
    for (_, y, xx), p in zip(acts.index.tolist(), acts.points, strict=True):
        assert torch.allclose(p, direct[y * 6 + xx], atol=1e-6)
    assert info.geometry.stride == (8.0, 8.0)


class Quirky(nn.Module):
    """A non-tensor node (``x.size(1)``), an input-independent learned map, a channel-last branch and
    a dict output."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bias_map = nn.Parameter(torch.randn(1, 6, 16, 16))
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.norm = nn.LayerNorm(6)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        c = x.size(1)  # a Python int in the traced graph
        y = self.act(self.conv(x) + F.interpolate(self.bias_map, size=x.shape[-2:]) * c)
        z = self.norm(self.pool(y).permute(0, 2, 3, 1))  # (b, H, W, C) channel-last
        return {"logits": self.head(z.mean((1, 2))), "features": z}


@pytest.mark.filterwarnings("ignore::dpmodels.ConvergenceWarning")
@pytest.mark.filterwarnings("ignore:all .* components are active")  # 3 components: a shape check, not a fit
@pytest.mark.filterwarnings("ignore::dpmodels.infer.degenerate.DegenerateDataWarning")
def test_custom_module_with_non_tensor_nodes_constant_branch_channel_last_and_dict_output():
    torch.manual_seed(0)
    model = Quirky()
    infos = {i.name: i for i in list_layers(model, (3, 16, 16))}
    assert not {"bias_map", "interpolate", "mul"} & set(infos)  # input-independent: not layers
    assert "size" not in infos  # a number, not a map
    assert infos["act"].shape == (6, 16, 16) and infos["act"].layout.kind == "nchw"
    assert infos["norm"].layout.kind == "nhwc" and infos["norm"].shape == (6, 8, 8)
    assert infos["norm"].geometry.stride == (2.0, 2.0)
    _check_default_layers(model, 16)
    acts = extract(model, torch.rand(2, 3, 16, 16), ["norm"], progress=False)["norm"]
    with torch.no_grad():
        z = model(torch.rand(1, 3, 16, 16))["features"]
    assert acts.num_features == 6 and z.shape[-1] == 6


def test_input_independent_layer_requested_by_name_is_refused():
    with pytest.raises(ValueError, match="depends on the input"):
        list_layers(Quirky(), (3, 16, 16), layers=["interpolate"])


@pytest.mark.filterwarnings("ignore::dpmodels.ConvergenceWarning")
@pytest.mark.filterwarnings("ignore:all .* components are active")  # 3 components: a shape check, not a fit
def test_tuple_outputs_and_hooked_models():
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 5, 3, padding=1)
            self.act = nn.ReLU()

        def forward(self, x):
            if x.sum() > -1e9:  # data-dependent control flow: FX cannot trace it, hooks take over
                y = self.act(self.conv(x))
            return y, y.mean()

    names = conv_layers(Pair(), (3, 12, 12))
    assert names == ["act"]
    acts = extract(Pair(), torch.rand(2, 3, 12, 12), names, progress=False)
    assert acts["act"].num_features == 5


def test_container_names_are_accepted_where_node_names_are():
    check_layers("resnet18", ["layer1", "layer2", "layer3"])  # the README's command line
    check_layers("efficientnet_lite0", ["stage3"])
    with pytest.raises(ValueError, match="unknown layer name"):
        check_layers("resnet18", ["layer9"])


def test_forward_that_fails_at_the_probe_size_is_one_clear_error():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 30 * 30, 2))
    with pytest.raises(ValueError, match="forward pass of Sequential on an input of size"):
        list_layers(model, (3, 16, 16))


def test_images_with_the_wrong_channel_count_are_refused_before_extraction():
    model = build_net("efficientnet_lite0", weights=None)
    with pytest.raises(ValueError, match="3 input channels, the images have 1"):
        extract(model, torch.rand(2, 1, 32, 32), progress=False)


def test_pretrained_preprocessing_is_applied_by_extraction():
    model = build_net("efficientnet_lite0", weights="DEFAULT")
    x = torch.rand(2, 3, 32, 32)
    auto = extract(model, x, ["stage2"], progress=False)["stage2"]
    explicit = extract(model, 2 * x - 1, ["stage2"], progress=False, normalize=((0.0,), (1.0,)))["stage2"]
    assert torch.allclose(auto.points, explicit.points, atol=1e-5)
    assert auto.meta["normalize"] == [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]
