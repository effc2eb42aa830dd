"""Safe checkpoints: atomic writes, ``weights_only`` loads, errors that name the file and the fix.

A checkpoint is a ``torch.save`` file holding ``{"format", "state_dict", "meta_json"}``; the metadata
travels as a JSON string so that loading never needs anything beyond tensors and plain containers.
Plain state-dict files (e.g. torchvision weights in the torch hub cache) load too, with empty
metadata. Every load uses ``torch.load(..., weights_only=True)``: a pickle that would run code is
refused with :class:`CheckpointError`.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from ..io import atomic_path

__all__ = [
    "CheckpointError",
    "atomic_write",
    "check_compatible",
    "load_checkpoint",
    "load_weights",
    "save_checkpoint",
]

FORMAT = "dpmodels-checkpoint-v1"


class CheckpointError(ValueError):
    """A checkpoint file exists but cannot be used (corrupt, unsafe, or for another architecture)."""


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp)`` on a temporary file next to ``path``, then move it onto ``path`` atomically.

    A crash or kill during ``write`` leaves any old ``path`` untouched and no partial file under its
    name (the temporary file is removed on errors).
    """
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def save_checkpoint(
    model: nn.Module | Mapping[str, Tensor], path: str | os.PathLike, meta: dict | None = None
) -> Path:
    """Save ``model``'s state dict (tensors moved to CPU) and a JSON-serialisable ``meta`` atomically."""
    state = model.state_dict() if isinstance(model, nn.Module) else dict(model)
    try:
        meta_json = json.dumps(meta or {}, sort_keys=True)
    except TypeError as err:
        raise ValueError(
            f"checkpoint metadata must be JSON-serialisable (dicts, lists, str, numbers, bool, None): {err}; "
            "convert tensors with .tolist() and paths with str()."
        ) from err
    payload = {
        "format": FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in state.items()},
        "meta_json": meta_json,
    }
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(
    path: str | os.PathLike, model: nn.Module | None = None, strict: bool = True
) -> tuple[dict[str, Tensor], dict]:
    """Read ``(state_dict, meta)`` from ``path`` with ``weights_only=True`` (tensors on CPU).

    With ``model``, the weights are checked against it (see :func:`check_compatible`) and loaded into
    it. Raises ``FileNotFoundError`` for a missing file and :class:`CheckpointError` for a truncated,
    corrupt or unsafe file; the file itself is never modified.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: check the path, or train and save one first.")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of files it then refuses
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [ln.strip() for ln in str(err).splitlines()]
        detail = next((ln for ln in lines if ln.startswith(("Unsupported", "Trying to load"))), lines[0])
        raise CheckpointError(
            f"refused to load {path}: it holds objects other than tensors and plain containers, which "
            f"could run arbitrary code when unpickled (weights_only unpickler: {detail}). Only load "
            "checkpoints from sources you trust; re-save trusted weights as a state dict with save_checkpoint."
        ) from err
    except Exception as err:  # noqa: BLE001 - zip/EOF/runtime errors all mean an unreadable file
        first = str(err).splitlines()[0] if str(err) else ""
        raise CheckpointError(
            f"cannot read checkpoint {path} ({path.stat().st_size} bytes): the file is truncated or corrupt "
            f"({type(err).__name__}: {first}). It was left untouched; delete it and save or download it again."
        ) from err
    state, meta = _unpack(obj, path)
    if model is not None:
        check_compatible(model, state, source=str(path), strict=strict)
        model.load_state_dict(state, strict=strict)
    return state, meta


def load_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> dict:
    """Load the weights at ``path`` into ``model`` (in place) and return the checkpoint's metadata."""
    return load_checkpoint(path, model=model, strict=strict)[1]


def _unpack(obj, path: Path) -> tuple[dict[str, Tensor], dict]:
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        state, meta = obj["state_dict"], json.loads(obj["meta_json"])
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        state, meta = obj["state_dict"], {}
    elif isinstance(obj, dict):
        state, meta = obj, {}
    else:
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a state dict or a dpmodels checkpoint."
        )
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: state dict entries that are not tensors: {bad[:5]}.")
    return dict(state), meta


def check_compatible(
    model: nn.Module, state: Mapping[str, Tensor], source: str = "checkpoint", strict: bool = True
) -> None:
    """Raise :class:`CheckpointError` if ``state`` does not fit ``model``'s parameters and buffers.

    The message names ``source`` and lists the first few missing keys, unexpected keys and shape
    mismatches. With ``strict=False`` only shape mismatches of shared keys are errors.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if shapes or (strict and (missing or unexpected)):
        parts = []
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", shapes),
        ):
            if items and (strict or label == "shape mismatches"):
                more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
                parts.append(f"{len(items)} {label}: {items[:5]}{more}")
        raise CheckpointError(
            f"{source} does not match the {type(model).__name__} it is loaded into: "
            + "; ".join(parts)
            + ". Build the architecture the checkpoint was saved from (see its metadata) or pick the right file."
        )
