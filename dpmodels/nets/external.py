"""Vision models of other libraries by name: timm's zoo, Hugging Face vision encoders and open_clip's
image towers, each wrapped so that its stages are named spatial layers with the library's own
preprocessing.

The wrappers (:class:`TimmNet`, :class:`HFVisionNet`, :class:`OpenCLIPNet`) read layers with the
library's own intermediate-feature API instead of FX tracing, which most of these models do not
survive: timm's ``forward_intermediates`` with the stages of ``feature_info`` (a ViT's blocks, patch
tokens laid out on the grid with class/register tokens dropped), Hugging Face's
``output_hidden_states`` (one map per block, prefix tokens dropped) and open_clip's
``forward_intermediates``. Every wrapper offers the layer protocol of
:mod:`dpmodels.activations` (``tap_names()``, ``forward_layers(x, names)``, ``layer_type(name)``,
``default_layers``), so ``list_layers``, ``format_layers`` and ``extract`` work on them unchanged.
A transformer block's output sees the whole image: its geometry is the patch stride with a
receptive field of the whole input.

Nothing is downloaded unless ``download=True``: ``weights="DEFAULT"`` (timm) or a pretrained tag
(open_clip) is read from the local Hugging Face cache; Hugging Face names are hub ids in that cache
or local folders (``save_pretrained``). The libraries are optional: ``pip install -e ".[zoo]"``.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor, nn

from .checkpoint import CheckpointError, check_compatible, load_checkpoint
from .preprocessing import Preprocessing

__all__ = [
    "SOURCES",
    "HFVisionNet",
    "LayerModel",
    "OpenCLIPNet",
    "TimmNet",
    "build_external",
    "load_state_file",
]

log = logging.getLogger(__name__)

SOURCES = ("timm", "hf", "open_clip")
_PACKAGES = {"timm": "timm", "hf": "transformers", "open_clip": "open_clip"}


def _require(source: str):
    """Import the library behind ``source`` or say which command installs it."""
    try:
        return __import__(_PACKAGES[source])
    except ImportError as err:
        raise ImportError(
            f"net source {source!r} needs the {_PACKAGES[source]} package, which is not installed; install the "
            'optional models with pip install -e ".[zoo]" (timm, transformers, open_clip_torch, safetensors).'
        ) from err


def _closest(name: str, names: Sequence[str], what: str) -> ValueError:
    close = difflib.get_close_matches(name, list(names), n=5, cutoff=0.5)
    hint = f" Closest: {', '.join(close)}." if close else ""
    return ValueError(f"unknown {what} {name!r}.{hint}")


def load_state_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """A state dict from ``path``: a ``.safetensors`` file, or a ``torch.save`` file (plain state dict
    or dpmodels checkpoint) read with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}: check the path (net.weights=FILE).")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"cannot read safetensors file {path}: {err}.") from err
    return load_checkpoint(path)[0]


def _load_into(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    check_compatible(model, state, source=source)
    model.load_state_dict(state)


class LayerModel(nn.Module):
    """A wrapped model ``self.model`` whose layers come from its library's intermediate-feature API.

    Subclasses set ``self._layers`` (``{name: module type}`` in execution order), ``default_layers``
    and ``preprocessing``, and implement :meth:`forward_layers`. ``forward(x)`` is the model's own."""

    def __init__(self, model: nn.Module, description: str):
        super().__init__()
        self.model = model
        self.description = description
        self._layers: dict[str, str] = {}
        self.default_layers: list[str] = []
        self.preprocessing: Preprocessing | None = None
        # layers whose receptive field is the whole image (global attention): geometry skips the
        # enlarged probes for them (stride = patch size, field = the input)
        self.whole_image_layers: frozenset[str] = frozenset()
        # whether forward(x) returns class logits (b, classes); None: not known from the model
        self.has_classifier: bool | None = None

    def tap_names(self) -> list[str]:
        """The layer names, shallow to deep."""
        return list(self._layers)

    def layer_type(self, name: str) -> str:
        """What produces layer ``name`` (the block's class name)."""
        return self._layers.get(name, "")

    def forward_layers(self, x: Tensor, names: Sequence[str]) -> dict[str, Tensor]:
        """``x``: ``(b, C, H, W)`` -> ``{name: (b, C_l, H_l, W_l)}`` for ``names``."""
        raise NotImplementedError

    def forward(self, x: Tensor):
        return self.model(x)

    def _check(self, names: Sequence[str]) -> list[int]:
        own = self.tap_names()
        unknown = [n for n in names if n not in own]
        if unknown:
            from ..activations import check_layer_names

            check_layer_names(list(names), own)
        return [own.index(n) for n in names]


def _evenly(names: Sequence[str], k: int = 6) -> list[str]:
    """Up to ``k`` evenly spaced names, the last included (a transformer's default blocks)."""
    n = len(names)
    if n <= k:
        return list(names)
    step = n / k
    return [names[n - 1 - int(i * step)] for i in reversed(range(k))]


# ---------------------------------------------------------------------------------------------- timm


class TimmNet(LayerModel):
    """A timm model; layers are the modules of its ``feature_info`` (``"layer2"``, ``"stages.1"``,
    ``"blocks.7"``), read with ``forward_intermediates`` as ``(b, C, H_l, W_l)`` maps."""

    def __init__(self, model: nn.Module, name: str):
        super().__init__(model, f"timm {name}")
        if not hasattr(model, "forward_intermediates"):
            raise ValueError(
                f"timm model {name!r} ({type(model).__name__}) has no forward_intermediates, so its stages "
                "cannot be read; pick another timm architecture (most families have it)."
            )
        info = model.feature_info
        entries = info.get_dicts() if hasattr(info, "get_dicts") else list(info)
        modules = [e["module"] for e in entries]
        self._layers = {m: type(model.get_submodule(m)).__name__ if m else "" for m in modules}
        reductions = [e.get("reduction") for e in entries]
        transformer = len(set(reductions)) == 1 and len(modules) > 5
        self.default_layers = _evenly(modules) if transformer else list(modules)
        if transformer:
            self.whole_image_layers = frozenset(modules)
        self.preprocessing = timm_preprocessing(model, name)
        self.has_classifier = int(getattr(model, "num_classes", 0) or 0) > 0

    def forward_layers(self, x: Tensor, names: Sequence[str]) -> dict[str, Tensor]:
        indices = self._check(names)
        order = sorted(set(indices))
        outs = self.model.forward_intermediates(x, indices=order, intermediates_only=True, output_fmt="NCHW")
        by_index = dict(zip(order, outs, strict=True))
        return {n: by_index[i] for n, i in zip(names, indices, strict=True)}


def timm_preprocessing(model: nn.Module, name: str) -> Preprocessing:
    """The input convention of timm model ``model`` from its pretrained config (``resolve_data_config``)."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    return Preprocessing(
        cfg["mean"],
        cfg["std"],
        int(cfg["input_size"][-1]),
        "RGB",
        f"timm {name} pretrained config",
        interpolation=str(cfg.get("interpolation")),
        crop_pct=float(cfg["crop_pct"]) if cfg.get("crop_pct") is not None else None,
    )


def _hf_cached(repo: str, filenames: Sequence[str]) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        path = try_to_load_from_cache(repo, filename)
        if isinstance(path, str) and Path(path).is_file():
            return path
    return None


def _hf_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def build_timm(
    name: str, *, weights=None, download: bool = False, in_channels: int = 3, num_classes=None, **kwargs
) -> TimmNet:
    """A :class:`TimmNet` of ``timm.create_model(name, **kwargs)``; ``weights``: ``None`` (random),
    ``"DEFAULT"`` (the pretrained weights of ``name``'s default tag, from the Hugging Face cache, or
    fetched with ``download=True``) or a state-dict / safetensors file."""
    timm = _require("timm")
    arch = name.split(".")[0]
    if not timm.is_model(arch):
        raise _closest(name, timm.list_models(), "timm model")
    extra = dict(kwargs, in_chans=in_channels)
    if num_classes is not None:
        extra["num_classes"] = num_classes
    if weights is None or _is_file(weights):
        model = timm.create_model(name, pretrained=False, **extra)
        if weights is not None:
            _load_into(model, load_state_file(weights), str(weights))
    elif str(weights) == "DEFAULT":
        cfg = timm.create_model(name, pretrained=False, **extra).pretrained_cfg
        repo = cfg.get("hf_hub_id")
        path = _hf_cached(repo, ("model.safetensors", "pytorch_model.bin")) if repo else None
        if path is not None:
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": path}, **extra)
        elif download:
            try:
                model = timm.create_model(name, pretrained=True, **extra)
            except Exception as err:  # noqa: BLE001 - no network, a proxy: one message
                raise FileNotFoundError(
                    f"downloading the pretrained weights of timm {name} failed ({type(err).__name__}: "
                    f"{str(err).splitlines()[0] if str(err) else ''}); pass net.weights=FILE or null."
                ) from err
        else:
            raise FileNotFoundError(
                f"the pretrained weights of timm {name} ({repo or cfg.get('url')}) are not in the Hugging Face "
                f"cache {_hf_cache_dir()}; allow the download (net.download=true), or pass net.weights=FILE "
                "(a state dict or safetensors file) or net.weights=null for random weights."
            )
    else:
        raise ValueError(
            f"net.weights={weights!r} for timm {name}: expected null (random), DEFAULT (pretrained, from the "
            "Hugging Face cache) or an existing state-dict / safetensors file."
        )
    return TimmNet(model.eval(), name)


def _is_file(weights) -> bool:
    return isinstance(weights, os.PathLike) or (
        isinstance(weights, str)
        and (Path(weights).is_file() or weights.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt")))
    )


# --------------------------------------------------------------------------------------- Hugging Face


class HFVisionNet(LayerModel):
    """A Hugging Face vision encoder (DINOv2, ViT, CLIP/SigLIP vision towers): layers ``"embeddings"``
    and ``"blocks.<i>"`` (the hidden state after block ``i``), patch tokens on the grid with the
    class/register tokens dropped."""

    def __init__(self, model: nn.Module, name: str, preprocessing: Preprocessing | None):
        super().__init__(model, f"hf {name}")
        config = model.config
        self.patch = _pair(config.patch_size)
        blocks = int(config.num_hidden_layers)
        lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == blocks]
        block = type(lists[0][0]).__name__ if lists and blocks else "block"
        emb = getattr(model, "embeddings", None) or getattr(
            getattr(model, "vision_model", None), "embeddings", None
        )
        embeddings = type(emb).__name__ if emb is not None else "embeddings"
        self._layers = {"embeddings": embeddings, **{f"blocks.{i}": block for i in range(blocks)}}
        self.default_layers = _evenly([f"blocks.{i}" for i in range(blocks)])
        self.whole_image_layers = frozenset(n for n in self._layers if n != "embeddings")
        self.preprocessing = preprocessing
        self.has_classifier = False  # forward returns the last hidden state (b, T, C)
        self._interpolate = "interpolate_pos_encoding" in inspect.signature(model.forward).parameters

    def _run(self, x: Tensor, hidden_states: bool):
        kwargs = {"interpolate_pos_encoding": True} if self._interpolate else {}
        return self.model(pixel_values=x, output_hidden_states=hidden_states, **kwargs)

    def forward(self, x: Tensor):
        return self._run(x, False).last_hidden_state

    def forward_layers(self, x: Tensor, names: Sequence[str]) -> dict[str, Tensor]:
        indices = self._check(names)
        states = self._run(x, True).hidden_states  # (num_blocks + 1) x (b, T, C)
        grid = (x.shape[-2] // self.patch[0], x.shape[-1] // self.patch[1])
        out = {}
        for n, i in zip(names, indices, strict=True):
            h = states[i]
            b, T, C = h.shape
            prefix = T - grid[0] * grid[1]
            if prefix < 0:
                raise ValueError(f"{self.description}: {T} tokens do not cover the {grid} patch grid.")
            out[n] = h[:, prefix:].transpose(1, 2).reshape(b, C, *grid)  # (b, C, H_l, W_l)
        return out


def _pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (list, tuple)) else (int(v), int(v))


def hf_preprocessing(name: str, local_only: bool) -> Preprocessing | None:
    """The image processor's convention of ``name`` (mean, std, size, resampling), or ``None`` when it
    has no ``preprocessor_config.json``."""
    from transformers import AutoImageProcessor

    try:
        proc = AutoImageProcessor.from_pretrained(name, local_files_only=local_only)
    except (OSError, ValueError) as err:
        log.warning(
            "%s has no image processor (%s); images are used in [0, 1] without normalisation.",
            name,
            str(err).splitlines()[0] if str(err) else type(err).__name__,
        )
        return None
    cfg = proc.to_dict()
    size = cfg.get("crop_size") or cfg.get("size") or {}
    side = size.get("height") or size.get("shortest_edge") if isinstance(size, dict) else size
    mean, std = cfg.get("image_mean"), cfg.get("image_std")
    if not cfg.get("do_normalize", True) or mean is None:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    resample = cfg.get("resample")
    interpolation = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}.get(resample, resample)
    return Preprocessing(
        mean, std, int(side) if side else None, "RGB", f"hf {type(proc).__name__} of {name}",
        interpolation=None if interpolation is None else str(interpolation),
    )  # fmt: skip


def build_hf(
    name: str, *, weights="DEFAULT", download: bool = False, in_channels: int = 3, **kwargs
) -> HFVisionNet:
    """An :class:`HFVisionNet` of hub id or folder ``name``: ``weights="DEFAULT"`` its weights,
    ``None`` its config with random weights, a file: a state dict of that encoder. ``kwargs`` go to
    the model's config (e.g. ``num_hidden_layers=4``)."""
    _require("hf")
    from transformers import AutoConfig, AutoModel

    local_only = not download
    folder = Path(name).is_dir()
    try:
        config = AutoConfig.from_pretrained(name, local_files_only=local_only, **kwargs)
    except (OSError, ValueError) as err:
        where = (
            "the folder has no config.json"
            if folder
            else f"not a folder and not in the Hugging Face cache {_hf_cache_dir()}"
        )
        raise ValueError(
            f"Hugging Face model {name!r}: {where} ({str(err).splitlines()[0]}); pass a hub id already in the "
            "cache, a folder written by save_pretrained, or add net.download=true."
        ) from err
    vision = getattr(config, "vision_config", None) or config  # CLIP/SigLIP: the image tower only
    model_class = (
        AutoModel._model_mapping.get(type(vision), None) if hasattr(AutoModel, "_model_mapping") else None
    )
    if model_class is None or not hasattr(vision, "patch_size"):
        raise ValueError(
            f"Hugging Face model {name!r} ({type(config).__name__}) is not a patch-based vision encoder; "
            "net=hf takes DINOv2, ViT, CLIP/SigLIP (vision) and similar models."
        )
    if in_channels != getattr(vision, "num_channels", 3):
        vision.num_channels = in_channels
    if weights is None or _is_file(weights):
        model = model_class(vision)
        if weights is not None:
            _load_into(model, load_state_file(weights), str(weights))
    elif str(weights) == "DEFAULT":
        try:
            model = model_class.from_pretrained(name, config=vision, local_files_only=local_only)
        except OSError as err:
            raise FileNotFoundError(
                f"the weights of Hugging Face model {name!r} are not on disk ({str(err).splitlines()[0]}); "
                "add net.download=true, or net.weights=null for random weights."
            ) from err
    else:
        raise ValueError(
            f"net.weights={weights!r} for net=hf: expected DEFAULT (the model's weights), null (random, from its "
            "config) or an existing state-dict / safetensors file."
        )
    return HFVisionNet(model.eval(), name, hf_preprocessing(name, local_only))


# ----------------------------------------------------------------------------------------- open_clip


class OpenCLIPNet(LayerModel):
    """open_clip's image tower: a ViT's blocks ``"blocks.<i>"`` or a modified ResNet's ``"stem"``,
    ``"layer1"`` ... ``"layer4"``, read with its ``forward_intermediates``."""

    def __init__(self, visual: nn.Module, name: str, preprocessing: Preprocessing | None):
        super().__init__(visual, f"open_clip {name}")
        if not hasattr(visual, "forward_intermediates"):
            raise ValueError(
                f"open_clip {name}'s image tower ({type(visual).__name__}) has no forward_intermediates; "
                "pick a ViT or ResNet architecture."
            )
        if hasattr(visual, "transformer"):
            blocks = len(visual.transformer.resblocks)
            self._layers = {f"blocks.{i}": "ResidualAttentionBlock" for i in range(blocks)}
            self.default_layers = _evenly(list(self._layers))
            self.whole_image_layers = frozenset(self._layers)
        elif hasattr(visual, "layer4"):
            self._layers = {
                n: "Bottleneck" if n != "stem" else "Stem"
                for n in ("stem", "layer1", "layer2", "layer3", "layer4")
            }
            self.default_layers = list(self._layers)
        elif hasattr(visual, "trunk"):  # a timm trunk
            raise ValueError(f"open_clip {name} wraps a timm model; use net=timm with that architecture.")
        self.preprocessing = preprocessing
        self.has_classifier = False  # forward returns the image embedding, not class logits

    def forward_layers(self, x: Tensor, names: Sequence[str]) -> dict[str, Tensor]:
        indices = self._check(names)
        order = sorted(set(indices))
        outs = self.model.forward_intermediates(x, indices=order, intermediates_only=True)[
            "image_intermediates"
        ]
        by_index = dict(zip(order, outs, strict=True))
        return {n: by_index[i] for n, i in zip(names, indices, strict=True)}


def build_open_clip(
    name: str, *, weights=None, download: bool = False, in_channels: int = 3, **kwargs
) -> OpenCLIPNet:
    """An :class:`OpenCLIPNet` of architecture ``name`` (``open_clip.list_models()``); ``weights``:
    ``None`` (random), a pretrained tag (``open_clip.list_pretrained_tags_by_model(name)``) from the
    Hugging Face cache (or fetched with ``download=True``), or a file (the full CLIP state dict or the
    image tower's)."""
    open_clip = _require("open_clip")
    if name not in open_clip.list_models():
        raise _closest(name, open_clip.list_models(), "open_clip architecture")
    model = open_clip.create_model(name, pretrained=None, **kwargs)
    if weights is not None:
        if _is_file(weights):
            path = weights
        else:
            tags = open_clip.list_pretrained_tags_by_model(name)
            if weights not in tags:
                raise _closest(str(weights), tags, f"open_clip pretrained tag of {name} (or file)")
            path = _open_clip_file(open_clip, name, weights, download)
        state = load_state_file(path)
        state = state.get("state_dict", state) if isinstance(state.get("state_dict"), dict) else state
        if any(k.startswith("visual.") for k in state):
            check_compatible(model, state, source=str(path), strict=False)
            missing = [k for k in model.visual.state_dict() if f"visual.{k}" not in state]
            if missing:
                raise CheckpointError(f"{path} lacks image-tower weights: {missing[:5]}.")
            model.visual.load_state_dict({k[7:]: v for k, v in state.items() if k.startswith("visual.")})
        else:
            _load_into(model.visual, state, str(path))
    if in_channels != 3:
        from .zoo import adapt_input_channels

        adapt_input_channels(model.visual, in_channels)
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg.get("size")
    pre = Preprocessing(
        cfg["mean"], cfg["std"], int(size[0] if isinstance(size, (list, tuple)) else size) if size else None,
        "RGB", f"open_clip {name}", interpolation=cfg.get("interpolation"),
    )  # fmt: skip
    return OpenCLIPNet(model.visual.eval(), name, pre)


def _open_clip_file(open_clip, name: str, tag: str, download: bool) -> str:
    cfg = open_clip.get_pretrained_cfg(name, tag)
    repo = (cfg.get("hf_hub") or "").rstrip("/")
    path = None
    if repo:
        files = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
        path = _hf_cached(repo, files)
        if path is None and download:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(repo, files[0])
    elif download:
        path = open_clip.download_pretrained(cfg)
    if not path:
        raise FileNotFoundError(
            f"open_clip {name} weights {tag!r} ({repo or cfg.get('url')}) are not in the Hugging Face cache "
            f"{_hf_cache_dir()}; allow the download (net.download=true) or pass net.weights=FILE."
        )
    return path


def build_external(source: str, name: str, **kwargs) -> LayerModel:
    """``build_timm`` / ``build_hf`` / ``build_open_clip`` by ``source`` (``"timm"``, ``"hf"``, ``"open_clip"``)."""
    builders = {"timm": build_timm, "hf": build_hf, "open_clip": build_open_clip}
    if source not in builders:
        raise ValueError(f"unknown net source {source!r}; expected one of {', '.join(SOURCES)} (or builtin).")
    return builders[source](name, **kwargs)
