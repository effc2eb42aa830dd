"""Networks: the small CNN, training with an on-disk cache, torchvision architectures by name, and
safe checkpoints (atomic writes, ``weights_only`` loads)."""

from .cache import CacheWarning, cache_key, default_cache_dir, train_or_load
from .checkpoint import (
    CheckpointError,
    atomic_write,
    check_compatible,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from .default import texture_cnn, texture_training_data
from .small_cnn import ConvBlock, SmallCNN
from .train import TrainReport, augment_batch, evaluate_accuracy, train_classifier
from .zoo import adapt_input_channels, available_nets, build_net, hub_weights_path, replace_head

__all__ = [
    "CacheWarning",
    "CheckpointError",
    "ConvBlock",
    "SmallCNN",
    "TrainReport",
    "adapt_input_channels",
    "atomic_write",
    "augment_batch",
    "available_nets",
    "build_net",
    "cache_key",
    "check_compatible",
    "default_cache_dir",
    "evaluate_accuracy",
    "hub_weights_path",
    "load_checkpoint",
    "load_weights",
    "replace_head",
    "save_checkpoint",
    "train_classifier",
    "texture_cnn",
    "texture_training_data",
    "train_or_load",
]
