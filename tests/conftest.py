"""Test-wide settings: hypothesis profiles (default `ci`) and one torch thread per process.

One thread: `pytest -n 2` already runs a process per core; torch's default of a thread per core
in each process oversubscribes the CPU (measured on the 2-core CI machine: a 100-case check
took 45 s with default threads under load, 4.8 s with one).
"""

import os

import torch
from hypothesis import settings

from attnverify.verify.profiles import register_profiles

torch.set_num_threads(1)
register_profiles()
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
