"""End-to-end analyses: a network's layers on a set of images, into a run directory, and read back."""

from .fitting import LayerFit, fit_layers
from .kinds import RunKindError, find_run, require_run
from .network import obtain_network
from .outputs import RunOutputs, latest_run, load_layer_maps
from .run import analyze

__all__ = [
    "LayerFit",
    "RunKindError",
    "RunOutputs",
    "analyze",
    "fit_layers",
    "find_run",
    "latest_run",
    "load_layer_maps",
    "obtain_network",
    "require_run",
]
