"""``SmallCNN``: a few conv blocks, global average pooling and a linear head.

Every block is ``conv3x3 -> BatchNorm -> ReLU -> 2x2 max-pool`` with readable submodule names, so
torchvision's feature-extraction node names read ``block1.conv``, ``block1.bn``, ``block1.relu``,
``block1.pool``, ..., ``gap``, ``flatten``, ``head``. The post-ReLU output of each block is the
default layer to analyse (:meth:`SmallCNN.layer_names`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["ConvBlock", "SmallCNN"]


class ConvBlock(nn.Module):
    """``conv3x3 (padding 1) -> BatchNorm2d -> ReLU -> optional 2x2 max-pool``.

    Maps ``(I, C_in, H, W)`` to ``(I, C_out, H/2, W/2)`` with pooling, ``(I, C_out, H, W)`` without.
    """

    def __init__(self, in_channels: int, out_channels: int, pool: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=False)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.relu(self.bn(self.conv(x))))


class SmallCNN(nn.Module):
    """A small image classifier for ``(I, C, H, W)`` images.

    Parameters
    ----------
    in_channels : image channels ``C`` (1 or 3, but any positive number works).
    num_classes : number of output logits.
    widths : output channels of each block; the network has ``len(widths)`` blocks.
    blocks_pool : whether each block ends in a 2x2 max-pool (``False`` keeps full resolution).

    ``forward`` maps ``(I, C, H, W)`` to logits ``(I, num_classes)``. The whole configuration is in
    :attr:`config` (JSON-serialisable), so ``SmallCNN(**model.config)`` rebuilds the architecture.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 8,
        widths: Sequence[int] = (16, 32, 64),
        blocks_pool: bool = True,
    ) -> None:
        super().__init__()
        for value, what in ((in_channels, "in_channels"), (num_classes, "num_classes")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SmallCNN: {what} must be an integer >= 1, got {value!r}.")
        widths = tuple(widths)
        if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(
                f"SmallCNN: widths must be a non-empty sequence of integers >= 1 (one per block), got {widths!r}."
            )
        self.config = {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "widths": list(widths),
            "blocks_pool": bool(blocks_pool),
        }
        channels = [in_channels, *widths]
        for b in range(len(widths)):
            self.add_module(f"block{b + 1}", ConvBlock(channels[b], channels[b + 1], pool=blocks_pool))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.head = nn.Linear(widths[-1], num_classes)

    @property
    def num_blocks(self) -> int:
        return len(self.config["widths"])

    def blocks(self) -> list[ConvBlock]:
        """The conv blocks in order."""
        return [getattr(self, f"block{b + 1}") for b in range(self.num_blocks)]

    def features(self, x: Tensor) -> Tensor:
        """The last block's output ``(I, widths[-1], H', W')`` for images ``(I, C, H, W)``."""
        for block in self.blocks():
            x = block(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        # No Python-level shape checks here: they would break torch.fx tracing (feature extraction).
        return self.head(self.flatten(self.gap(self.features(x))))  # (I, num_classes)

    def layer_names(self) -> list[str]:
        """Default layers to analyse: each block's post-ReLU output (``block1.relu``, ...).

        These are torchvision feature-extraction node names, valid for
        ``torchvision.models.feature_extraction.create_feature_extractor``.
        """
        return [f"block{b + 1}.relu" for b in range(self.num_blocks)]

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Class ids ``(I,)`` for images ``(I, C, H, W)`` (the model is left in its current mode)."""
        return self.forward(x).argmax(1)
