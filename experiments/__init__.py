"""Hydra entry points that wire the ``dpmodels`` library together (``python -m experiments.NAME``)."""
