"""Save and load the ``InferenceData`` of this package as netCDF (engine ``h5netcdf``).

Writes are atomic: the file goes to a temporary name beside the target and is moved into place
with ``os.replace``, so a crash never leaves a half-written file under the real name. Loading checks
the ``dpmodels_format`` attribute and the groups this version needs, so a file from another tool
or an older layout fails with a message instead of a confusing ``KeyError`` later.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..io import atomic_path
from ._arviz import az
from .build import FORMAT_VERSION

__all__ = ["save_inference_data", "load_inference_data", "REQUIRED_GROUPS"]

REQUIRED_GROUPS = ("posterior",)
REQUIRED_VARIABLES = ("weights", "means", "sorted_weights", "weight_entropy", "n_active")


def save_inference_data(idata: az.InferenceData, path: str | os.PathLike) -> Path:
    """Write ``idata`` to the netCDF file ``path`` atomically; returns the path."""
    if not isinstance(idata, az.InferenceData):
        raise TypeError(f"idata must be an arviz.InferenceData, got {type(idata).__name__}.")
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the folder {str(path.parent)!r} does not exist; create it first.")
    with atomic_path(path, suffix=".nc") as tmp:
        idata.to_netcdf(str(tmp), engine="h5netcdf")
    return path


def load_inference_data(path: str | os.PathLike) -> az.InferenceData:
    """Read an ``InferenceData`` written by :func:`save_inference_data` (or ``to_netcdf``).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a file that is not
    netCDF, or lacks the groups, variables or ``dpmodels_format`` attribute this version expects.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no InferenceData file at {str(path)!r}; check the path.")
    try:
        idata = az.from_netcdf(path, engine="h5netcdf")
    except Exception as err:  # noqa: BLE001 - h5py/xarray raise many types for unreadable files
        raise ValueError(
            f"{str(path)!r} is not a readable netCDF InferenceData file ({type(err).__name__}: {err}); "
            "pass a file written by dpmodels.diagnostics.save_inference_data."
        ) from err
    missing = [g for g in REQUIRED_GROUPS if g not in idata.groups()]
    if missing:
        raise ValueError(
            f"{str(path)!r} has groups {idata.groups()} but lacks {missing}; it was not written by "
            "dpmodels.diagnostics. Rebuild it with to_inference_data or gibbs_sample."
        )
    version = idata.posterior.attrs.get("dpmodels_format")
    version = None if version is None else int(version)
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{str(path)!r} has dpmodels_format={version}, this version reads format {FORMAT_VERSION}; "
            "rebuild the file with this version's to_inference_data (or gibbs_sample)."
        )
    absent = [v for v in REQUIRED_VARIABLES if v not in idata.posterior.data_vars]
    if absent:
        raise ValueError(f"{str(path)!r} lacks posterior variables {absent}; rebuild it with this version.")
    return idata
