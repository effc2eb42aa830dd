"""Datasets: planted-cluster mixtures with known truth (more loaders arrive with the convnet work)."""

from .synthetic import PlantedMixture

__all__ = ["PlantedMixture"]
