"""Run code in a fresh Python process with Triton's JIT on (TRITON_INTERPRET=0): the CPU tests'
compile-for-sm90 checks, which the test process (interpreter on) cannot make itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_jit_process(code: str, timeout: float = 300) -> str:
    """stdout of `python -c code`, with the repository and this folder importable (the code can
    import the test modules' compile helpers); asserts the process exited 0."""
    here = Path(__file__).resolve().parent
    path = os.pathsep.join([str(here.parents[1]), str(here)])
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": path}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout
