"""Production Triton kernels, with the signatures of `attnverify.reference` (minus compute_dtype).

Modules load on first use, so importing this package compiles nothing:

    from attnverify.kernels import varlen_attention

`is_verified(variant)` / `require_verified(variant)` tell whether a verification record exists
for this kernel source on this device; `ATTNVERIFY_REQUIRE_VERIFIED=1` makes an unverified
kernel's first call raise `UnverifiedKernelError`.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "varlen_attention": "attnverify.kernels.varlen",
    "cu_seqlens_from_grid_thw": "attnverify.reference.varlen",
    "gqa_attention": "attnverify.kernels.gqa",
    "fp8_attention": "attnverify.kernels.fp8",
    "prepare_fp8_v": "attnverify.kernels.fp8",
    "paged_attention": "attnverify.kernels.paged",
    "merge_attention_states": "attnverify.kernels.paged",
    "is_verified": "attnverify.kernels._gate",
    "require_verified": "attnverify.kernels._gate",
    "UnverifiedKernelError": "attnverify.kernels._gate",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'attnverify.kernels' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(_EXPORTS)


__all__ = sorted(_EXPORTS)
