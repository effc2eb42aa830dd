"""The transfer experiment: do a layer's DPGMM shift scores predict how well it transfers?

A source network (trained on texture family A) is cut at each layer. For every target
*condition* (another texture family, the source textures under a contrast / noise / colour shift,
digits, or a user folder) three things are measured per layer:

* DPGMM shift scores (:func:`layer_shift_table`): one DPGMM per layer fitted once on positions of
  fresh source *patches* (the images the network was trained to classify, new instances), the
  target positions extracted with the source's fitted standardisation/PCA;
* measured transfer (:func:`few_shot_transfer`, labelled targets only): on a few-shot target
  training set, redrawn per seed, the source network frozen up to ``L`` and retrained against a
  *reference*, the network trained on the target task, frozen at the same ``L`` and retrained with
  the same data and budget; ``transfer_drop = reference_accuracy - frozen_accuracy`` (definition:
  :data:`dpmodels.transfer.report.DROP_DEFINITION`), plus a linear probe and a scratch baseline;
* linear CKA (:func:`layer_cka`) between the source network and that target-trained network
  (cached with :func:`dpmodels.nets.train_or_load`).

The report (correlations, verdict, figures, summary) lives in :mod:`dpmodels.transfer.report`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from torch import nn
from tqdm.auto import tqdm

from ..activations import extract
from ..activations.layers import list_layers
from ..activations.types import LayerActivations
from ..data.digits import digits_images
from ..data.folder import image_folder
from ..data.images import ImageSet
from ..data.textures import TEXTURE_FAMILIES, Shift, texture_patches
from ..estimator import DPGMM
from ..nets import train_or_load
from ._features import check_layers
from .cka import layer_cka
from .measured import accuracy, few_shot_transfer
from .report import SCORES
from .table import fit_layers, heldout_split, layer_shift_table

__all__ = [
    "MEASURED_COLUMNS",
    "SCORES",
    "Condition",
    "check_scoreable",
    "make_conditions",
    "run_conditions",
    "save_posteriors",
]

MEASURED_COLUMNS = (
    "shots",
    "n_seeds",
    "probe_accuracy",
    "probe_accuracy_sd",
    "frozen_accuracy",
    "frozen_accuracy_sd",
    "reference_accuracy",
    "reference_accuracy_sd",
    "scratch_accuracy",
    "scratch_accuracy_sd",
    "transfer_drop",
    "transfer_drop_sd",
    "chance",
    "target_accuracy",
    "cka",
)
"""Measured columns of :func:`run_conditions`'s table (NaN for unlabelled targets): the
:func:`few_shot_transfer` means and seed SDs, the target-trained network's own test accuracy
(``target_accuracy``) and linear CKA between the source and that network."""

_SHIFT_KINDS = ("contrast", "noise", "colour", "blur")


@dataclass(frozen=True)
class Condition:
    """One target: ``score`` images (scored under the source fits) and, when labelled, a task
    ``train``/``test`` for measured transfer and the target network. ``spec`` describes the data
    (JSON) for the network cache."""

    name: str
    kind: str
    strength: float
    score: ImageSet
    train: ImageSet | None = None
    test: ImageSet | None = None
    spec: dict = field(default_factory=dict)

    @property
    def labelled(self) -> bool:
        return self.train is not None and self.test is not None


def _fit_channels(images: ImageSet, channels: int, convert: bool, what: str) -> ImageSet:
    if images.channels == channels:
        return images
    if not convert:
        raise ValueError(
            f"{what} has {images.channels} channel(s) but the source network takes {channels}; pass "
            f"convert_channels=true (scenario.convert_channels=true) to convert them explicitly "
            f"(ImageSet.with_channels({channels}): grey replicated or luminance)."
        )
    return images.with_channels(channels)


def make_conditions(
    *,
    source_family: str = "A",
    families: Sequence[str] = (),
    shifts: Mapping[str, Sequence[float]] | None = None,
    control: bool = False,
    digits: bool = False,
    folder: str | None = None,
    size: int = 32,
    channels: int = 3,
    train_per_class: int = 40,
    test_per_class: int = 20,
    convert_channels: bool = False,
    seed: int = 0,
) -> list[Condition]:
    """The target conditions of a scenario, each with its images ``(I, channels, size, size)``.

    ``families``: other texture families (whole-family classification); ``shifts``: ``{kind:
    strengths}`` with kind in contrast | noise | colour | blur (the source textures under that
    :class:`Shift`); ``control``: fresh unshifted source textures; ``digits``: textures -> digits
    (10 classes, grey replicated to ``channels`` only with ``convert_channels``); ``folder``: a user
    folder scored only (it has no image-level labels). Target train images are the scored ones.
    """
    shifts = dict(shifts or {})
    bad = sorted(set(shifts) - set(_SHIFT_KINDS)) + [f for f in families if f not in TEXTURE_FAMILIES]
    if bad:
        raise ValueError(
            f"unknown shift kind(s)/famil(ies) {bad}; shifts: {_SHIFT_KINDS}, families: "
            f"{sorted(TEXTURE_FAMILIES)}."
        )
    if train_per_class < 2 or test_per_class < 1:
        raise ValueError(
            f"need train_per_class >= 2 and test_per_class >= 1, got {train_per_class}, {test_per_class}."
        )
    base = {"size": size, "train_per_class": train_per_class, "test_per_class": test_per_class, "seed": seed}

    def textures(name: str, kind: str, strength: float, family: str, shift: Shift | None) -> Condition:
        train = texture_patches(train_per_class, size, family, shift=shift, seed=seed + 10)
        test = texture_patches(test_per_class, size, family, shift=shift, seed=seed + 11)
        train, test = (_fit_channels(s, channels, convert_channels, name) for s in (train, test))
        spec = {"generator": "texture_patches", "family": family, "shift": kind, "strength": strength, **base}
        return Condition(name, kind, strength, train, train, test, spec)

    out = [textures("control", "control", 0.0, source_family, None)] if control else []
    out += [textures(f"family={f}", "family", 0.0, f, None) for f in families]
    for kind, strengths in shifts.items():
        for s in strengths:
            out.append(textures(f"{kind}={s:g}", kind, float(s), source_family, Shift(**{kind: float(s)})))
    if digits:
        n_train, n_test = 10 * train_per_class, 10 * test_per_class
        if n_train + n_test > 1797:
            raise ValueError(
                f"digits has 1797 images, {n_train + n_test} requested; lower the per-class counts."
            )
        allset = _fit_channels(
            digits_images(n_train + n_test, size, seed=seed), channels, convert_channels, "digits"
        )
        train, test = allset.subset(slice(0, n_train)), allset.subset(slice(n_train, None))
        out.append(Condition("digits", "digits", 0.0, train, train, test, {"generator": "digits", **base}))
    if folder is not None:
        images = _fit_channels(
            image_folder(folder, size=size), channels, convert_channels, f"folder {folder}"
        )
        out.append(Condition("folder", "folder", 0.0, images, spec={"generator": "folder"}))
    if not out:
        raise ValueError(
            "the scenario defines no target condition; choose scenario=default|family_b|noise|"
            "contrast|colour|digits, or scenario=folder scenario.folder=DIR."
        )
    return out


def check_scoreable(
    model: nn.Module,
    layers: Sequence[str],
    images: ImageSet,
    what: str,
    *,
    positions_per_image: int | None,
    min_points: int,
) -> None:
    """Raise ``ValueError`` before any fitting when ``images`` ``(I, C, H, W)`` yield fewer than
    ``min_points`` positions in some layer (``I * min(positions_per_image, H_l * W_l)``)."""
    check_layers(model, list(layers))
    for info in list_layers(model, tuple(images.images.shape[1:]), layers=list(layers)):
        per_image = info.shape[1] * info.shape[2]
        per_image = per_image if positions_per_image is None else min(positions_per_image, per_image)
        if len(images) * per_image < min_points:
            raise ValueError(
                f"{what}: {len(images)} image(s) give {len(images) * per_image} positions in layer "
                f"{info.name!r} ({per_image} per image), too few to score: at least {min_points} are needed "
                f"(>= {math.ceil(min_points / per_image)} images); pass more images (transfer experiment: "
                f"task.train_per_class, source.score_per_class) or lower min_points."
            )


def _target_network(
    model: nn.Module, cond: Condition, train_kwargs: dict, seed: int, cache_dir, device, progress: bool
) -> nn.Module:
    classes = int(max(int(cond.train.targets.max()), int(cond.test.targets.max())) + 1)
    arch = {k: v for k, v in getattr(model, "config", {}).items() if k in ("in_channels", "widths")}
    net = {"name": "small_cnn", **arch, "num_classes": classes}
    spec = {**cond.spec, "role": "target-task network", "val": None}
    target, _ = train_or_load(
        net,
        spec,
        lambda: (cond.train, None),
        train_kwargs,
        seed=seed,
        cache_dir=cache_dir,
        device=device,
        progress=progress,
    )
    return target


def save_posteriors(
    out_dir: str | Path,
    source: Mapping[str, LayerActivations],
    fits: Mapping[str, DPGMM],
    heldout_fraction: float,
    seed: int = 0,
    num_draws: int = 100,
) -> list[Path]:
    """Each layer's source DPGMM posterior as ArviZ ``InferenceData`` in ``out_dir/<layer>.nc``
    (``log_likelihood`` on the ``(N_fit, D)`` points it was fitted on: those :func:`heldout_split`
    keeps). Returns the paths."""
    from ..diagnostics import save_inference_data, to_inference_data  # ArviZ only when needed

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fit in fits.items():
        fit_rows, _ = heldout_split(source[name], heldout_fraction, seed)
        idata = to_inference_data(fit, source[name].tensor()[fit_rows], num_draws=num_draws, seed=seed)
        paths.append(save_inference_data(idata, out_dir / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.nc"))
    return paths


def run_conditions(
    model: nn.Module,
    source: ImageSet,
    conditions: Sequence[Condition],
    layers: Sequence[str],
    *,
    extraction: Mapping | None = None,
    dpgmm: Mapping | None = None,
    scoring: Mapping | None = None,
    finetune: Mapping | None = None,
    target_training: Mapping | None = None,
    seed: int = 0,
    cache_dir: str | None = None,
    device: str = "cpu",
    posterior_dir: str | Path | None = None,
    posterior_draws: int = 100,
    progress: bool = True,
) -> pd.DataFrame:
    """One row per (condition, layer): shift scores and the :data:`MEASURED_COLUMNS` (NaN where the
    target has no labels). ``extraction``: ``positions_per_image``, ``standardize``, ``pca_dim``;
    ``dpgmm``: :class:`DPGMM` settings; ``scoring``: ``heldout_fraction``, ``min_points``,
    ``novelty_quantile``; ``finetune``: ``shots`` (labelled target images per class, default 10),
    ``seeds`` (how many few-shot draws, seeds ``seed, seed + 1, ...``; default 3), ``epochs``,
    ``batch_size``, ``lr``, ``probe`` (see :func:`few_shot_transfer`); ``target_training``:
    :func:`train_classifier` settings of the target-trained (reference and CKA) network, trained
    on the condition's whole ``train`` pool. The layer DPGMMs are fitted once on ``source`` (minus
    held-out images) and reused for every condition; with ``posterior_dir`` they are saved there
    (:func:`save_posteriors`, ``posterior_draws`` draws). ``exclusive_source`` /
    ``exclusive_target`` are counts of exclusive clusters."""
    extraction, scoring, budget = dict(extraction or {}), dict(scoring or {}), dict(finetune or {})
    held, min_points = scoring.get("heldout_fraction", 0.25), scoring.get("min_points", 50)
    ppi = extraction.get("positions_per_image")
    if not 0.0 < held < 1.0:
        raise ValueError(f"heldout_fraction must lie in (0, 1), got {held!r}; try 0.25.")
    n_seeds, shots = budget.pop("seeds", 3), budget.pop("shots", 10)
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, int) or n_seeds < 1:
        raise ValueError(f"finetune seeds must be an integer >= 1 (few-shot draws), got {n_seeds!r}; try 3.")
    need = max(min_points, math.ceil(1 / scoring.get("novelty_quantile", 0.01)))
    check_scoreable(
        model, layers, source, "source", positions_per_image=ppi, min_points=math.ceil(need / held)
    )
    for cond in conditions:
        check_scoreable(
            model, layers, cond.score, f"target {cond.name!r}", positions_per_image=ppi, min_points=min_points
        )
    kw = dict(seed=seed, device=device, progress=False)
    src = extract(model, source, list(layers), **extraction, **kw)
    # the target goes through the source's fitted standardisation/PCA (None: raw channels for both)
    transforms = {name: acts.transform for name, acts in src.items()}
    transforms = None if any(t is None for t in transforms.values()) else transforms
    fits = fit_layers(src, held, seed, progress, **{"device": device, **dict(dpgmm or {})})
    if posterior_dir is not None:
        save_posteriors(posterior_dir, src, fits, held, seed, posterior_draws)
    frames = []
    for cond in tqdm(conditions, desc="conditions", disable=not progress):
        tgt = extract(model, cond.score, list(layers), transforms=transforms, positions_per_image=ppi, **kw)
        table = layer_shift_table(src, tgt, fits, held, seed, **_scoring_kw(scoring))
        table.insert(0, "condition", cond.name)
        table.insert(1, "kind", cond.kind)
        table.insert(2, "strength", cond.strength)
        table.insert(4, "depth", range(1, len(table) + 1))
        if cond.labelled:
            target = _target_network(model, cond, dict(target_training or {}), seed, cache_dir, device, False)
            measured = few_shot_transfer(
                model,
                layers,
                cond.train,
                cond.test,
                reference=target,
                shots=shots,
                seeds=[seed + s for s in range(n_seeds)],
                device=device,
                **budget,
            )
            cka = layer_cka(model, target, cond.test, list(layers), seed=seed, device=device)
            table = table.merge(measured, on="layer")
            table["target_accuracy"] = accuracy(target, cond.test, device=device)
            table["cka"] = [cka[name] for name in table.layer]
        table = table.reindex(
            columns=[*table.columns.drop(list(MEASURED_COLUMNS), errors="ignore"), *MEASURED_COLUMNS]
        )
        frames.append(
            table.drop(columns=["exclusive_source", "exclusive_target"]).assign(
                exclusive_source=[len(v) for v in table.exclusive_source],
                exclusive_target=[len(v) for v in table.exclusive_target],
            )
        )
    return pd.concat(frames, ignore_index=True)


def _scoring_kw(scoring: Mapping) -> dict:
    """The :func:`layer_shift_table` keyword arguments among ``scoring``."""
    return {k: scoring[k] for k in ("novelty_quantile", "min_points", "usage_threshold") if k in scoring}
