"""Structured-config schemas of ``python -m experiments.transfer`` (registered in Hydra's ConfigStore
as ``transfer_schema`` and ``scenario/schema``). Field comments are the configuration reference."""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore

__all__ = ["ScenarioConf", "ScoreConf", "SourceConf", "TaskConf", "TransferConf", "register"]


@dataclass
class ScenarioConf:
    """Target conditions (``dpmodels.transfer.experiment.make_conditions``)."""

    name: str = "default"
    control: bool = False  # fresh, unshifted source textures as a target (the no-shift reference)
    families: list[str] = field(default_factory=list)  # other texture families, e.g. [B]
    contrast: list[float] = field(default_factory=list)  # contrast factors (1 = none), e.g. [0.5, 0.2]
    noise: list[float] = field(default_factory=list)  # additive Gaussian noise std, e.g. [0.1, 0.3]
    colour: list[float] = field(default_factory=list)  # hue rotation in degrees, e.g. [60, 180]
    blur: list[float] = field(default_factory=list)  # Gaussian blur sigma in pixels
    digits: bool = False  # textures -> digits (10 classes; needs convert_channels: grey -> RGB)
    folder: str | None = None  # DIR with images/: scored only (no image-level labels)
    convert_channels: bool = False  # convert targets to the network's channel count instead of failing


@dataclass
class SourceConf:
    """The source: the small CNN trained on texture patches (cached, shared with experiments.analyze)."""

    family: str = "A"
    widths: list[int] = field(default_factory=lambda: [16, 32, 64])
    train_per_class: int = 200
    size: int = 32  # patch size of source and target images
    epochs: int = 15
    score_per_class: int = 30  # fresh source patches per texture whose positions are fitted / held out


@dataclass
class TaskConf:
    """Measured transfer on the labelled target task (``transfer_sweep``) and the target network."""

    train_per_class: int = 40  # labelled target images per class (also the scored target images)
    test_per_class: int = 20
    epochs: int = 4  # fine-tuning budget shared by frozen and scratch runs
    batch_size: int = 64
    lr: float = 3e-3
    probe: bool = True  # also a linear probe per layer
    target_epochs: int = 10  # the target-trained network (for CKA)


@dataclass
class ScoreConf:
    """DPGMM shift scores per layer."""

    layers: list[str] | None = None  # null = each block's post-ReLU output
    positions_per_image: int | None = 16
    standardize: bool = True
    pca_dim: int | None = 8
    heldout_fraction: float = 0.25  # of the source images, held out for scoring
    truncation: int = 20
    covariance: str = "full"  # full | diag
    min_points: int = 50  # target positions a layer needs to be scored
    novelty_quantile: float = 0.01
    n_boot: int = 2000  # bootstrap resamples of the Spearman interval


@dataclass
class TransferConf:
    scenario: ScenarioConf = field(default_factory=ScenarioConf)
    source: SourceConf = field(default_factory=SourceConf)
    task: TaskConf = field(default_factory=TaskConf)
    score: ScoreConf = field(default_factory=ScoreConf)
    seed: int = 0
    device: str = "cpu"
    threads: int | None = 1  # torch CPU threads (small nets and fits: 1 is fastest); null = default
    cache_dir: str | None = None  # trained networks; null = $DPMODELS_CACHE or ~/.cache/dpmodels
    progress: bool = True
    overwrite: bool = False


def register() -> None:
    """Store ``transfer_schema`` (top level) and ``scenario/schema``."""
    cs = ConfigStore.instance()
    cs.store(name="transfer_schema", node=TransferConf)
    cs.store(group="scenario", name="schema", node=ScenarioConf)
