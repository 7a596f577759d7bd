"""Planted gqa bugs in the backward pass only (the forward is exact)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from attnverify.reference._common import expand_heads
from attnverify.validation import resolve_scale

from ._kernels import (
    ExpandFirstOnly,
    GroupFirstHead,
    ValueFrom,
    gqa_kernel,
    with_grad_hook,
)
from ._registry import planted


@planted("gqa", grads=True)
def gqa_dkdv_one_head(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    bias: Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    return_lse: bool = False,
) -> Any:
    """dK/dV taken from the first query head of each group instead of summed over the group."""
    hq, hk = q.shape[1], k.shape[1]
    if hq != hk:
        k, v = (GroupFirstHead.apply(x, hq // hk) for x in (k, v))
        mask, bias = expand_heads(mask, hq, hk), expand_heads(bias, hq, hk)
    return gqa_kernel(
        q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, return_lse=return_lse
    )


@planted("gqa", grads=True)
def gqa_dbias_not_reduced(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    bias: Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    return_lse: bool = False,
) -> Any:
    """dbias not reduced over broadcast dims: the gradient of index 0 (e.g. batch 0) only."""
    if bias is not None:
        full = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        bias = ExpandFirstOnly.apply(expand_heads(bias, q.shape[1], k.shape[1]), full)
    return gqa_kernel(
        q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, return_lse=return_lse
    )


@planted("gqa", grads=True)
def gqa_dbias_kv_group_first_head(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    bias: Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    return_lse: bool = False,
) -> Any:
    """Kv-headed dbias from the first query head of each group, not summed over the group."""
    hq, hk = q.shape[1], k.shape[1]
    if bias is not None and bias.shape[1] == hk != hq:
        bias = GroupFirstHead.apply(bias, hq // hk)
    return gqa_kernel(
        q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, return_lse=return_lse
    )


@planted("gqa", grads=True)
def gqa_dq_missing_scale(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    bias: Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    return_lse: bool = False,
) -> Any:
    """dQ = dS @ K without the softmax scale factor."""
    s = resolve_scale(scale, q.shape[-1])
    q = with_grad_hook(q, lambda g: g / s)
    return gqa_kernel(q, k, v, mask=mask, bias=bias, causal=causal, scale=s, return_lse=return_lse)


@planted("gqa", grads=True)
def gqa_backward_ignores_causal(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    bias: Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    return_lse: bool = False,
) -> Any:
    """Backward recomputes P without the causal mask (the mask applied in the forward only)."""
    out, lse = gqa_kernel(
        q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, return_lse=True
    )
    if causal:
        surrogate = gqa_kernel(q, k, v, mask=mask, bias=bias, scale=scale)
        out = ValueFrom.apply(out.detach(), surrogate)
    return (out, lse) if return_lse else out


@planted("gqa", grads=True)
def gqa_empty_rows_nan_grad(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    bias: Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    return_lse: bool = False,
) -> Any:
    """Backward of an empty row gives NaN dQ (exp(s - lse) with lse = -inf)."""
    with torch.no_grad():
        _, lse0 = gqa_kernel(
            q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, return_lse=True
        )
    empty = torch.isneginf(lse0)[..., None]
    q = with_grad_hook(q, lambda g: torch.where(empty, float("nan"), g))
    return gqa_kernel(
        q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, return_lse=return_lse
    )
