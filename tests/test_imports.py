"""Import weight: fitting code must not load the image and network stacks."""

import subprocess
import sys

import pytest

HEAVY = ("skimage", "torchvision", "sklearn", "matplotlib", "arviz", "hydra")


@pytest.mark.parametrize("module", ["dpmodels", "dpmodels.models", "dpmodels.infer", "dpmodels.spatial"])
def test_fitting_modules_do_not_import_image_or_network_stacks(module):
    code = f"import sys, {module}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import {module} loaded: {out.stdout.strip()}"


def test_data_names_still_import_on_use():
    from dpmodels.data import PlantedMixture, PointSource, load_dataset

    assert callable(load_dataset) and PlantedMixture and PointSource
    import dpmodels.data as data

    assert "texture_mosaics" in dir(data)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        data.nothing  # noqa: B018
