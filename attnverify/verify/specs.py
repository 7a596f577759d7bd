"""Registry of variant specs: `get_spec("gqa")` -> the `VariantSpec` that verifies gqa_attention.

Specs live one per variant file (`verify/varlen.py`, `gqa.py`, `fp8.py`, `paged.py`; `merge`'s
spec is in `paged.py`). See `attnverify.verify._common.VariantSpec` for what a spec provides.
"""

from __future__ import annotations

import importlib

from attnverify.verify._common import VariantSpec
from attnverify.verify.case import VARIANTS

_MODULES = {
    "varlen": ("attnverify.verify.varlen", "SPEC"),
    "gqa": ("attnverify.verify.gqa", "SPEC"),
    "fp8": ("attnverify.verify.fp8", "SPEC"),
    "paged": ("attnverify.verify.paged", "SPEC"),
    "merge": ("attnverify.verify.paged", "MERGE_SPEC"),
}


def get_spec(variant: str) -> VariantSpec:
    """The spec of `variant` ("varlen", "gqa", "fp8", "paged", "merge").

    Raises:
        ValueError: unknown variant (the message lists the valid ones).
    """
    if variant not in _MODULES:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}; got {variant!r}")
    module, attr = _MODULES[variant]
    return getattr(importlib.import_module(module), attr)


__all__ = ["get_spec"]
