"""Test-wide settings.

float64 is enabled so that gradient paths can be compared to ~1e-12; tests that
are about float32 or bfloat16 ask for those dtypes explicitly.
"""

import os

import jax
from hypothesis import HealthCheck, settings

jax.config.update("jax_enable_x64", True)

# Every new shape compiles afresh, so examples are few and deadlines off.
settings.register_profile(
    "fnn", max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("thorough", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fnn"))
