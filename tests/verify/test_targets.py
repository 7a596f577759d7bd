"""Targets: name resolution and its errors, the reference target's dtypes, and what the torch
targets do under `check` (findings on torch 2.13, CPU).

Findings recorded by these tests (torch 2.13.0+cpu):
- torch-sdpa passes gqa and varlen in float32 and float16, masks, biases, GQA, bottom-right
  causal (through the adapter's explicit mask) included. Rows with no visible key (fully masked,
  causal Lq > Lk, a varlen sequence with Lk = 0) come back as exact 0 with zero gradients: the
  CPU backends use a safe softmax, so SDPA agrees with DESIGN.md here (GPU backends are not
  covered by these CPU tests).
- torch-flex (eager, the unfused path on CPU) passes forward gqa and varlen, empty rows 0 and
  lse -inf; it has no backward on CPU (the adapter raises a ValueError saying so, which `check`
  reports) and raises IndexError when there are no keys at all (Lk = 0 / Tk = 0).
- torch-varlen (varlen_attn) is CUDA flash attention only: unavailable on this machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnverify import reference
from attnverify.verify import Case, check
from attnverify.verify.specs import get_spec
from attnverify.verify.targets import TARGET_NAMES, VARIANT_FUNCTIONS, resolve_target

SMALL_BUDGET = 4
FLEX_EAGER_WARNING = "ignore:flex_attention called without torch.compile"

EMPTY_ROW_CASES = [
    Case(
        variant="gqa",
        dtype=dtype,
        seed=5,
        batch=2,
        heads_q=4,
        heads_k=2,
        head_dim=32,
        lq=9,
        lk=5,
        causal=True,
        mask_shape=(2, 2, 9, 5),
        mask_kind="rows",
    )
    for dtype in ("float32", "float16")
] + [
    Case(
        variant="varlen",
        dtype=dtype,
        seed=6,
        heads_q=4,
        heads_k=2,
        head_dim=32,
        seqlens_q=(5, 3, 7),
        seqlens_k=(4, 0, 2),
        causal=causal,
    )
    for dtype in ("float32", "float16")
    for causal in (False, True)
]


def test_unknown_target_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown target 'sdpa'") as info:
        resolve_target("sdpa", "gqa")
    for name in TARGET_NAMES:
        assert name in str(info.value)


def test_unknown_variant_lists_valid_variants() -> None:
    with pytest.raises(ValueError, match="variant must be one of") as info:
        resolve_target("reference", "mha")
    for variant in VARIANT_FUNCTIONS:
        assert variant in str(info.value)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("no_such_module_attnverify:attention", "cannot import module 'no_such_module_attnverify'"),
        ("attnverify.reference:no_such_function", "has no attribute 'no_such_function'"),
        ("attnverify.reference:__name__", "not a callable"),
        ("attnverify.reference:", "must look like 'package.module:function'"),
        (":gqa_attention", "must look like 'package.module:function'"),
    ],
    ids=["missing-module", "missing-attribute", "not-callable", "no-function", "no-module"],
)
def test_module_function_errors_are_clear(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_target(name, "gqa")


def test_module_function_resolves_dotted_attributes() -> None:
    assert resolve_target("attnverify.reference:gqa_attention", "gqa") is reference.gqa_attention
    assert resolve_target("attnverify:reference.paged_attention", "paged") is (
        reference.paged_attention
    )


@pytest.mark.parametrize("variant", sorted(VARIANT_FUNCTIONS))
def test_attnverify_target_is_our_kernel(variant: str) -> None:
    import attnverify.kernels

    got = resolve_target("attnverify", variant)
    assert got is getattr(attnverify.kernels, VARIANT_FUNCTIONS[variant])


@pytest.mark.parametrize(
    ("name", "variant"),
    [
        ("torch-sdpa", "fp8"),
        ("torch-sdpa", "paged"),
        ("torch-sdpa", "merge"),
        ("torch-flex", "fp8"),
        ("torch-flex", "paged"),
        ("torch-flex", "merge"),
        ("torch-varlen", "gqa"),
    ],
)
def test_inexpressible_variants_name_target_variant_and_reason(name: str, variant: str) -> None:
    with pytest.raises(ValueError, match=f"target '{name}' cannot run variant '{variant}': .+"):
        resolve_target(name, variant)


@pytest.mark.skipif(torch.cuda.is_available(), reason="varlen_attn runs on this CUDA machine")
def test_torch_varlen_needs_cuda() -> None:
    with pytest.raises(ValueError, match=r"torch-varlen.*CUDA"):
        resolve_target("torch-varlen", "varlen")


@pytest.mark.parametrize("variant", sorted(VARIANT_FUNCTIONS))
@settings(max_examples=3)
@given(data=st.data())
def test_reference_target_returns_kernel_dtypes(variant: str, data: st.DataObject) -> None:
    spec = get_spec(variant)
    case = data.draw(spec.strategy("ci", spec.default_dtypes(torch.device("cpu"))))
    inputs = spec.make_inputs(case, "cpu")
    got = spec.run(resolve_target("reference", variant), inputs, case, grads=False)
    if variant == "fp8":
        want = inputs["out_dtype"]
    elif variant == "merge":
        want = inputs["out"].dtype
    else:
        want = inputs["q"].dtype
    assert (got["out"].dtype, got["lse"].dtype) == (want, torch.float32), (
        f"{variant}: reference target returned out {got['out'].dtype}, lse {got['lse'].dtype}; "
        f"expected out {want}, lse float32 ({case.short()})"
    )


@pytest.mark.parametrize("variant", ["gqa", "varlen"])
def test_torch_sdpa_passes_check_float32(variant: str, tmp_path: Path) -> None:
    report = check(
        variant,
        resolve_target("torch-sdpa", variant),
        dtypes=["float32"],
        examples=SMALL_BUDGET,
        device="cpu",
        profile="ci",
        replay_dir=tmp_path,
    )
    assert report.passed, f"torch-sdpa failed {variant}:\n{report}"


def _has_empty_row(case: Case) -> bool:
    spec = get_spec(case.variant)
    got = spec.run(spec.oracle(), spec.make_inputs(case, "cpu"), case, grads=False)
    return bool(torch.isneginf(got["lse"]).any())


@pytest.mark.parametrize("case", EMPTY_ROW_CASES, ids=lambda c: c.short())
def test_torch_sdpa_empty_rows_match_design(case: Case, tmp_path: Path) -> None:
    """Finding: CPU SDPA gives empty rows exactly 0 and zero gradients (no NaN)."""
    assert _has_empty_row(case), f"pinned case has no empty row: {case.short()}"
    report = check(
        case.variant,
        resolve_target("torch-sdpa", case.variant),
        cases=[case],
        device="cpu",
        replay_dir=tmp_path,
    )
    assert report.passed, f"torch-sdpa's empty rows differ from DESIGN.md:\n{report}"


@pytest.mark.filterwarnings(FLEX_EAGER_WARNING)
@pytest.mark.parametrize("case", EMPTY_ROW_CASES[::2], ids=lambda c: c.short())
def test_torch_flex_forward_matches_design(case: Case, tmp_path: Path) -> None:
    report = check(
        case.variant,
        resolve_target("torch-flex", case.variant),
        cases=[case],
        device="cpu",
        grads=False,
        replay_dir=tmp_path,
    )
    assert report.passed, f"torch-flex forward differs from DESIGN.md:\n{report}"


@pytest.mark.filterwarnings(FLEX_EAGER_WARNING)
def test_torch_flex_reports_no_cpu_backward(tmp_path: Path) -> None:
    report = check(
        "gqa",
        resolve_target("torch-flex", "gqa"),
        cases=EMPTY_ROW_CASES[:1],
        device="cpu",
        replay_dir=tmp_path,
    )
    errors = [r.error or "" for r in report.failures]
    assert errors and "no backward on CPU" in errors[0], f"expected the adapter's error:\n{report}"


@pytest.mark.filterwarnings(FLEX_EAGER_WARNING)
def test_torch_flex_raises_without_keys(tmp_path: Path) -> None:
    """Finding: flex_attention raises (IndexError) when there are no keys at all (Tk = 0)."""
    case = Case(variant="varlen", dtype="float32", seed=1, seqlens_q=(3, 2), seqlens_k=(0, 0))
    report = check(
        "varlen",
        resolve_target("torch-flex", "varlen"),
        cases=[case],
        device="cpu",
        grads=False,
        replay_dir=tmp_path,
    )
    errors = [r.error or "" for r in report.failures]
    assert errors and "IndexError" in errors[0], (
        f"flex_attention now handles Tk = 0; update the finding in this module:\n{report}"
    )
