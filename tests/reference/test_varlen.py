"""Properties of the varlen oracle: per-sequence gqa, gradients, empty rows, grid_thw."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from attnverify.reference import cu_seqlens_from_grid_thw, gqa_attention, varlen_attention

from .cases import TINY_HEAD_PAIRS, VarlenCase, assert_agree, varlen_cases, varlen_inputs
from .fixtures import fixture_examples, load_fixtures


def finite_lse(lse: torch.Tensor) -> torch.Tensor:
    """lse with -inf (empty rows) replaced by 0, so gradcheck can difference it."""
    return torch.where(torch.isfinite(lse), lse, 0.0)


@given(case=varlen_cases())
@example(case=VarlenCase(seqlens_q=(1, 1), seqlens_k=(63, 111), hq=4, hk=1, causal=True))
@example(case=VarlenCase(seqlens_q=(63, 111), seqlens_k=(63, 111), hq=2, hk=2, d=72, causal=True))
@example(case=VarlenCase(seqlens_q=(0, 5, 3), seqlens_k=(4, 0, 3), hq=4, hk=2))
@example(case=VarlenCase(seqlens_q=(0,), seqlens_k=(0,)))
@example(case=VarlenCase(seqlens_q=(6,), seqlens_k=(2,), causal=True))
@fixture_examples("varlen")
def test_varlen_equals_gqa_per_sequence(case: VarlenCase) -> None:
    """Each packed sequence gives what gqa gives on it alone (B = 1), zero lengths included."""
    x = varlen_inputs(case)
    out, lse = varlen_attention(**x, causal=case.causal, return_lse=True)
    assert out.shape == (sum(case.seqlens_q), case.hq, case.d)
    assert lse.shape == (case.hq, sum(case.seqlens_q))
    cq, ck = case.cu_seqlens_q, case.cu_seqlens_k
    for n in range(len(case.seqlens_q)):
        q = x["q"][cq[n] : cq[n + 1]].transpose(0, 1)[None]
        k = x["k"][ck[n] : ck[n + 1]].transpose(0, 1)[None]
        v = x["v"][ck[n] : ck[n + 1]].transpose(0, 1)[None]
        want_out, want_lse = gqa_attention(q, k, v, causal=case.causal, return_lse=True)
        assert_agree(f"varlen/seq{n}/out", out[cq[n] : cq[n + 1]], want_out[0].transpose(0, 1))
        assert_agree(f"varlen/seq{n}/lse", lse[:, cq[n] : cq[n + 1]], want_lse[0])


tiny_varlen_cases = varlen_cases(max_len=3, max_seqs=3, heads=TINY_HEAD_PAIRS, head_dims=(8,))


@given(case=tiny_varlen_cases)
@example(case=VarlenCase(seqlens_q=(2, 0, 1), seqlens_k=(1, 2, 0), hq=2, hk=1, causal=True))
@example(case=VarlenCase(seqlens_q=(3,), seqlens_k=(3,), hq=2, hk=2))
def test_varlen_gradcheck(case: VarlenCase) -> None:
    """torch.autograd.gradcheck of out and lse in float64 at tiny sizes."""
    x = varlen_inputs(case)
    q, k, v = (x[n].requires_grad_() for n in "qkv")

    def fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out, lse = varlen_attention(
            q, k, v, x["cu_seqlens_q"], x["cu_seqlens_k"], causal=case.causal, return_lse=True
        )
        return out, finite_lse(lse)

    assert torch.autograd.gradcheck(fn, (q, k, v))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("causal", [False, True])
def test_varlen_empty_rows_exact_zero_and_zero_grads(causal: bool, dtype: torch.dtype) -> None:
    """Rows with no key (Lk_n = 0, or hidden by causal Lq_n > Lk_n): out 0, lse -inf, zero grads;
    also in the same-precision baseline (inputs and compute_dtype = dtype)."""
    case = VarlenCase(seqlens_q=(3, 4, 2), seqlens_k=(0, 2, 5), hq=4, hk=2, d=8, causal=causal)
    x = varlen_inputs(case)
    q, k, v = (x[n].to(dtype).requires_grad_() for n in "qkv")
    out, lse = varlen_attention(
        q,
        k,
        v,
        x["cu_seqlens_q"],
        x["cu_seqlens_k"],
        causal=causal,
        return_lse=True,
        compute_dtype=dtype,
    )
    assert out.dtype == lse.dtype == dtype
    empty = torch.zeros(sum(case.seqlens_q), dtype=torch.bool)
    empty[0:3] = True
    if causal:
        empty[3:5] = True
    assert (out[empty] == 0).all(), f"out of empty rows: {out[empty].abs().max():.3e}"
    assert (lse[:, empty] == float("-inf")).all()
    assert torch.isfinite(out).all() and torch.isfinite(lse[:, ~empty]).all()
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    (out * weights).sum().backward(retain_graph=True)
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    assert (q.grad[empty] == 0).all()
    for t in (q, k, v):
        t.grad = None
    (out[empty] * weights[empty]).sum().backward()
    for name, t in zip("qkv", (q, k, v), strict=True):
        assert (t.grad == 0).all(), f"d{name} through empty rows: {t.grad.abs().max():.3e}"


@pytest.mark.parametrize(
    ("seqlens_q", "seqlens_k"), [((0, 0), (3, 2)), ((), ())], ids=["no-queries", "no-sequences"]
)
def test_varlen_without_queries_is_differentiable(
    seqlens_q: tuple[int, ...], seqlens_k: tuple[int, ...]
) -> None:
    """Tq = 0 (every sequence empty, or N = 0) still gives outputs in the autograd graph, with
    zero gradients, so a harness can run backward on any drawn case."""
    x = varlen_inputs(VarlenCase(seqlens_q=seqlens_q, seqlens_k=seqlens_k, hq=2, hk=1))
    q, k, v = (x[n].requires_grad_() for n in "qkv")
    out, lse = varlen_attention(q, k, v, x["cu_seqlens_q"], x["cu_seqlens_k"], return_lse=True)
    assert out.shape == (0, 2, 8) and lse.shape == (2, 0)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    assert all((g == 0).all() and g.shape == t.shape for g, t in zip(grads, (q, k, v), strict=True))


def grid_thw_seqlens(grid: list[tuple[int, int, int]]) -> list[int]:
    """cu_seqlens by hand: every temporal frame of every image is one sequence of h * w."""
    cu = [0]
    for t, h, w in grid:
        for _ in range(t):
            cu.append(cu[-1] + h * w)
    return cu


@given(
    grid=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 8), st.integers(0, 8)), max_size=5)
)
@example(grid=[])
@example(grid=[(1, 4, 4), (2, 6, 10), (0, 4, 4), (1, 0, 6)])
@example(grid=next(iter(load_fixtures("varlen"))).params["grid_thw"])
def test_cu_seqlens_from_grid_thw(grid: list[tuple[int, int, int]]) -> None:
    grid_thw = torch.tensor(grid, dtype=torch.int64).reshape(-1, 3)
    cu = cu_seqlens_from_grid_thw(grid_thw)
    assert cu.dtype == torch.int32 and cu.dim() == 1
    assert cu.tolist() == grid_thw_seqlens(grid)


@pytest.mark.parametrize(
    ("grid_thw", "error", "match"),
    [
        ([[1, 4, 4]], TypeError, "grid_thw must be a torch.Tensor"),
        (torch.tensor([[1.0, 4.0, 4.0]]), ValueError, "grid_thw must be an integer tensor"),
        (
            torch.tensor([1, 4, 4]),
            ValueError,
            r"grid_thw must be an integer tensor of shape \(num_images, 3\)",
        ),
        (
            torch.tensor([[1, 4]]),
            ValueError,
            r"grid_thw must be an integer tensor of shape \(num_images, 3\)",
        ),
        (torch.tensor([[1, -4, 4]]), ValueError, "grid_thw entries .* must be >= 0"),
    ],
    ids=["list", "float", "1-D", "two-columns", "negative"],
)
def test_cu_seqlens_from_grid_thw_rejects(grid_thw: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        cu_seqlens_from_grid_thw(grid_thw)
