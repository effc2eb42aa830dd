"""Other libraries' vision models by name (``dpmodels.nets.external``): timm, Hugging Face and
open_clip, with random weights or tiny configs (nothing is downloaded)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dpmodels import DPGMM
from dpmodels.activations import extract, format_layers, list_layers
from dpmodels.nets import build_net
from dpmodels.nets.checkpoint import CheckpointError

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")
open_clip = pytest.importorskip("open_clip")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No hub access, and an empty Hugging Face cache: only folders and files in the test's tmp dir."""
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))  # (I, 3, H, W)


def _check_layers(model, size: int, layers=None) -> dict:
    """Default selection non-empty, points of dimension C_l, label maps of shape (I, H_l, W_l)."""
    layers = layers or model.default_layers
    assert layers
    infos = {i.name: i for i in list_layers(model, (3, size, size), layers=layers)}
    assert list(infos) == list(layers)
    acts = extract(model, _images(2, size), layers, progress=False)
    for name, act in acts.items():
        C, H, W = infos[name].shape
        assert act.num_features == C and act.geometry.map_size == (H, W)
        assert act.num_points == 2 * H * W
    name = max(acts, key=lambda n: acts[n].num_points)
    points = acts[name].tensor()
    points = points[:, points.var(0).argsort()[-2:]]  # (N, 2) most varied channels: a label per position
    fit = DPGMM(truncation=8, covariance="diag", seed=0).fit(points)
    labels = acts[name].to_maps(fit.predict(points))
    assert tuple(labels.shape) == (2, *infos[name].shape[1:])
    return infos


def _tiny_dinov2(folder: Path) -> Path:
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    config = Dinov2Config(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                          image_size=32, patch_size=8)  # fmt: skip
    torch.manual_seed(0)
    Dinov2Model(config).save_pretrained(folder)
    BitImageProcessor(crop_size={"height": 32, "width": 32}, size={"shortest_edge": 32}).save_pretrained(
        folder
    )
    return folder


def _tiny_open_clip(tmp_path: Path) -> str:
    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 3, "width": 32, "patch_size": 8,
           "head_width": 16}, "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 16, "heads": 2, "layers": 1}}  # fmt: skip
    path = tmp_path / "tiny-vit-dp.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    return "tiny-vit-dp"


# ------------------------------------------------------------------------------------------ fast tier


def test_timm_vit_patch_tokens_on_the_grid_with_its_preprocessing():
    torch.manual_seed(0)
    model = build_net("test_vit", source="timm", img_size=32)
    assert model.default_layers == [f"blocks.{i}" for i in range(6)]
    infos = _check_layers(model, 32, ["blocks.5"])
    g = infos["blocks.5"].geometry
    assert infos["blocks.5"].shape == (64, 2, 2)  # class token dropped, 2 x 2 patch grid
    assert g.stride == (16.0, 16.0) and g.receptive_field == (32, 32)  # patch stride, whole image
    pre = model.preprocessing
    assert pre.mean == (0.5, 0.5, 0.5) and pre.interpolation == "bicubic" and pre.size == 160
    assert "blocks.5" in format_layers(list(infos.values()))


def test_timm_unknown_name_gives_the_closest_names():
    with pytest.raises(ValueError, match="unknown timm model 'convnext_tiyn'.*convnext_tiny"):
        build_net("convnext_tiyn", source="timm")


def test_timm_checkpoint_files_load_and_reproduce_the_activations(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    original = timm.create_model("test_convnext").eval()
    torch.save(original.state_dict(), tmp_path / "mine.pt")
    save_file(
        {k: v.contiguous() for k, v in original.state_dict().items()}, str(tmp_path / "mine.safetensors")
    )
    x = _images(2, 32)
    with torch.no_grad():
        expected = original.forward_intermediates(x, indices=[0], intermediates_only=True)
    for file in ("mine.pt", "mine.safetensors"):
        torch.manual_seed(2)  # another random init: the file must replace it
        model = build_net("test_convnext", source="timm", weights=str(tmp_path / file))
        acts = extract(model, x, ["stages.0"], progress=False, normalize=((0,), (1,)))
        for name, ref in zip(["stages.0"], expected, strict=True):
            I, C, H, W = ref.shape
            points = ref.permute(0, 2, 3, 1).reshape(-1, C)  # (I * H * W, C), positions in (i, y, x) order
            torch.testing.assert_close(acts[name].tensor(), points, rtol=1e-5, atol=1e-5)


def test_timm_state_dict_of_another_architecture_is_refused_with_the_keys(tmp_path):
    torch.save(timm.create_model("test_vit").state_dict(), tmp_path / "vit.pt")
    with pytest.raises(CheckpointError, match=r"does not match.*missing keys.*stem|stages"):
        build_net("test_convnext", source="timm", weights=str(tmp_path / "vit.pt"))


def test_timm_default_weights_missing_from_the_cache_say_how_to_get_them():
    with pytest.raises(FileNotFoundError, match="not in the Hugging Face cache.*net.download=true"):
        build_net("test_convnext", source="timm", weights="DEFAULT")


def test_hf_dinov2_from_a_local_folder_with_its_processor(tmp_path):
    folder = _tiny_dinov2(tmp_path / "dino")
    model = build_net(str(folder), source="hf", weights="DEFAULT")  # the folder's own weights
    assert model.default_layers == ["blocks.0", "blocks.1", "blocks.2"]
    infos = _check_layers(model, 32)
    assert infos["blocks.2"].shape == (32, 4, 4) and infos["blocks.2"].module_type == "Dinov2Layer"
    pre = model.preprocessing
    assert pre.size == 32 and pre.interpolation == "bicubic" and len(pre.mean) == 3
    # the folder's weights, not a random init: the same maps as the transformers model itself
    reference = transformers.AutoModel.from_pretrained(folder).eval()
    x = _images(1, 32)
    with torch.no_grad():
        h = reference(pixel_values=x, output_hidden_states=True).hidden_states[2][:, 1:]  # (1, 16, 32)
        ours = model.forward_layers(x, ["blocks.1"])["blocks.1"]  # (1, 32, 4, 4)
    torch.testing.assert_close(ours.flatten(2).transpose(1, 2), h)


def test_hf_unknown_name_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="not a folder and not in the Hugging Face cache.*net.download=true"):
        build_net("facebook/dinov2-smal", source="hf")


def test_open_clip_vit_from_a_config_file(tmp_path):
    name = _tiny_open_clip(tmp_path)
    torch.manual_seed(0)
    model = build_net(name, source="open_clip")
    infos = _check_layers(model, 32)
    assert list(infos) == ["blocks.0", "blocks.1", "blocks.2"] and infos["blocks.0"].shape == (32, 4, 4)
    assert model.preprocessing.mean[0] == pytest.approx(0.48145466)
    with pytest.raises(ValueError, match="unknown open_clip architecture 'ViT-B-23'.*ViT-B-32"):
        build_net("ViT-B-23", source="open_clip")
    with pytest.raises(ValueError, match="pretrained tag"):
        build_net(name, source="open_clip", weights="openai")


def test_open_clip_tower_weights_file_loads(tmp_path):
    name = _tiny_open_clip(tmp_path)
    torch.manual_seed(3)
    full = open_clip.create_model(name).eval()
    torch.save(full.state_dict(), tmp_path / "clip.pt")  # the whole CLIP: the image tower is taken
    torch.manual_seed(4)
    model = build_net(name, source="open_clip", weights=str(tmp_path / "clip.pt"))
    x = _images(1, 32)
    with torch.no_grad():
        ref = full.visual.forward_intermediates(x, indices=[2], intermediates_only=True)[
            "image_intermediates"
        ][0]
        torch.testing.assert_close(model.forward_layers(x, ["blocks.2"])["blocks.2"], ref)


# ------------------------------------------------------------------------------------------ slow tier

# (name, input side, builder options): convnets at 64 px, ViTs built for 64 px, Swin at its 224 px
TIMM_TARGETS = [("resnet50", 64, {}), ("convnext_tiny", 64, {}), ("efficientnet_b0", 64, {}), ("regnety_008", 64, {}),
                ("vit_small_patch16_224", 64, {"img_size": 64}), ("deit_tiny_patch16_224", 64, {"img_size": 64}),
                ("swin_tiny_patch4_window7_224", 224, {}), ("eva02_tiny_patch14_224", 56, {"img_size": 56})]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name, size, options", TIMM_TARGETS, ids=[t[0] for t in TIMM_TARGETS])
def test_timm_targets(name, size, options):
    torch.manual_seed(0)
    model = build_net(name, source="timm", weights=None, **options)
    layers = model.default_layers
    assert len(layers) >= 4
    infos = _check_layers(model, size, [layers[0], layers[-1]])
    deepest = infos[layers[-1]]
    assert deepest.shape[1:] in {(2, 2), (4, 4), (7, 7)}  # stride 32, or the patch grid
    assert deepest.shape[0] == model.model.feature_info[-1]["num_chs"]


def _hf_config(kind: str):
    t = transformers
    common = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, intermediate_size=128,
                  image_size=64, patch_size=16)  # fmt: skip
    return {
        "Dinov2Model": (t.Dinov2Config, t.Dinov2Model),
        "ViTModel": (t.ViTConfig, t.ViTModel),
        "CLIPVisionModel": (t.CLIPVisionConfig, t.CLIPVisionModel),
        "SiglipVisionModel": (t.SiglipVisionConfig, t.SiglipVisionModel),
    }[kind][0](**common), common


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["Dinov2Model", "ViTModel", "CLIPVisionModel", "SiglipVisionModel"])
def test_hf_encoders_from_small_configs(kind, tmp_path):
    config, _ = _hf_config(kind)
    torch.manual_seed(0)
    transformers.AutoModel.from_config(config).save_pretrained(tmp_path / kind)
    model = build_net(str(tmp_path / kind), source="hf")
    assert type(model.model).__name__ == kind
    infos = _check_layers(model, 64)
    assert all(info.shape == (64, 4, 4) for info in infos.values())  # prefix tokens dropped (SigLIP has none)


def _cli(args, tmp_path):
    env = {**os.environ, "DPMODELS_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "HF_HUB_CACHE": str(tmp_path / "hf-cache")}  # fmt: skip
    small = ["data=textures", "data.num_images=3", "infer.fit_points=600", "infer.heldout_points=100",
             "infer.num_draws=4", "infer.map_draws=2", "infer.progress=false", "viz=none", "layers.pca_dim=4"]  # fmt: skip
    return subprocess.run([sys.executable, "-m", "experiments.analyze", *small, *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, layers",
    [
        (["net=timm", "net.name=efficientnet_b0", "net.weights=null", "data.size=64",
          "layers.names=[blocks.0,blocks.1,blocks.2]"], ["blocks.0", "blocks.1", "blocks.2"]),
        (["net=timm", "net.name=deit_tiny_patch16_224", "net.weights=null", "data.size=64", "+net.options.img_size=64"],
         [f"blocks.{i}" for i in (1, 3, 5, 7, 9, 11)]),
    ],
)  # fmt: skip
def test_main_job_on_timm_models(args, layers, tmp_path):
    run = tmp_path / "run"
    proc = _cli([*args, f"hydra.run.dir={run}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert list(metrics["layers"]) == layers
    assert (
        metrics["network"]["source"] == "timm"
        and metrics["network"]["preprocessing"]["interpolation"] == "bicubic"
    )
    for layer in layers:
        with np.load(run / "maps" / f"{layer}.npz") as maps:  # labels on the layer's map, per image
            assert maps["labels"].shape[0] == 3 and maps["labels"].shape[1:] == tuple(
                metrics["layers"][layer]["map_size"]
                if "map_size" in metrics["layers"][layer]
                else maps["labels"].shape[1:]
            )


@pytest.mark.slow
def test_main_job_on_a_hugging_face_folder(tmp_path):
    folder = _tiny_dinov2(tmp_path / "dino")
    run = tmp_path / "run"
    proc = _cli(["net=hf", f"net.name={folder}", "data.size=32", f"hydra.run.dir={run}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert list(metrics["layers"]) == ["blocks.0", "blocks.1", "blocks.2"]
    assert metrics["network"]["preprocessing"]["source"].startswith("hf BitImageProcessor")
    with np.load(run / "maps" / "blocks.2.npz") as maps:
        assert maps["labels"].shape == (3, 4, 4)  # the layer's patch grid, per image


@pytest.mark.slow
def test_main_job_reports_bad_net_input_in_one_line(tmp_path):
    proc = _cli(["net=timm", "net.name=convnext_tiyn", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode == 1
    assert "unknown timm model 'convnext_tiyn'" in proc.stderr and "convnext_tiny" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _cli(["net=timm", f"hydra.run.dir={tmp_path / 'run2'}"], tmp_path)
    assert proc.returncode == 1 and "net=timm needs net.name=" in proc.stderr
