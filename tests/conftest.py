"""Test-wide settings: hypothesis profiles (default `ci`) and the float64 default device."""

import os

from hypothesis import settings

from attnverify.verify.profiles import register_profiles

register_profiles()
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
