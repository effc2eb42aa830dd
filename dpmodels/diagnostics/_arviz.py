"""The one import of ArviZ in the project, with its once-a-day refactor notice silenced.

ArviZ 0.23 emits a ``FutureWarning`` about its upcoming 1.x refactor on the first import of each
day; under ``-W error`` (the test suite) that notice would turn every import into a failure. It
carries no information about our use of the classic ``InferenceData`` API, so it is filtered here,
narrowly, and nowhere else.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings(
        "ignore", message=r"(?s).*ArviZ is undergoing a major refactor", category=FutureWarning
    )
    import arviz as az  # noqa: E402

__all__ = ["az"]
