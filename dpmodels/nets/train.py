"""Supervised training of an image classifier on an :class:`~dpmodels.data.ImageSet`.

``train_classifier`` runs AdamW with a cosine learning-rate schedule, optional shift/contrast
augmentation and early stopping on validation accuracy, restores the best weights and leaves the
model in eval mode. On CPU the result is a deterministic function of the initial weights and ``seed``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .._validation import check_device, check_positive_int
from ..data.images import ImageSet
from .checkpoint import save_checkpoint

__all__ = ["TrainReport", "augment_batch", "evaluate_accuracy", "train_classifier"]


@dataclass
class TrainReport:
    """What a training run did (JSON-serialisable through :meth:`to_dict`).

    Histories hold one value per epoch run. ``best_epoch`` is 0-based; its weights are the ones kept.
    ``best_val_accuracy`` is ``None`` without validation data. ``loaded_from_cache`` is set by
    :func:`~dpmodels.nets.cache.train_or_load` when the model came from disk instead of training.
    """

    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    best_epoch: int = -1
    best_val_accuracy: float | None = None
    epochs_run: int = 0
    seconds: float = 0.0
    stopped_early: bool = False
    loaded_from_cache: bool = False
    cache_key: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainReport:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def _check_data(data: ImageSet, what: str) -> None:
    if not isinstance(data, ImageSet):
        raise ValueError(f"{what} must be an ImageSet, got {type(data).__name__}.")
    if data.targets is None:
        raise ValueError(
            f"{what} ({data.name}) has no targets; training and accuracy need class ids per image."
        )


def augment_batch(x: Tensor, generator: torch.Generator) -> Tensor:
    """Random shifts (reflect-padded, up to 1/8 of the size) and +-10 % contrast for ``(I, C, H, W)``.

    No flips or rotations: for oriented textures the orientation can be the class.
    """
    I, _, H, W = x.shape
    p = max(1, min(H, W) // 8)
    padded = F.pad(x, (p, p, p, p), mode="reflect")  # (I, C, H + 2p, W + 2p)
    dy, dx = torch.randint(0, 2 * p + 1, (2, I), generator=generator).tolist()
    out = torch.stack([padded[i, :, dy[i] : dy[i] + H, dx[i] : dx[i] + W] for i in range(I)])  # (I, C, H, W)
    gain = 1.0 + 0.2 * (torch.rand(I, 1, 1, 1, generator=generator) - 0.5)  # (I, 1, 1, 1)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)  # (I, 1, 1, 1)
    return ((out - mean) * gain.to(x) + mean).clamp(0.0, 1.0)


@torch.no_grad()
def _evaluate(model: nn.Module, data: ImageSet, batch_size: int, device: torch.device) -> tuple[float, float]:
    """``(accuracy, mean cross-entropy)`` of ``model`` on ``data`` in eval mode (mode restored)."""
    was_training = model.training
    model.eval()
    correct, loss = 0, 0.0
    for start in range(0, len(data), batch_size):
        x = data.images[start : start + batch_size].to(device)  # (n, C, H, W)
        y = data.targets[start : start + batch_size].to(device)  # (n,)
        logits = model(x)  # (n, num_classes)
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    model.train(was_training)
    return correct / len(data), loss / len(data)


def evaluate_accuracy(model: nn.Module, data: ImageSet, batch_size: int = 256, device: str = "cpu") -> float:
    """Fraction of images in ``data`` whose arg-max logit equals the target (model mode restored)."""
    _check_data(data, "data")
    check_positive_int(batch_size, "batch_size", "pass e.g. 256")
    dev = check_device(device)
    model.to(dev)
    return _evaluate(model, data, batch_size, dev)[0]


def train_classifier(
    model: nn.Module,
    train: ImageSet,
    val: ImageSet | None = None,
    *,
    epochs: int = 12,
    lr: float = 3e-3,
    batch_size: int = 64,
    weight_decay: float = 5e-4,
    patience: int | None = 3,
    augment: bool = False,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    checkpoint_path: str | None = None,
) -> TrainReport:
    """Train ``model`` (logits ``(I, num_classes)`` from images ``(I, C, H, W)``) on ``train``.

    Cross-entropy, AdamW (``lr``, ``weight_decay``), cosine decay of the learning rate over ``epochs``,
    minibatches of ``batch_size`` shuffled by ``seed``. With ``val``, each epoch ends with a validation
    pass; the best epoch (highest accuracy, ties broken by lower loss) is kept, and training stops
    after ``patience`` epochs without improvement (``None`` disables early stopping). Without ``val``
    the last epoch's weights are kept. The global RNG is used (seeded by ``seed``) only inside a
    forked RNG state, so the caller's random stream is untouched. Ends with the best weights loaded,
    the model in eval mode on ``device``, and, if ``checkpoint_path`` is given, those weights and the
    report saved there atomically.

    Validation runs in eval mode, so BatchNorm uses its running statistics, which need a few dozen
    optimiser steps to settle: on tiny data sets lower ``batch_size`` rather than trusting early epochs.
    """
    _check_data(train, "train")
    if val is not None:
        _check_data(val, "val")
        if val.images.shape[1:] != train.images.shape[1:]:
            raise ValueError(
                f"val images {tuple(val.images.shape[1:])} differ from train images {tuple(train.images.shape[1:])}."
            )
    epochs = check_positive_int(epochs, "epochs", "pass e.g. 12")
    batch_size = check_positive_int(batch_size, "batch_size", "pass e.g. 64")
    if patience is not None:
        patience = check_positive_int(patience, "patience", "pass e.g. 3, or None to disable early stopping")
    if not lr > 0 or weight_decay < 0:
        raise ValueError(f"need lr > 0 and weight_decay >= 0, got lr={lr!r}, weight_decay={weight_decay!r}.")
    dev = check_device(device)
    model.to(dev)
    with torch.no_grad():
        out = model.eval()(train.images[:2].to(dev))  # (2, num_classes)
    num_classes = int(train.targets.max()) + 1
    if out.dim() != 2 or out.shape[1] < num_classes:
        raise ValueError(
            f"the model gives outputs of shape {tuple(out.shape)} but the targets need (I, >= {num_classes}) "
            "logits; build it with num_classes matching the data."
        )

    report = TrainReport()
    t0 = time.perf_counter()
    steps_per_epoch = -(-len(train) // batch_size)
    gen = torch.Generator().manual_seed(seed)
    cuda_ids = [torch.cuda.current_device() if dev.index is None else dev.index] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_ids):
        torch.manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
        best_key, best_state, waited = None, None, 0
        bar = tqdm(range(epochs), desc=f"training {type(model).__name__}", disable=not progress, leave=False)
        for epoch in bar:
            model.train()
            order = torch.randperm(len(train), generator=gen)
            loss_sum, correct = 0.0, 0
            for start in range(0, len(train), batch_size):
                idx = order[start : start + batch_size]
                x = train.images[idx]  # (n, C, H, W)
                if augment:
                    x = augment_batch(x, gen)
                x, y = x.to(dev), train.targets[idx].to(dev)
                logits = model(x)  # (n, num_classes)
                loss = F.cross_entropy(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                loss_sum += float(loss.detach()) * len(idx)
                correct += int((logits.argmax(1) == y).sum())
            report.train_loss.append(loss_sum / len(train))
            report.train_accuracy.append(correct / len(train))
            report.epochs_run = epoch + 1
            postfix = {"loss": f"{report.train_loss[-1]:.3f}", "acc": f"{report.train_accuracy[-1]:.3f}"}
            if val is None:
                report.best_epoch = epoch
                bar.set_postfix(postfix)
                continue
            acc, vloss = _evaluate(model, val, 256, dev)
            report.val_accuracy.append(acc)
            report.val_loss.append(vloss)
            bar.set_postfix({**postfix, "val_acc": f"{acc:.3f}"})
            if best_key is None or (acc, -vloss) > best_key:
                best_key, waited = (acc, -vloss), 0
                best_state = copy.deepcopy(model.state_dict())
                report.best_epoch, report.best_val_accuracy = epoch, acc
            else:
                waited += 1
                if patience is not None and waited >= patience and epoch + 1 < epochs:
                    report.stopped_early = True
                    break
        bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    report.seconds = time.perf_counter() - t0
    if checkpoint_path is not None:
        save_checkpoint(model, checkpoint_path, {"report": report.to_dict()})
    return report
