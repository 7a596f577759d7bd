"""Properties of the gqa oracle: head mapping, broadcasting, causal alignment, gradients,
empty rows, and the NaN traps the oracle avoids."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given

from attnverify.reference import gqa_attention

from .cases import (
    TINY_HEAD_PAIRS,
    GqaCase,
    assert_agree,
    expand_to_query_heads,
    gqa_cases,
    gqa_inputs,
)
from .fixtures import fixture_examples

NEG_INF = float("-inf")


def finite_lse(lse: torch.Tensor) -> torch.Tensor:
    """lse with -inf (empty rows) replaced by 0, so gradcheck can difference it."""
    return torch.where(torch.isfinite(lse), lse, 0.0)


def bottom_right_mask(lq: int, lk: int) -> torch.Tensor:
    """(1, 1, Lq, Lk) causal mask written out element by element: i sees j iff j <= i + Lk - Lq."""
    rows = [[j <= i + lk - lq for j in range(lk)] for i in range(lq)]
    return torch.tensor(rows, dtype=torch.bool).reshape(1, 1, lq, lk)


@given(case=gqa_cases(with_mask=False, with_bias=False))
@example(case=GqaCase(lq=1, lk=63, hq=4, hk=1))
@example(case=GqaCase(lq=111, lk=63, hq=6, hk=3, d=72, causal=True))
@example(case=GqaCase(lq=5, lk=0, hq=4, hk=2))
@fixture_examples("gqa")
def test_gqa_equals_mha_on_repeated_kv(case: GqaCase) -> None:
    """GQA equals MHA on K/V repeat_interleave'd to Hq heads; dK/dV equal the group sums."""
    x = gqa_inputs(case)
    g = case.hq // case.hk
    q, k, v = (x[n].requires_grad_() for n in "qkv")
    k_rep, v_rep = (t.detach().repeat_interleave(g, dim=1).requires_grad_() for t in (k, v))
    mask = None if x["mask"] is None else expand_to_query_heads(x["mask"], case)
    bias = None if x["bias"] is None else expand_to_query_heads(x["bias"], case)
    out, lse = gqa_attention(q, k, v, mask=mask, bias=bias, causal=case.causal, return_lse=True)
    want_out, want_lse = gqa_attention(
        q, k_rep, v_rep, mask=mask, bias=bias, causal=case.causal, return_lse=True
    )
    assert_agree("gqa/out", out, want_out)
    assert_agree("gqa/lse", lse, want_lse)
    weights = torch.randn(
        out.shape, generator=torch.Generator().manual_seed(case.seed), dtype=torch.float64
    )
    dk, dv = torch.autograd.grad((out * weights).sum(), (k, v))
    dk_rep, dv_rep = torch.autograd.grad((want_out * weights).sum(), (k_rep, v_rep))
    shape = (case.b, case.hk, g, case.lk, case.d)
    assert_agree("gqa/dk", dk, dk_rep.reshape(shape).sum(2))
    assert_agree("gqa/dv", dv, dv_rep.reshape(shape).sum(2))


@given(case=gqa_cases())
@example(case=GqaCase(b=2, hq=4, hk=2, mask_shape=(2, 2, 1, 4), bias_shape=(1, 2, 3, 4)))
@example(case=GqaCase(b=2, hq=6, hk=3, mask_shape=(1, 3, 3, 1), bias_shape=(2, 3, 1, 4)))
@example(case=GqaCase(hq=2, hk=2, mask_shape=(1, 1, 1, 1), bias_shape=(1, 1, 1, 1)))
@example(case=GqaCase(lq=1, lk=63, hq=4, hk=1, mask_shape=(1, 1, 1, 63), bias_shape=(1, 4, 1, 63)))
@example(case=GqaCase(mask_shape=(1, 2, 3, 4), empty_row=True, bias_shape=(1, 1, 3, 1)))
@fixture_examples("gqa")
def test_gqa_broadcast_mask_bias_equals_expanded(case: GqaCase) -> None:
    """A broadcast (or kv-headed, read at h // G) mask/bias equals the explicit (B, Hq, Lq, Lk)."""
    x = gqa_inputs(case)
    out, lse = gqa_attention(**x, causal=case.causal, return_lse=True)
    mask = None if x["mask"] is None else expand_to_query_heads(x["mask"], case)
    bias = None if x["bias"] is None else expand_to_query_heads(x["bias"], case)
    want_out, want_lse = gqa_attention(
        x["q"], x["k"], x["v"], mask=mask, bias=bias, causal=case.causal, return_lse=True
    )
    assert_agree("gqa/out", out, want_out)
    assert_agree("gqa/lse", lse, want_lse)


@given(case=gqa_cases(with_bias=False))
@example(case=GqaCase(lq=3, lk=7, causal=True))
@example(case=GqaCase(lq=5, lk=5, causal=True, d=72))
@example(case=GqaCase(lq=7, lk=3, causal=True, hq=4, hk=4))
@example(case=GqaCase(lq=1, lk=63, causal=True, mask_shape=(1, 2, 1, 63)))
@example(case=GqaCase(lq=111, lk=63, causal=True, hq=2, hk=1))
def test_gqa_causal_equals_bottom_right_mask(case: GqaCase) -> None:
    """causal=True equals an explicit bottom-right mask (Lq < Lk, Lq = Lk, Lq > Lk)."""
    x = gqa_inputs(case)
    out, lse = gqa_attention(**x, causal=True, return_lse=True)
    explicit = bottom_right_mask(case.lq, case.lk)
    if x["mask"] is not None:
        explicit = expand_to_query_heads(x["mask"], case) & explicit
    want_out, want_lse = gqa_attention(x["q"], x["k"], x["v"], mask=explicit, return_lse=True)
    assert_agree("gqa/out", out, want_out)
    assert_agree("gqa/lse", lse, want_lse)


def test_gqa_causal_docstring_diagram() -> None:
    """The docstring's pictures: Lq=2, Lk=4 and Lq=4, Lk=2 (rows q0, q1 empty)."""
    assert bottom_right_mask(2, 4)[0, 0].tolist() == [[True, True, True, False], [True] * 4]
    q = torch.randn(1, 1, 4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    kv = torch.randn(1, 1, 2, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out, lse = gqa_attention(q, kv, kv, causal=True, return_lse=True)
    assert lse[0, 0, :2].tolist() == [NEG_INF, NEG_INF] and (out[0, 0, :2] == 0).all()
    assert torch.isfinite(lse[0, 0, 2:]).all()
    assert_agree("gqa/q2", out[0, 0, 2], kv[0, 0, 0])


@given(case=gqa_cases(max_len=3, heads=TINY_HEAD_PAIRS, head_dims=(8,)))
@example(case=GqaCase(lq=2, lk=3, causal=True, bias_shape=(1, 1, 2, 3)))
@example(
    case=GqaCase(
        b=2,
        hq=2,
        hk=1,
        lq=3,
        lk=2,
        mask_shape=(2, 1, 3, 2),
        bias_shape=(2, 1, 1, 2),
        empty_row=True,
    )
)
def test_gqa_gradcheck(case: GqaCase) -> None:
    """torch.autograd.gradcheck of out and lse in float64 at tiny sizes, bias included."""
    x = gqa_inputs(case)
    inputs = [x[n].requires_grad_() for n in "qkv"]
    if x["bias"] is not None:
        inputs.append(x["bias"].requires_grad_())

    def fn(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *bias: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        out, lse = gqa_attention(
            q,
            k,
            v,
            mask=x["mask"],
            bias=bias[0] if bias else None,
            causal=case.causal,
            return_lse=True,
        )
        return out, finite_lse(lse)

    assert torch.autograd.gradcheck(fn, tuple(inputs))


@given(case=gqa_cases(with_mask=True, with_bias=False))
@example(case=GqaCase(b=2, hq=4, hk=2, lq=3, lk=4, mask_shape=(2, 4, 3, 4), empty_row=True))
@example(case=GqaCase(hq=6, hk=3, lq=1, lk=63))
def test_gqa_broadcast_dbias_equals_summed_expanded(case: GqaCase) -> None:
    """dbias of a broadcast bias = the expanded bias's gradient summed over broadcast dims and
    (kv-headed bias) over each group of G query heads."""
    x = gqa_inputs(case)
    for shape in {
        (1, 1, 1, 1),
        (case.b, case.hk, 1, case.lk),
        (1, case.hq, case.lq, 1),
        (case.b, 1, case.lq, case.lk),
    }:
        bias = torch.randn(
            shape, dtype=torch.float64, generator=torch.Generator().manual_seed(case.seed)
        ).requires_grad_()
        full = expand_to_query_heads(bias.detach(), case).requires_grad_()
        weights = torch.randn(
            case.b,
            case.hq,
            case.lq,
            case.d,
            dtype=torch.float64,
            generator=torch.Generator().manual_seed(1),
        )
        kw = {"mask": x["mask"], "causal": case.causal}
        (dbias,) = torch.autograd.grad(
            (gqa_attention(x["q"], x["k"], x["v"], bias=bias, **kw) * weights).sum(), bias
        )
        (dfull,) = torch.autograd.grad(
            (gqa_attention(x["q"], x["k"], x["v"], bias=full, **kw) * weights).sum(), full
        )
        if shape[1] == case.hk and case.hk != case.hq:
            dfull = dfull.reshape(case.b, case.hk, case.hq // case.hk, case.lq, case.lk).sum(2)
        dims = [i for i, n in enumerate(shape) if n == 1 and dfull.shape[i] != 1]
        want = dfull.sum(dim=dims, keepdim=True) if dims else dfull
        assert dbias.shape == bias.shape
        assert_agree(f"gqa/dbias{shape}", dbias, want)


def empty_row_case() -> tuple[GqaCase, dict[str, torch.Tensor]]:
    """A case whose query row 0 sees no key in any batch/head (mask row all False)."""
    case = GqaCase(
        b=2,
        hq=4,
        hk=2,
        lq=4,
        lk=5,
        mask_shape=(2, 1, 4, 5),
        bias_shape=(1, 4, 4, 5),
        empty_row=True,
        seed=3,
    )
    return case, gqa_inputs(case)


def test_gqa_empty_rows_exact_zero_and_zero_grads() -> None:
    """An empty row: out exactly 0, lse -inf, gradients finite, and exactly 0 through it."""
    _, x = empty_row_case()
    leaves = [x[n].requires_grad_() for n in ("q", "k", "v", "bias")]
    out, lse = gqa_attention(*leaves[:3], mask=x["mask"], bias=leaves[3], return_lse=True)
    assert (out[:, :, 0] == 0).all() and (lse[:, :, 0] == NEG_INF).all()
    assert torch.isfinite(out).all() and torch.isfinite(lse[:, :, 1:]).all()
    weights = torch.randn(
        out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2)
    )
    loss = (out * weights).sum() + finite_lse(lse).sum()
    grads = torch.autograd.grad(loss, leaves, retain_graph=True)
    assert all(torch.isfinite(g).all() for g in grads)
    assert (grads[0][:, :, 0] == 0).all(), "dq of the empty row"
    assert (grads[3][:, :, 0] == 0).all(), "dbias of the empty row"
    through_row = torch.autograd.grad((out[:, :, 0] * weights[:, :, 0]).sum(), leaves)
    for name, g in zip(("dq", "dk", "dv", "dbias"), through_row, strict=True):
        assert (g == 0).all(), f"{name} through the empty row: max {g.abs().max():.3e}"


def naive_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """The textbook path: masked_fill(-inf), softmax, @ v (MHA; mask broadcast)."""
    s = torch.matmul(q, k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    return torch.softmax(s.masked_fill(~mask, NEG_INF), dim=-1) @ v


def test_gqa_naive_softmax_of_empty_row_is_nan() -> None:
    """A plain softmax over an all -inf row gives NaN; the oracle gives 0."""
    _, x = empty_row_case()
    k, v = (t.repeat_interleave(2, dim=1) for t in (x["k"], x["v"]))
    naive = naive_attention(x["q"], k, v, x["mask"])
    assert torch.isnan(naive[:, :, 0]).all() and torch.isfinite(naive[:, :, 1:]).all()
    out = gqa_attention(x["q"], x["k"], x["v"], mask=x["mask"])
    assert (out[:, :, 0] == 0).all()


def test_gqa_masked_fill_fix_leaks_nan_into_gradients() -> None:
    """Zeroing the NaN rows after softmax @ v (masked_fill) fixes the forward pass, not the
    backward: dV = P^T dO multiplies the NaN probabilities by 0. The oracle's grads are finite."""
    _, x = empty_row_case()
    k, v = (t.repeat_interleave(2, dim=1).requires_grad_() for t in (x["k"], x["v"]))
    empty = ~x["mask"].any(dim=-1, keepdim=True)
    naive = naive_attention(x["q"], k, v, x["mask"]).masked_fill(empty, 0.0)
    assert torch.isfinite(naive).all(), "the masked_fill fix makes the forward finite"
    (dv_naive,) = torch.autograd.grad(naive.sum(), v)
    assert torch.isnan(dv_naive).any(), "the NaN leaks into dv"
    v_oracle = x["v"].requires_grad_()
    out = gqa_attention(x["q"], x["k"], v_oracle, mask=x["mask"])
    (dv,) = torch.autograd.grad(out.sum(), v_oracle)
    assert torch.isfinite(dv).all()


def test_gqa_guarded_log_leaks_nan_into_gradients() -> None:
    """where(l > 0, log(l), -inf) is finite forward, but its backward is 0 * (1 / 0) = NaN, which
    an additive -inf mask passes on to dq. The oracle, given the same -inf as a bias, does not."""
    case, x = empty_row_case()
    q = x["q"].requires_grad_()
    k = x["k"].repeat_interleave(2, dim=1)
    additive = torch.where(x["mask"], 0.0, NEG_INF)
    s = torch.matmul(q, k.transpose(-1, -2)) / case.d**0.5 + additive
    m = s.detach().amax(dim=-1)
    m = torch.where(torch.isfinite(m), m, 0.0)
    row_sum = torch.exp(s - m[..., None]).sum(-1)
    naive_lse = torch.where(row_sum > 0, torch.log(row_sum) + m, NEG_INF)
    (dq_naive,) = torch.autograd.grad(finite_lse(naive_lse).sum(), q)
    assert torch.isnan(dq_naive[:, :, 0]).all()
    out, lse = gqa_attention(q, x["k"], x["v"], bias=additive, return_lse=True)
    assert (lse[:, :, 0] == NEG_INF).all() and (out[:, :, 0] == 0).all()
    (dq,) = torch.autograd.grad(out.sum() + finite_lse(lse).sum(), q)
    assert torch.isfinite(dq).all() and (dq[:, :, 0] == 0).all()
    _, want_lse = gqa_attention(x["q"], x["k"], x["v"], mask=x["mask"], return_lse=True)
    assert_agree("gqa/lse(-inf bias vs mask)", lse, want_lse)


@given(case=gqa_cases())
@example(
    case=GqaCase(
        b=2, hq=4, hk=2, lq=5, lk=7, d=72, mask_shape=(2, 1, 5, 7), bias_shape=(1, 4, 5, 7)
    )
)
def test_gqa_strides_do_not_matter(case: GqaCase) -> None:
    """Non-contiguous views (B, L, H, D).transpose(1, 2) give exactly the contiguous result."""
    x = gqa_inputs(case)
    views = {n: x[n].transpose(1, 2).contiguous().transpose(1, 2) for n in "qkv"}
    assert not views["q"].is_contiguous() or case.hq == 1 or case.lq == 1
    out = gqa_attention(**{**x, **views}, causal=case.causal)
    want = gqa_attention(**x, causal=case.causal)
    assert_agree("gqa/strided", out, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_gqa_same_precision_baseline_keeps_empty_rows_exact(dtype: torch.dtype) -> None:
    """compute_dtype = the input dtype (the tolerance rule's baseline) returns that dtype and
    keeps the empty-row rules: out 0, lse -inf, finite gradients, no NaN anywhere."""
    _, x = empty_row_case()
    leaves = [x[n].to(dtype).requires_grad_() for n in ("q", "k", "v", "bias")]
    out, lse = gqa_attention(
        *leaves[:3], mask=x["mask"], bias=leaves[3], return_lse=True, compute_dtype=dtype
    )
    assert out.dtype == lse.dtype == dtype
    assert (out[:, :, 0] == 0).all() and (lse[:, :, 0] == NEG_INF).all()
    assert torch.isfinite(out).all() and torch.isfinite(lse[:, :, 1:]).all()
    grads = torch.autograd.grad(out.float().sum() + finite_lse(lse).float().sum(), leaves)
    assert all(torch.isfinite(g).all() for g in grads)
    assert (grads[0][:, :, 0] == 0).all() and (grads[3][:, :, 0] == 0).all()
