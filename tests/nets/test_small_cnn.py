from __future__ import annotations

import pytest
import torch
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from dpmodels.nets import SmallCNN


def test_output_shape_and_config_round_trip():
    model = SmallCNN(in_channels=1, num_classes=5, widths=(4, 8))
    assert model(torch.rand(3, 1, 20, 20)).shape == (3, 5)
    twin = SmallCNN(**model.config)
    assert [p.shape for p in twin.parameters()] == [p.shape for p in model.parameters()]


def test_node_names_are_readable_and_layer_names_extract():
    model = SmallCNN(widths=(4, 8, 16)).eval()
    train_nodes, eval_nodes = get_graph_node_names(model)
    assert train_nodes == eval_nodes
    expected = ["x"]
    for b in (1, 2, 3):
        expected += [f"block{b}.conv", f"block{b}.bn", f"block{b}.relu", f"block{b}.pool"]
    assert eval_nodes == [*expected, "gap", "flatten", "head"]
    assert model.layer_names() == ["block1.relu", "block2.relu", "block3.relu"]
    out = create_feature_extractor(model, model.layer_names())(torch.rand(2, 3, 32, 32))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "block1.relu": (2, 4, 32, 32),
        "block2.relu": (2, 8, 16, 16),
        "block3.relu": (2, 16, 8, 8),
    }
    assert all(bool((v >= 0).all()) for v in out.values())  # post-ReLU


def test_without_pooling_keeps_resolution():
    model = SmallCNN(widths=(4, 4), blocks_pool=False).eval()
    out = create_feature_extractor(model, model.layer_names())(torch.rand(1, 3, 12, 12))
    assert out["block2.relu"].shape == (1, 4, 12, 12)


@pytest.mark.parametrize(
    "kwargs", [{"widths": ()}, {"widths": (8, 0)}, {"num_classes": 0}, {"in_channels": 2.5}]
)
def test_bad_config_raises(kwargs):
    with pytest.raises(ValueError, match="SmallCNN"):
        SmallCNN(**kwargs)
