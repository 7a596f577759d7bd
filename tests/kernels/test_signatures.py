"""The design contract: every kernel has its oracle's signature minus `compute_dtype`."""

from __future__ import annotations

import inspect

import pytest

from attnverify import kernels, reference

PUBLIC = (
    "varlen_attention",
    "cu_seqlens_from_grid_thw",
    "gqa_attention",
    "fp8_attention",
    "paged_attention",
    "merge_attention_states",
)


def _params(fn: object) -> list[tuple[str, object, object]]:
    return [
        (p.name, p.kind, p.default)
        for p in inspect.signature(fn).parameters.values()
        if p.name != "compute_dtype"
    ]


@pytest.mark.parametrize("name", PUBLIC)
def test_kernel_signature_matches_oracle(name: str) -> None:
    oracle, kernel = getattr(reference, name), getattr(kernels, name)
    assert _params(kernel) == _params(oracle), (
        f"{name}: kernel {inspect.signature(kernel)} != oracle {inspect.signature(oracle)}"
    )
    assert "compute_dtype" not in inspect.signature(kernel).parameters


def test_kernels_package_exports_the_contract() -> None:
    assert set(PUBLIC) | {"is_verified", "require_verified", "UnverifiedKernelError"} <= set(
        kernels.__all__
    )
