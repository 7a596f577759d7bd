"""A `verify --target ci.dying_target:merge_dies_on_last_gpu` implementation for the multi-GPU
check of `ci/device.sh`: our merge kernel, except that the worker whose inputs sit on the last
visible GPU exits at its first case, so the run must report that worker's cases, not lose them.
"""

from __future__ import annotations

import os

import torch

from attnverify.kernels import merge_attention_states

EXIT_CODE = 3


def merge_dies_on_last_gpu(
    out: torch.Tensor, lse: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`attnverify.kernels.merge_attention_states`, or process exit (code 3) on the last GPU."""
    if out.device.type == "cuda" and out.device.index == torch.cuda.device_count() - 1:
        os._exit(EXIT_CODE)
    return merge_attention_states(out, lse)
