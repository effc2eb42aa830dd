"""Small distribution fixes used by the model and the guide."""

from __future__ import annotations

import pyro.distributions as dist
import torch

__all__ = ["Wishart"]


class Wishart(dist.Wishart):
    """Pyro's ``Wishart`` with a plain Bartlett-decomposition ``rsample``.

    torch's ``Wishart.rsample`` re-draws samples it wrongly flags as singular and warns
    "Singular sample detected." on valid draws; this version draws once and symmetrises.
    """

    def rsample(self, sample_shape: tuple = ()) -> torch.Tensor:
        sample = self._bartlett_sampling(torch.Size(sample_shape))
        return 0.5 * (sample + sample.transpose(-1, -2))
