"""Shared test configuration: hypothesis profiles and the real-data location."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# "ci" (the default) is derandomized so a CI run is reproducible; "dev" explores new examples;
# "thorough" is for a long local run. Choose with AGGKIT_HYPOTHESIS_PROFILE.
settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", max_examples=40, deadline=None)
settings.register_profile("thorough", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("AGGKIT_HYPOTHESIS_PROFILE", "ci"))
