"""Shared math of the oracles: one masked, biased, GQA-aware softmax attention.

Everything here is plain differentiable torch in a chosen `compute_dtype` (float64 for the
oracle; the input dtype for the same-precision baseline the tolerance rule compares against).

Empty rows (no visible key) are handled without NaN, forward and backward:
- the row max is taken over visible scores only and replaced by 0 where it is -inf, so
  `exp(s - m)` never sees `-inf - (-inf)`;
- the log of the row sum is taken of `max(l, 1)`-style safe values, so no `log(0)` sits in the
  graph behind a `torch.where` (its backward would give `0 * inf = NaN`);
- the max is detached: softmax does not depend on it, and its gradient would only cancel.
"""

from __future__ import annotations

import torch

NEG_INF = float("-inf")


def expand_heads(
    x: torch.Tensor | None, num_q_heads: int, num_kv_heads: int
) -> torch.Tensor | None:
    """Map a kv-headed tensor (dim 1 == Hk) to query heads: query head h reads h // G.

    Tensors whose dim 1 is 1 or already Hq are returned unchanged (broadcast or per-query-head).
    """
    if x is None or x.shape[1] in (1, num_q_heads):
        return x
    return x.repeat_interleave(num_q_heads // num_kv_heads, dim=1)


def causal_visible(lq: int, lk: int, device: torch.device) -> torch.Tensor:
    """Bottom-right causal visibility (Lq, Lk): query i sees key j iff j <= i + Lk - Lq."""
    i = torch.arange(lq, device=device).unsqueeze(1)
    j = torch.arange(lk, device=device).unsqueeze(0)
    return j <= i + (lk - lq)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    causal: bool = False,
    compute_dtype: torch.dtype = torch.float64,
    p_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention with GQA, a broadcast mask and bias, bottom-right causal.

    Args:
        q: (B, Hq, Lq, D). k, v: (B, Hk, Lk, D); Hq % Hk == 0, query head h reads kv head h // G.
        scale: multiplies q.k only; the bias is added unscaled.
        mask: bool, broadcastable to (B, Hq, Lq, Lk) after head mapping; True = attend.
        bias: float, same broadcast rules; added to the scaled scores.
        causal: bottom-right aligned (query i sees key j iff j <= i + Lk - Lq).
        compute_dtype: dtype of every operation (inputs are cast to it first).
        p_dtype: if set, the unnormalised probabilities exp(s - m) are rounded through this
            dtype before P @ V, as an fp8 kernel does (used for the fp8 baseline).

    Returns:
        out (B, Hq, Lq, D) and lse (B, Hq, Lq), natural log, both in compute_dtype. Rows with
        no visible key give out 0 and lse -inf, with zero gradients.
    """
    hq, hk = q.shape[1], k.shape[1]
    q, k, v = (t.to(compute_dtype) for t in (q, k, v))
    k = expand_heads(k, hq, hk)
    v = expand_heads(v, hq, hk)
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if bias is not None:
        s = s + expand_heads(bias, hq, hk).to(compute_dtype)
    lq, lk = s.shape[-2], s.shape[-1]
    visible = None
    if mask is not None:
        visible = expand_heads(mask, hq, hk)
    if causal:
        c = causal_visible(lq, lk, s.device)
        visible = c if visible is None else visible & c
    if visible is not None:
        s = torch.where(visible, s, NEG_INF)
    if lk > 0:
        m = s.detach().amax(dim=-1, keepdim=True)
    else:
        m = s.new_full((*s.shape[:-1], 1), NEG_INF)
    m = torch.where(torch.isfinite(m), m, 0.0)
    p = torch.exp(s - m)
    l = p.sum(dim=-1, keepdim=True)
    if p_dtype is not None:
        p = p.to(p_dtype).to(compute_dtype)
    has_key = l > 0
    out = torch.matmul(p, v) / torch.where(has_key, l, 1.0)
    lse = torch.where(has_key, torch.log(torch.where(has_key, l, 1.0)) + m, NEG_INF)
    return out, lse.squeeze(-1)


def merge_states(out: torch.Tensor, lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine partial attention states over dim -2 (splits), exactly as DESIGN.md "paged".

    Args:
        out: (..., S, D) partial outputs. lse: (..., S) partial lse (natural log).

    Returns:
        out (..., D) = sum_s exp(lse_s - lse) * out_s and lse (...) = logsumexp_s lse_s. Splits
        with lse -inf contribute nothing (even if their out is NaN); all -inf gives 0 and -inf.
    """
    m = lse.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, 0.0)
    w = torch.exp(lse - m)
    total = w.sum(dim=-1, keepdim=True)
    has = total > 0
    weights = w / torch.where(has, total, 1.0)
    contrib = torch.where(weights.unsqueeze(-1) > 0, weights.unsqueeze(-1) * out, 0.0)
    merged = contrib.sum(dim=-2)
    merged_lse = torch.where(has, torch.log(torch.where(has, total, 1.0)) + m, NEG_INF)
    return merged, merged_lse.squeeze(-1)
