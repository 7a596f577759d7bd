"""Properties of the fp8 oracle and of `quantize_fp8` (both granularities, all fp8 formats)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from attnverify.reference import fp8_attention, gqa_attention, quantize_fp8

from .cases import (
    FP8_NAMES,
    Fp8Case,
    assert_agree,
    fp8_case_inputs,
    fp8_cases,
    generator,
    randn,
    score_condition,
)
from .crossoracle import FP8_FORMATS
from .fixtures import fixture_examples


def dequantized(x: torch.Tensor, descale: torch.Tensor, hk: int) -> torch.Tensor:
    """x.float() * descale, a (B, Hk) descale spelled out per head: head h reads h // (H / Hk)."""
    if descale.dim() == 0:
        return x.to(torch.float64) * descale.item()
    group = x.shape[1] // hk
    per_head = torch.stack([descale[:, h // group] for h in range(x.shape[1])], dim=1)
    return x.to(torch.float64) * per_head.double()[:, :, None, None]


@given(case=fp8_cases())
@example(case=Fp8Case(lq=1, lk=63, hq=4, hk=1, granularity="head"))
@example(case=Fp8Case(lq=111, lk=63, hq=2, hk=2, d=72, causal=True))
@example(case=Fp8Case(near_max=True, dtype="float8_e4m3fnuz", granularity="head", hq=6, hk=3))
@example(case=Fp8Case(near_max=True, dtype="float8_e5m2", causal=True, lq=5, lk=2))
@example(case=Fp8Case(lk=0))
@fixture_examples("fp8")
def test_fp8_equals_gqa_on_dequantized(case: Fp8Case) -> None:
    """fp8_attention equals gqa_attention on x.float() * descale (out, lse), near max included."""
    x = fp8_case_inputs(case)
    out, lse = fp8_attention(**x, causal=case.causal, return_lse=True)
    q, k, v = (dequantized(x[n], x[f"{n}_descale"], case.hk) for n in ("q", "k", "v"))
    want_out, want_lse = gqa_attention(q, k, v, causal=case.causal, return_lse=True)
    assert out.dtype == torch.float64
    assert torch.isfinite(out).all()
    condition = score_condition(q, k)
    assert_agree("fp8/out", out, want_out, condition)
    assert_agree("fp8/lse", lse, want_lse, condition)


@given(
    name=st.sampled_from(FP8_NAMES),
    granularity=st.sampled_from(("tensor", "head")),
    shape=st.tuples(
        st.integers(1, 2), st.sampled_from((1, 2, 4)), st.integers(0, 9), st.sampled_from((8, 72))
    ),
    groups=st.sampled_from((1, 2)),
    magnitude=st.sampled_from((1e-3, 1.0, 1e4)),
    zero_head=st.booleans(),
    seed=st.integers(0, 2**16),
)
@example(
    name="float8_e4m3fn",
    granularity="head",
    shape=(2, 4, 63, 72),
    groups=2,
    magnitude=1.0,
    zero_head=True,
    seed=0,
)
@example(
    name="float8_e5m2fnuz",
    granularity="tensor",
    shape=(1, 1, 0, 8),
    groups=1,
    magnitude=1.0,
    zero_head=False,
    seed=0,
)
def test_quantize_fp8_roundtrip(
    name: str,
    granularity: str,
    shape: tuple[int, int, int, int],
    groups: int,
    magnitude: float,
    zero_head: bool,
    seed: int,
) -> None:
    """x_fp8.float() * descale rounds x to the format (half an fp8 ulp), each group's
    largest magnitude maps to the format's max, an all-zero group gets descale 1, and query heads
    h of a group share the descale of kv head h // G."""
    dtype = getattr(torch, name)
    b, hk, length, d = shape
    h = hk * groups
    x = magnitude * randn(generator(seed), b, h, length, d)
    if zero_head:
        x[:, :groups] = 0.0
    x_fp8, descale = quantize_fp8(x, dtype, granularity, kv_heads=hk)
    assert x_fp8.dtype == dtype and x_fp8.shape == x.shape and descale.dtype == torch.float32
    assert descale.shape == (() if granularity == "tensor" else (b, hk))
    per_head = (descale.reshape(1, 1) if granularity == "tensor" else descale).double()
    per_head = per_head.expand(b, hk).repeat_interleave(groups, dim=1)[:, :, None, None]
    scaled = x / per_head
    # Spacing from the format's bit layout: torch.finfo(float8_e5m2fnuz).eps says 2^-3, but
    # the format has 2 mantissa bits (spacing 2^-2 relative).
    _, man_bits, bias, _ = FP8_FORMATS[name]
    eps, tiny = 2.0**-man_bits, 2.0 ** (1 - bias)
    # quantize_fp8 divides in float32 before rounding: allow that one float32 rounding too.
    f32_eps = torch.finfo(torch.float32).eps
    bound = eps / 2 * torch.maximum(scaled.abs(), torch.tensor(tiny)) + f32_eps * scaled.abs()
    err = (x_fp8.to(torch.float64) - scaled).abs()
    assert (err <= bound).all(), f"rounding error {(err - bound).max():.3e} above half an ulp"
    fmax = torch.finfo(dtype).max
    values = x_fp8.to(torch.float64)
    if granularity == "tensor":
        pairs = [(x, values)]
    else:
        heads = [slice(g * groups, (g + 1) * groups) for g in range(hk)]
        pairs = [(x[i, hs], values[i, hs]) for i in range(b) for hs in heads]
    for (group, group_fp8), group_descale in zip(pairs, descale.flatten().tolist(), strict=True):
        if group.count_nonzero() == 0:
            assert group_descale == 1.0, "an all-zero (or empty) group gets descale 1"
        else:
            assert group_fp8.abs().max() == fmax, "the group's amax maps to the format max"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"dtype": torch.float16}, TypeError, "dtype must be an fp8 dtype"),
        ({"granularity": "row"}, ValueError, "granularity must be one of"),
        ({"granularity": "head", "kv_heads": 3}, ValueError, "kv_heads must divide"),
        ({"x": torch.zeros(2, 4, 8)}, ValueError, "x must be 4-D"),
        ({"x": torch.zeros(1, 4, 2, 8, dtype=torch.int32)}, TypeError, "x must have dtype"),
    ],
    ids=["not-fp8", "granularity", "kv-heads", "rank", "int-x"],
)
def test_quantize_fp8_rejects(kwargs: dict, error: type, match: str) -> None:
    args = {"x": torch.zeros(1, 4, 2, 8), "dtype": torch.float8_e4m3fn, "granularity": "tensor"}
    with pytest.raises(error, match=match):
        quantize_fp8(**{**args, **kwargs})
