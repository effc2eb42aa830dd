"""Which parameters does "freeze up to layer L" freeze, and a re-initialised copy to fine-tune.

*Up to and including L* is defined by module order in ``model.named_modules()`` (registration
order, parents before children; for ``nn.Sequential`` stacks and the usual ``features`` /
``classifier`` layout this is the forward order): every parameter owned by a module listed at or
before ``L``, or by one of ``L``'s submodules, is frozen. A parameter's owner is the module its
dotted name belongs to (``features.3.weight`` -> ``features.3``); direct parameters of a container
listed before ``L`` count as before it. Everything after is re-initialised with
``reset_parameters()`` and trained. Models whose registration order differs from their forward
order should be given layer names accordingly (check with :func:`frozen_parameter_names`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ._features import check_layers

__all__ = ["frozen_parameter_names", "prepare_transfer_copy", "set_train_mode"]


def _cut(model: nn.Module, freeze_upto: str | None) -> tuple[list[str], int]:
    """Module names in order (root ``""`` first) and the index of the last frozen one (-1: none)."""
    names = [name for name, _ in model.named_modules()]
    if freeze_upto is None:
        return names, -1
    check_layers(model, [freeze_upto])
    inside = [i for i, n in enumerate(names) if n == freeze_upto or n.startswith(freeze_upto + ".")]
    return names, max(inside)


def _owner(param_name: str) -> str:
    return param_name.rsplit(".", 1)[0] if "." in param_name else ""


def frozen_parameter_names(model: nn.Module, freeze_upto: str | None) -> list[str]:
    """Names (as in ``named_parameters``) of the parameters that freezing up to and including
    ``freeze_upto`` freezes; ``None`` freezes nothing."""
    names, last = _cut(model, freeze_upto)
    position = {n: i for i, n in enumerate(names)}
    return [p for p, _ in model.named_parameters() if position[_owner(p)] <= last]


def _replace_head(model: nn.Module, num_classes: int, names: list[str], last: int) -> None:
    """Give the last ``nn.Linear`` (in module order) ``num_classes`` outputs if it has another count."""
    modules = dict(model.named_modules())
    linears = [n for n in names if isinstance(modules[n], nn.Linear)]
    if not linears:
        raise ValueError(
            "the model has no nn.Linear classifier head to fit to the target classes; add one, or "
            "make the model's output match the target's number of classes."
        )
    head_name = linears[-1]
    head = modules[head_name]
    if head.out_features == num_classes:
        return
    if names.index(head_name) <= last:
        raise ValueError(
            f"the classifier head {head_name!r} has {head.out_features} outputs but the target has "
            f"{num_classes} classes, and it lies inside the frozen part; freeze an earlier layer."
        )
    parent_name, _, attr = head_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    new = nn.Linear(head.in_features, num_classes, bias=head.bias is not None)
    setattr(parent, attr, new.to(device=head.weight.device, dtype=head.weight.dtype))


def prepare_transfer_copy(
    model: nn.Module, freeze_upto: str | None, num_classes: int, seed: int = 0
) -> tuple[nn.Module, list[str]]:
    """A deep copy of ``model`` (the caller's is never touched) with parameters up to and including
    ``freeze_upto`` frozen (``requires_grad=False``), every later module re-initialised (seeded)
    and the classifier head sized to ``num_classes``. ``freeze_upto=None`` re-initialises all.

    Returns ``(copy, frozen_modules)``: names of the modules that must stay in eval mode while
    training (so frozen BatchNorm statistics and dropout do not change); see :func:`set_train_mode`.
    """
    new = copy.deepcopy(model)
    names, last = _cut(new, freeze_upto)
    frozen = set(frozen_parameter_names(new, freeze_upto))
    trainable = [p for p, _ in new.named_parameters() if p not in frozen]
    if not trainable:
        raise ValueError(
            f"freezing up to {freeze_upto!r} leaves no parameter to train; freeze an earlier layer "
            "or use linear_probe_accuracy for a frozen readout."
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _replace_head(new, num_classes, names, last)
        modules = dict(new.named_modules())
        for name in names[last + 1 :]:
            module = modules[name]
            owns = any(True for _ in module.parameters(recurse=False)) or any(
                True for _ in module.buffers(recurse=False)
            )
            if not owns:
                continue
            if not hasattr(module, "reset_parameters"):
                raise ValueError(
                    f"module {name!r} ({type(module).__name__}) owns parameters but has no "
                    "reset_parameters() to re-initialise it; give it one, or freeze past it."
                )
            module.reset_parameters()
    frozen = set(frozen_parameter_names(new, freeze_upto))
    for pname, param in new.named_parameters():
        param.requires_grad_(pname not in frozen)
    parts = freeze_upto.split(".") if freeze_upto else []
    ancestors = {".".join(parts[:j]) for j in range(len(parts))}  # "" and the dotted prefixes of L
    frozen_modules = [n for n in names[: last + 1] if n not in ancestors]
    return new, frozen_modules


def set_train_mode(model: nn.Module, frozen_modules: list[str]) -> nn.Module:
    """``model.train()``, then the ``frozen_modules`` (and only they, not their parents) back in eval
    mode: frozen BatchNorm keeps its running statistics, frozen dropout stays off."""
    model.train()
    modules = dict(model.named_modules())
    for name in frozen_modules:
        modules[name].training = False
    return model
