"""Measured transfer: how well do a source-trained network's layers serve a target task?

* :func:`linear_probe_accuracy`: logistic regression (standardised features, fixed ``C``) on a
  frozen layer's globally average-pooled features ``(I, C_l)``.
* :func:`finetune_accuracy`: a copy of the network with everything up to and including a layer
  frozen (see :mod:`dpmodels.transfer.freezing`), the rest re-initialised and trained on the
  target with a small fixed budget (Adam, ``epochs`` passes).
* :func:`scratch_accuracy`: the same architecture, all re-initialised, same budget.
* :func:`transfer_sweep`: all three per layer, and **transfer_drop = scratch_accuracy -
  frozen_accuracy**: what freezing the source layers up to ``L`` costs (or, when negative, gains)
  compared with learning the whole network on the target under the same budget and seed.
* :func:`few_shot_transfer`: the experiment's protocol: few-shot target sets drawn per seed
  (:func:`few_shot_subset`), the source network and a target-trained *reference* each frozen at the
  same layer and retrained alike; ``transfer_drop = reference - frozen`` (mean and SD over seeds).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..data.images import ImageSet
from ._features import check_layers, layer_features
from .freezing import prepare_transfer_copy, set_train_mode

__all__ = [
    "accuracy",
    "finetune",
    "few_shot_subset",
    "few_shot_transfer",
    "finetune_accuracy",
    "linear_probe_accuracy",
    "scratch_accuracy",
    "transfer_sweep",
]


def _labelled(images: ImageSet, name: str) -> torch.Tensor:
    if not isinstance(images, ImageSet):
        raise ValueError(f"{name} must be an ImageSet with targets, got {type(images).__name__}.")
    if images.targets is None:
        raise ValueError(f"{name} ({images.name!r}) has no targets; measured transfer needs class labels.")
    return images.targets


def _checked(images: ImageSet, name: str) -> ImageSet:
    _labelled(images, name)
    return images


def _num_classes(*sets: ImageSet) -> int:
    top = max(int(s.targets.max()) for s in sets) + 1
    names = max(len(s.class_names or []) for s in sets)
    return max(top, names)


def accuracy(model: nn.Module, images: ImageSet, batch_size: int = 256, device="cpu") -> float:
    """Share of ``images`` whose argmax logit equals the target (model in eval mode, no gradients)."""
    y = _labelled(images, "images")
    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            logits = model(images.images[i : i + batch_size].to(device))  # (n, classes)
            correct += int((logits.argmax(1).cpu() == y[i : i + batch_size]).sum())
    model.train(was_training)
    return correct / len(images)


def linear_probe_accuracy(
    model: nn.Module,
    layer: str,
    train: ImageSet,
    test: ImageSet,
    *,
    C: float = 1.0,
    max_iter: int = 5000,
    batch_size: int = 256,
    device="cpu",
    progress: bool = False,
) -> float:
    """Test accuracy of a logistic regression (``C`` fixed, features standardised on ``train``) on
    the frozen ``layer``'s global-average-pooled features ``(I, C_l)``."""
    y_train, y_test = _labelled(train, "train"), _labelled(test, "test")
    if len(torch.unique(y_train)) < 2:
        raise ValueError("train has a single class; a linear probe needs at least two.")
    check_layers(model, [layer])
    kw = dict(reduce="pool", batch_size=batch_size, device=device, progress=progress)
    f_train = layer_features(model, train, [layer], **kw)[layer].double().numpy()  # (I, C_l)
    f_test = layer_features(model, test, [layer], **kw)[layer].double().numpy()
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    probe.fit(f_train, y_train.numpy())
    return float(np.mean(probe.predict(f_test) == y_test.numpy()))


def finetune(
    model: nn.Module,
    freeze_upto: str | None,
    train: ImageSet,
    *,
    num_classes: int | None = None,
    epochs: int = 3,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    device="cpu",
    progress: bool = False,
) -> nn.Module:
    """Train a copy of ``model`` on ``train`` with parameters up to and including ``freeze_upto``
    frozen and the rest re-initialised (``None``: train from scratch). Adam, ``epochs`` passes of
    shuffled minibatches, cross-entropy; seeded and deterministic on CPU. Returns the trained copy
    in eval mode; the caller's ``model`` is unchanged."""
    y = _labelled(train, "train")
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(f"need epochs >= 1, batch_size >= 1 and lr > 0; got {epochs}, {batch_size}, {lr}.")
    classes = num_classes if num_classes is not None else _num_classes(train)
    net, frozen_modules = prepare_transfer_copy(model, freeze_upto, classes, seed)
    net = net.to(device)
    params = [p for p in net.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(params, lr=lr)
    order_rng = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # dropout masks
        for _ in tqdm(range(epochs), desc=f"finetune after {freeze_upto}", disable=not progress, leave=False):
            set_train_mode(net, frozen_modules)
            perm = torch.randperm(len(train), generator=order_rng)  # (I,)
            for i in range(0, len(train), batch_size):
                idx = perm[i : i + batch_size]
                logits = net(train.images[idx].to(device))  # (n, classes)
                loss = F.cross_entropy(logits, y[idx].to(device))
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
    return net.eval()


def finetune_accuracy(
    model: nn.Module, freeze_upto: str | None, train: ImageSet, test: ImageSet, **kwargs
) -> float:
    """Test accuracy of :func:`finetune` (same keyword arguments) after training on ``train``."""
    _labelled(test, "test")
    kwargs.setdefault("num_classes", _num_classes(_checked(train, "train"), test))
    net = finetune(model, freeze_upto, train, **kwargs)
    return accuracy(net, test, device=kwargs.get("device", "cpu"))


def scratch_accuracy(model: nn.Module, train: ImageSet, test: ImageSet, **kwargs) -> float:
    """Test accuracy of ``model``'s architecture re-initialised and trained on ``train`` alone with
    the same budget as :func:`finetune_accuracy` (the baseline of ``transfer_drop``)."""
    return finetune_accuracy(model, None, train, test, **kwargs)


def transfer_sweep(
    model: nn.Module,
    layers: Sequence[str],
    train: ImageSet,
    test: ImageSet,
    *,
    probe: bool = True,
    scratch: bool = True,
    C: float = 1.0,
    progress: bool = False,
    **finetune_kwargs,
) -> pd.DataFrame:
    """Per-layer measured transfer of a source-trained ``model`` to the target ``train``/``test``.

    One row per layer (given order) with ``probe_accuracy`` (NaN when ``probe=False``),
    ``frozen_accuracy`` (:func:`finetune_accuracy` frozen up to the layer), ``scratch_accuracy``
    (one baseline shared by all rows), ``transfer_drop = scratch_accuracy - frozen_accuracy`` and
    ``chance`` (1 / number of classes); ``scratch=False`` skips the baseline (its columns NaN).
    ``finetune_kwargs`` (epochs, batch_size, lr, seed, device)
    are shared by every training run.
    """
    check_layers(model, list(layers))
    finetune_kwargs.setdefault("num_classes", _num_classes(_checked(train, "train"), _checked(test, "test")))
    device = finetune_kwargs.get("device", "cpu")
    scratch = scratch_accuracy(model, train, test, **finetune_kwargs) if scratch else float("nan")
    rows = []
    for layer in tqdm(list(layers), desc="transfer sweep", disable=not progress):
        frozen = finetune_accuracy(model, layer, train, test, **finetune_kwargs)
        probe_acc = (
            linear_probe_accuracy(model, layer, train, test, C=C, device=device) if probe else float("nan")
        )
        rows.append(
            {
                "layer": layer,
                "probe_accuracy": probe_acc,
                "frozen_accuracy": frozen,
                "scratch_accuracy": scratch,
                "transfer_drop": scratch - frozen,
                "chance": 1.0 / finetune_kwargs["num_classes"],
            }
        )
    return pd.DataFrame(rows)


def few_shot_subset(images: ImageSet, shots: int, seed: int = 0) -> ImageSet:
    """``shots`` images per class of ``images`` ``(I, C, H, W)``, drawn without replacement with
    ``seed`` (kept in their original order)."""
    y = _labelled(images, "images")
    counts = torch.bincount(y)
    present = counts[counts > 0]
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1 or int(present.min()) < shots:
        raise ValueError(
            f"shots must be an integer in [1, {int(present.min())}] (the smallest class has "
            f"{int(present.min())} images), got {shots!r}; lower shots or pass more images per class."
        )
    gen = torch.Generator().manual_seed(seed)
    keep = [
        idx[torch.randperm(len(idx), generator=gen)[:shots]]
        for idx in (torch.nonzero(y == c).flatten() for c in torch.nonzero(counts).flatten())
    ]
    return images.subset(torch.sort(torch.cat(keep)).values)  # (classes * shots,)


def few_shot_transfer(
    model: nn.Module,
    layers: Sequence[str],
    pool: ImageSet,
    test: ImageSet,
    *,
    reference: nn.Module,
    shots: int,
    seeds: Sequence[int] = (0, 1, 2),
    probe: bool = True,
    C: float = 1.0,
    progress: bool = False,
    **finetune_kwargs,
) -> pd.DataFrame:
    """Per-layer transfer of ``model`` to a few-shot target task, against a matched reference.

    For every seed ``s``: ``shots`` labelled images per class are drawn from ``pool``
    (:func:`few_shot_subset`), and with the same training budget (``finetune_kwargs``: epochs,
    batch_size, lr, device; seed ``s``) :func:`transfer_sweep` measures ``model`` (source features)
    and ``reference`` (the same architecture trained on the target task) frozen up to each layer.
    One row per layer with the mean over seeds and its SD (``*_sd``, ``ddof=1``; 0 for one seed) of

    * ``frozen_accuracy``: ``model`` frozen up to ``L``, the rest re-initialised and retrained;
    * ``reference_accuracy``: ``reference`` frozen up to ``L``, same retraining (Yosinski et al.
      2014's "BnB" against the source network's "AnB");
    * ``probe_accuracy``: logistic regression on ``model``'s pooled layer ``L`` (NaN without probe);
    * ``scratch_accuracy``: the whole architecture trained on the few shots (shared by all layers);
    * ``transfer_drop = reference_accuracy - frozen_accuracy`` (mean of the per-seed differences):
      what using source instead of target features up to ``L`` costs when everything else (data,
      budget, seed, depth of the cut) is the same; it is near 0 when the layer transfers.

    plus ``shots``, ``n_seeds`` and ``chance``.
    """
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds is empty; pass at least one seed, e.g. (0, 1, 2).")
    finetune_kwargs.pop("seed", None)
    runs = []
    for s in tqdm(seeds, desc="few-shot seeds", disable=not progress):
        train = few_shot_subset(pool, shots, seed=s)
        src = transfer_sweep(model, layers, train, test, probe=probe, C=C, seed=s, **finetune_kwargs)
        ref = transfer_sweep(
            reference, layers, train, test, probe=False, scratch=False, seed=s, **finetune_kwargs
        )
        src["reference_accuracy"] = ref.frozen_accuracy.to_numpy()
        src["transfer_drop"] = src.reference_accuracy - src.frozen_accuracy
        runs.append(src.assign(seed=s))
    runs = pd.concat(runs, ignore_index=True)
    cols = ["frozen_accuracy", "reference_accuracy", "probe_accuracy", "scratch_accuracy", "transfer_drop"]
    grouped = runs.groupby("layer", sort=False)[cols]
    mean, sd = grouped.mean(), grouped.std(ddof=1).fillna(0.0)  # one seed: SD 0
    out = mean.join(sd.add_suffix("_sd")).reset_index()
    return out.assign(shots=shots, n_seeds=len(seeds), chance=float(runs.chance.iloc[0]))
