"""Test-wide settings: the Triton interpreter without a GPU, hypothesis profiles (default `ci`),
and one torch thread per test process.

TRITON_INTERPRET must be set before Triton is first imported, so it is set here, before any
test module loads a kernel. bfloat16 `tl.dot` is wrong under the interpreter (triton#11584):
kernel tests draw float16/float32 there; bf16 is verified on a GPU only.

One thread: `pytest -n 2` already runs a process per core; torch's default of a thread per core
in each process oversubscribes the CPU (measured on the 2-core CI machine: a 100-case check
took 45 s with default threads under load, 4.8 s with one).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import settings

from attnverify.verify.profiles import register_profiles

torch.set_num_threads(1)
register_profiles()
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
