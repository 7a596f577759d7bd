"""Every torch oracle agrees with the independent numpy/scipy cross-oracle (`crossoracle.py`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from attnverify.reference import (
    fp8_attention,
    gqa_attention,
    merge_attention_states,
    paged_attention,
    varlen_attention,
)

from . import crossoracle
from .cases import (
    FP8_NAMES,
    Fp8Case,
    GqaCase,
    PagedCase,
    VarlenCase,
    assert_agree,
    fp8_case_inputs,
    fp8_cases,
    generator,
    gqa_cases,
    gqa_inputs,
    paged_cases,
    paged_inputs,
    randn,
    score_condition,
    varlen_cases,
    varlen_inputs,
)
from .fixtures import fixture_examples


def np64(x: torch.Tensor | None) -> np.ndarray | None:
    return None if x is None else x.detach().to(torch.float64).numpy()


@pytest.mark.parametrize("name", FP8_NAMES)
def test_crossoracle_fp8_decoder_matches_torch(name: str) -> None:
    """The bit-level decoder equals torch's fp8 -> float64 cast on all 256 codes."""
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    want = codes.view(getattr(torch, name)).to(torch.float64).numpy()
    got = crossoracle.fp8_decode(codes.numpy(), name)
    assert np.array_equal(got, want, equal_nan=True), (
        f"{name}: codes differ: {np.flatnonzero(~((got == want) | (np.isnan(got) & np.isnan(want))))}"
    )


@given(case=varlen_cases())
@example(case=VarlenCase(seqlens_q=(1,), seqlens_k=(63,), causal=True))
@example(case=VarlenCase(seqlens_q=(63, 0, 111), seqlens_k=(63, 5, 111), hq=4, hk=4, d=72))
@example(case=VarlenCase(seqlens_q=(7, 3), seqlens_k=(0, 2), hq=4, hk=1, causal=True))
@fixture_examples("varlen")
def test_crossoracle_varlen(case: VarlenCase) -> None:
    x = varlen_inputs(case)
    out, lse = varlen_attention(**x, causal=case.causal, return_lse=True)
    want_out, want_lse = crossoracle.varlen(
        np64(x["q"]),
        np64(x["k"]),
        np64(x["v"]),
        case.cu_seqlens_q,
        case.cu_seqlens_k,
        causal=case.causal,
    )
    assert_agree("varlen/out", out, want_out)
    assert_agree("varlen/lse", lse, want_lse)


@given(case=gqa_cases())
@example(case=GqaCase(lq=1, lk=63, hq=4, hk=1))
@example(case=GqaCase(lq=111, lk=63, hq=2, hk=2, d=72, causal=True))
@example(case=GqaCase(mask_shape=(1, 1, 3, 4), bias_shape=(1, 2, 1, 4), empty_row=True))
@example(case=GqaCase(b=2, hq=4, hk=2, mask_shape=(2, 2, 1, 4), bias_shape=(1, 2, 3, 1)))
@fixture_examples("gqa")
def test_crossoracle_gqa(case: GqaCase) -> None:
    x = gqa_inputs(case)
    out, lse = gqa_attention(**x, causal=case.causal, return_lse=True)
    mask = None if x["mask"] is None else x["mask"].numpy()
    want_out, want_lse = crossoracle.gqa(
        *(np64(x[n]) for n in "qkv"), mask=mask, bias=np64(x["bias"]), causal=case.causal
    )
    assert_agree("gqa/out", out, want_out)
    assert_agree("gqa/lse", lse, want_lse)


def dequantize_np(x: torch.Tensor, descale: torch.Tensor, name: str, hk: int) -> np.ndarray:
    """Real values of fp8 x (B, H, L, D): decoded bits times descale, head h reads h // (H/Hk)."""
    values = crossoracle.fp8_decode(x.view(torch.uint8).numpy(), name)
    d = descale.numpy().astype(np.float64)
    if d.ndim == 0:
        return values * d
    heads = np.arange(x.shape[1]) // (x.shape[1] // hk)
    return values * d[:, heads][:, :, None, None]


@given(case=fp8_cases())
@example(case=Fp8Case(lq=1, lk=63, hq=4, hk=1, granularity="head"))
@example(case=Fp8Case(d=72, near_max=True, causal=True))
@example(case=Fp8Case(hq=6, hk=3, lq=7, lk=7, near_max=True))
@example(case=Fp8Case(dtype="float8_e5m2", near_max=True, hq=4, hk=4, granularity="head"))
@fixture_examples("fp8")
def test_crossoracle_fp8(case: Fp8Case) -> None:
    x = fp8_case_inputs(case)
    out, lse = fp8_attention(**x, causal=case.causal, return_lse=True)
    q, k, v = (dequantize_np(x[n], x[f"{n}_descale"], case.dtype, case.hk) for n in ("q", "k", "v"))
    want_out, want_lse = crossoracle.gqa(q, k, v, causal=case.causal)
    condition = score_condition(torch.from_numpy(q), torch.from_numpy(k))
    assert_agree("fp8/out", out, want_out, condition)
    assert_agree("fp8/lse", lse, want_lse, condition)


def paged_cache_np(
    cache: torch.Tensor, descale: torch.Tensor | None, case: PagedCase
) -> np.ndarray:
    """A paged cache as float64 numpy real values (fp8 decoded bit by bit, descale per kv head)."""
    if case.cache_dtype is None:
        return np64(cache)
    values = crossoracle.fp8_decode(cache.view(torch.uint8).numpy(), case.cache_dtype)
    d = descale.numpy().astype(np.float64)
    return values * (d[:, None] if case.kv_layout == "NHD" else d[:, None, None])


@given(case=paged_cases())
@example(case=PagedCase(seq_lens=(63, 0, 5), block_size=16, hq=4, hk=1, num_splits=8))
@example(case=PagedCase(seq_lens=(111,), block_size=3, d=72, lq=4, kv_layout="HND", junk="range"))
@example(case=PagedCase(seq_lens=(2, 9), lq=3, cache_dtype="float8_e4m3fn", hq=2, hk=2))
@fixture_examples("paged")
def test_crossoracle_paged(case: PagedCase) -> None:
    x = paged_inputs(case)
    out, lse = paged_attention(
        *x.oracle_args(),
        k_descale=x.k_descale,
        v_descale=x.v_descale,
        num_splits=case.num_splits,
        kv_layout=case.kv_layout,
        return_lse=True,
    )
    want_out, want_lse = crossoracle.paged(
        np64(x.q),
        paged_cache_np(x.k_cache, x.k_descale, case),
        paged_cache_np(x.v_cache, x.v_descale, case),
        x.block_tables.tolist(),
        list(case.seq_lens),
        kv_layout=case.kv_layout,
    )
    assert_agree("paged/out", out, want_out)
    assert_agree("paged/lse", lse, want_lse)


@given(
    rows=st.integers(1, 6),
    splits=st.integers(1, 6),
    d=st.sampled_from((8, 72)),
    p_empty=st.sampled_from((0.0, 0.3, 1.0)),
    seed=st.integers(0, 2**16),
)
@example(rows=1, splits=1, d=8, p_empty=1.0, seed=0)
@example(rows=3, splits=5, d=72, p_empty=0.3, seed=1)
def test_crossoracle_merge(rows: int, splits: int, d: int, p_empty: float, seed: int) -> None:
    """Merging partial states, with -inf lse splits holding NaN outputs, matches scipy."""
    gen = generator(seed)
    out = randn(gen, rows, splits, d)
    lse = 3 * randn(gen, rows, splits)
    empty = torch.rand(rows, splits, generator=gen, dtype=torch.float64) < p_empty
    lse = lse.masked_fill(empty, float("-inf"))
    out = out.masked_fill(empty[..., None], float("nan"))
    got_out, got_lse = merge_attention_states(out, lse)
    want_out, want_lse = crossoracle.merge(np64(out), np64(lse))
    assert_agree("merge/out", got_out, want_out)
    assert_agree("merge/lse", got_lse, want_lse)
