"""Test-wide settings.

Hypothesis draws its examples from a fixed seed (``derandomize``), so a run of
the suite is reproducible: CI on a fresh machine tests exactly what passed
here. Set ``HYPOTHESIS_PROFILE=explore`` to search with fresh random examples
(that is how the subnormal-ki and subnormal-step cases were found).
"""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
