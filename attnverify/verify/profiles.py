"""Hypothesis profiles: `ci` (CPU interpreter, derandomized), `device` (GPU), `thorough`.

Select one with `HYPOTHESIS_PROFILE=<name>`, `pytest --hypothesis-profile=<name>`, or
`attnverify verify --profile <name>`. Example counts are per test / per variant x dtype.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

PROFILES = {
    "ci": {"max_examples": 12, "derandomize": True},
    "device": {"max_examples": 120},
    "thorough": {"max_examples": 1000},
}

_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]


def register_profiles() -> None:
    """Register the three profiles with hypothesis (idempotent)."""
    for name, options in PROFILES.items():
        settings.register_profile(
            name, deadline=None, suppress_health_check=_SLOW_OK, print_blob=True, **options
        )


__all__ = ["PROFILES", "register_profiles"]
