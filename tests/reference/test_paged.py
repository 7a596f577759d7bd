"""Properties of the paged oracle and of merging: paged == gqa on the gathered KV, splits."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from attnverify.reference import gqa_attention, merge_attention_states, paged_attention
from attnverify.reference.paged import split_bounds

from .cases import (
    GqaCase,
    PagedCase,
    assert_agree,
    generator,
    gqa_cases,
    gqa_inputs,
    paged_cases,
    paged_inputs,
    randn,
)
from .fixtures import fixture_examples

NEG_INF = float("-inf")


def run_paged(case: PagedCase, num_splits: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    x = paged_inputs(case)
    return paged_attention(
        *x.oracle_args(),
        k_descale=x.k_descale,
        v_descale=x.v_descale,
        num_splits=num_splits,
        kv_layout=case.kv_layout,
        return_lse=True,
    )


@given(case=paged_cases())
@example(case=PagedCase(seq_lens=(1, 63, 111), block_size=16, hq=4, hk=1))
@example(case=PagedCase(seq_lens=(7, 0, 16), block_size=4, hq=4, hk=4, d=72, lq=3, num_splits=8))
@example(case=PagedCase(seq_lens=(2,), lq=4, block_size=3, kv_layout="HND", junk="range"))
@example(case=PagedCase(seq_lens=(9, 30), block_size=16, cache_dtype="float8_e5m2", num_splits=5))
@example(case=PagedCase(seq_lens=(40,), block_size=1, hq=6, hk=3, spare_blocks=3, extra_entries=2))
@fixture_examples("paged")
def test_paged_equals_gqa_on_gathered_kv(case: PagedCase) -> None:
    """paged == gqa (causal, bottom-right) on each request's contiguous KV, whatever the block
    size, block permutation, junk in unused table entries, NaN in unused slots, layout, splits."""
    x = paged_inputs(case)
    out, lse = paged_attention(
        *x.oracle_args(),
        k_descale=x.k_descale,
        v_descale=x.v_descale,
        num_splits=case.num_splits,
        kv_layout=case.kv_layout,
        return_lse=True,
    )
    assert out.shape == x.q.shape and lse.shape == x.q.shape[:3]
    for b in range(len(case.seq_lens)):
        want_out, want_lse = gqa_attention(
            x.q[b : b + 1],
            x.k_logical[b][None],
            x.v_logical[b][None],
            causal=True,
            return_lse=True,
        )
        assert_agree(f"paged/req{b}/out", out[b : b + 1], want_out)
        assert_agree(f"paged/req{b}/lse", lse[b : b + 1], want_lse)


@given(case=paged_cases(fp8=False), num_splits=st.integers(1, 12))
@example(case=PagedCase(seq_lens=(5, 0), block_size=4), num_splits=12)
@example(case=PagedCase(seq_lens=(63,), block_size=16, lq=4), num_splits=3)
def test_paged_splits_equal_unsplit(case: PagedCase, num_splits: int) -> None:
    """Any number of splits (more than blocks, or than keys, included) gives the unsplit result."""
    out, lse = run_paged(case, num_splits)
    want_out, want_lse = run_paged(case, None)
    assert_agree("paged/split/out", out, want_out)
    assert_agree("paged/split/lse", lse, want_lse)


@given(length=st.integers(0, 50), num_splits=st.integers(1, 12))
@example(length=0, num_splits=3)
@example(length=5, num_splits=12)
def test_split_bounds_cover_the_range(length: int, num_splits: int) -> None:
    """num_splits contiguous chunks that tile [0, length) in order (trailing ones may be empty)."""
    bounds = split_bounds(length, num_splits)
    assert len(bounds) == num_splits
    ends = [0] + [hi for _, hi in bounds]
    assert [lo for lo, _ in bounds] == ends[:-1] and ends[-1] == length
    assert all(lo <= hi for lo, hi in bounds)


@st.composite
def cut_points(draw: st.DrawFn, length: int) -> list[int]:
    """Sorted cut points in [0, length], repeats allowed (they make empty chunks)."""
    return sorted(draw(st.lists(st.integers(0, length), max_size=5)))


@given(case=gqa_cases(), data=st.data())
@example(case=GqaCase(lq=2, lk=7, mask_shape=(1, 1, 2, 7), bias_shape=(1, 2, 1, 7)), data=None)
@example(case=GqaCase(lq=3, lk=4, hq=4, hk=2, mask_shape=(1, 2, 3, 1), empty_row=True), data=None)
@example(case=GqaCase(lq=1, lk=63, hq=4, hk=1, d=72), data=None)
def test_gqa_split_merge_equals_unsplit(case: GqaCase, data: st.DataObject | None) -> None:
    """Cutting the KV range into chunks (empty chunks included), attending per chunk and
    merge_attention_states gives the unsplit out and lse."""
    cuts = data.draw(cut_points(case.lk)) if data is not None else [0, 0, case.lk // 2, case.lk]
    x = gqa_inputs(case)
    if case.causal:
        x["mask"] = explicit_causal(x["mask"], case)
    want_out, want_lse = gqa_attention(**x, return_lse=True)
    bounds = list(zip([0, *cuts], [*cuts, case.lk], strict=True))
    outs, lses = [], []
    for lo, hi in bounds:
        chunk = {n: x[n][:, :, lo:hi] for n in "kv"}
        for n in ("mask", "bias"):
            t = x[n]
            chunk[n] = t[..., lo:hi] if t is not None and t.shape[-1] == case.lk else t
        o, s = gqa_attention(
            x["q"], chunk["k"], chunk["v"], mask=chunk["mask"], bias=chunk["bias"], return_lse=True
        )
        outs.append(o)
        lses.append(s)
    out, lse = merge_attention_states(torch.stack(outs, dim=-2), torch.stack(lses, dim=-1))
    assert_agree("merge/out", out, want_out)
    assert_agree("merge/lse", lse, want_lse)


def explicit_causal(mask: torch.Tensor | None, case: GqaCase) -> torch.Tensor:
    """The bottom-right causal mask (1, 1, Lq, Lk), and-ed with `mask` expanded to Lq x Lk."""
    i = torch.arange(case.lq)[:, None]
    j = torch.arange(case.lk)[None, :]
    causal = (j <= i + case.lk - case.lq)[None, None]
    return causal if mask is None else mask & causal


def test_merge_empty_splits_contribute_nothing() -> None:
    """Splits with lse -inf are ignored even when their out is NaN; all -inf gives 0 and -inf."""
    out = randn(generator(0), 3, 4, 8)
    lse = torch.tensor(
        [[0.5, NEG_INF, 1.0, NEG_INF], [NEG_INF] * 4, [NEG_INF, NEG_INF, 2.0, NEG_INF]],
        dtype=torch.float64,
    )
    out[lse == NEG_INF] = float("nan")
    merged, merged_lse = merge_attention_states(out, lse)
    assert (merged[1] == 0).all() and merged_lse[1] == NEG_INF
    assert_agree("merge/single", merged[2], out[2, 2])
    assert_agree("merge/single-lse", merged_lse[2], lse[2, 2])
    assert torch.isfinite(merged).all()
    assert_agree("merge/lse", merged_lse[0], torch.logsumexp(lse[0, [0, 2]], dim=0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_paged_same_precision_baseline_keeps_empty_rows_exact(dtype: torch.dtype) -> None:
    """compute_dtype = the input dtype: seq_len 0 and causally hidden rows give out 0 and lse
    -inf, and the NaN in unused cache slots reaches nothing, with any number of splits."""
    case = PagedCase(seq_lens=(0, 6, 2), lq=3, block_size=4, hq=4, hk=2, num_splits=3)
    x = paged_inputs(case)
    q, k_cache, v_cache = (t.to(dtype) for t in (x.q, x.k_cache, x.v_cache))
    out, lse = paged_attention(
        q,
        k_cache,
        v_cache,
        x.block_tables,
        x.seq_lens,
        num_splits=3,
        return_lse=True,
        compute_dtype=dtype,
    )
    assert out.dtype == lse.dtype == dtype
    assert (out[0] == 0).all() and (lse[0] == NEG_INF).all()
    assert (out[2, :, 0] == 0).all() and (lse[2, :, 0] == NEG_INF).all()
    assert torch.isfinite(out).all() and torch.isfinite(lse[1]).all()
