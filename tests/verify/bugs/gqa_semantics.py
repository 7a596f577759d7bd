"""Planted gqa bugs in how the contract is read: mask polarity, the causal diagonal, bias
broadcasting, the lse definition. Added after the strategies were tuned to the rest of the
catalog, so they also measure detection of bugs the strategies were not shaped around."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from attnverify.reference._common import expand_heads
from attnverify.validation import resolve_scale

from ._kernels import and_mask, gqa_kernel, visible_keys
from ._registry import planted


@planted("gqa")
def gqa_mask_inverted(
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
    """Boolean mask polarity inverted (True read as "masked out", the PyTorch key_padding_mask way)."""
    return gqa_kernel(
        q,
        k,
        v,
        mask=None if mask is None else ~mask,
        bias=bias,
        causal=causal,
        scale=scale,
        return_lse=return_lse,
    )


@planted("gqa")
def gqa_causal_diagonal_excluded(
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
    """Causal comparison off by one (j < i + Lk - Lq): a query never sees its own key."""
    if causal:
        lq, lk = q.shape[2], k.shape[2]
        i = torch.arange(lq, device=q.device)[:, None]
        j = torch.arange(lk, device=q.device)[None, :]
        mask, causal = and_mask(mask, (j < i + lk - lq)[None, None]), False
    return gqa_kernel(
        q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, return_lse=return_lse
    )


@planted("gqa")
def gqa_bias_query_broadcast_assumed(
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
    """Bias read with query stride 0 (an ALiBi/key-padding-only kernel): row 0 used for every row."""
    if bias is not None and bias.shape[2] > 1:
        bias = bias[:, :, :1]
    return gqa_kernel(
        q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, return_lse=return_lse
    )


@planted("gqa")
def gqa_lse_missing_max(
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
    """lse stored as log(l) of the running sum, without adding back the row max m."""
    out, lse = gqa_kernel(
        q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, return_lse=True
    )
    hq, hk = q.shape[1], k.shape[1]
    s = torch.matmul(q.float(), expand_heads(k, hq, hk).float().transpose(-1, -2))
    s = s * resolve_scale(scale, q.shape[-1])
    if bias is not None:
        s = s + expand_heads(bias, hq, hk).float()
    visible = visible_keys(q, k, mask, causal)
    if visible is not None:
        s = s.masked_fill(~visible, float("-inf"))
    row_max = s.amax(-1) if s.shape[-1] else torch.zeros_like(lse)
    lse = torch.where(torch.isfinite(row_max), lse - row_max, lse)
    return (out, lse) if return_lse else out
