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
    C: float = 1.0,
    progress: bool = False,
    **finetune_kwargs,
) -> pd.DataFrame:
    """Per-layer measured transfer of a source-trained ``model`` to the target ``train``/``test``.

    One row per layer (given order) with ``probe_accuracy`` (NaN when ``probe=False``),
    ``frozen_accuracy`` (:func:`finetune_accuracy` frozen up to the layer), ``scratch_accuracy``
    (one baseline shared by all rows), ``transfer_drop = scratch_accuracy - frozen_accuracy`` and
    ``chance`` (1 / number of classes). ``finetune_kwargs`` (epochs, batch_size, lr, seed, device)
    are shared by every training run.
    """
    check_layers(model, list(layers))
    finetune_kwargs.setdefault("num_classes", _num_classes(_checked(train, "train"), _checked(test, "test")))
    device = finetune_kwargs.get("device", "cpu")
    scratch = scratch_accuracy(model, train, test, **finetune_kwargs)
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
