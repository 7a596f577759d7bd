"""Planted gqa bugs in the forward pass (mask, causal, bias, GQA mapping, softmax, memory)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from attnverify import reference
from attnverify.reference._common import NEG_INF, expand_heads
from attnverify.validation import resolve_scale

from ._kernels import (
    and_mask,
    as_if_contiguous,
    finish,
    gqa_kernel,
    round_tf32,
    visible_keys,
)
from ._registry import planted

LN2 = math.log(2.0)
FULLY_MASKED_FILL = -1e30


@planted("gqa")
def gqa_head_modulo(
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
    """GQA mapping h % Hk instead of h // G (query heads interleaved across kv heads)."""
    hq, hk = q.shape[1], k.shape[1]
    idx = torch.arange(hq, device=q.device) % hk
    return gqa_kernel(
        q,
        k[:, idx],
        v[:, idx],
        mask=expand_heads(mask, hq, hk),
        bias=expand_heads(bias, hq, hk),
        causal=causal,
        scale=scale,
        return_lse=return_lse,
    )


@planted("gqa")
def gqa_causal_top_left(
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
    """Causal mask aligned top-left (j <= i) when Lq != Lk, instead of bottom-right."""
    lq, lk = q.shape[2], k.shape[2]
    if causal and lq != lk:
        top_left = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril()[None, None]
        mask, causal = and_mask(mask, top_left), False
    return gqa_kernel(
        q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, return_lse=return_lse
    )


@planted("gqa")
def gqa_decode_top_left(
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
    """Decode fast path (Lq = 1) applies top-left causal: the one query sees only key 0."""
    if causal and q.shape[2] == 1:
        first = torch.arange(k.shape[2], device=q.device)[None, None, None] == 0
        mask, causal = and_mask(mask, first), False
    return gqa_kernel(
        q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, return_lse=return_lse
    )


@planted("gqa")
def gqa_small_lq_ignores_causal(
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
    """Small-Lq (<= 16, speculative decode) path dispatched to a decode kernel that drops causal."""
    if q.shape[2] <= 16:
        causal = False
    return gqa_kernel(
        q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, return_lse=return_lse
    )


@planted("gqa")
def gqa_bias_scaled(
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
    """Bias multiplied by the softmax scale (scale folded after adding the bias)."""
    s = resolve_scale(scale, q.shape[-1])
    bias = None if bias is None else bias * s
    return gqa_kernel(q, k, v, mask=mask, bias=bias, causal=causal, scale=s, return_lse=return_lse)


@planted("gqa")
def gqa_bias_after_softmax(
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
    """Bias added to the probabilities after softmax instead of to the scores."""
    out, lse = reference.gqa_attention(
        q, k, v, mask=mask, causal=causal, scale=scale, return_lse=True, compute_dtype=q.dtype
    )
    if bias is not None:
        visible = visible_keys(q, k, mask, causal)
        hq, hk = q.shape[1], k.shape[1]
        p_bias = expand_heads(bias, hq, hk).to(q.dtype)
        if visible is not None:
            p_bias = torch.where(visible, p_bias, 0.0)
        out = out + torch.matmul(p_bias.expand(*q.shape[:3], k.shape[2]), expand_heads(v, hq, hk))
    return finish(out, lse, q.dtype, return_lse)


@planted("gqa")
def gqa_kv_mask_head0(
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
    """Kv-headed mask (Hm == Hk < Hq) read from head 0 for every head (broadcast assumed)."""
    if mask is not None and mask.shape[1] == k.shape[1] != q.shape[1]:
        mask = mask[:, :1]
    return gqa_kernel(
        q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, return_lse=return_lse
    )


@planted("gqa")
def gqa_kv_bias_head_modulo(
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
    """Kv-headed bias (Hm == Hk < Hq) read at head h % Hk instead of h // G."""
    hq, hk = q.shape[1], k.shape[1]
    if bias is not None and bias.shape[1] == hk != hq:
        bias = bias[:, torch.arange(hq, device=q.device) % hk]
    return gqa_kernel(
        q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, return_lse=return_lse
    )


@planted("gqa")
def gqa_empty_rows_nan(
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
    """Rows with no visible key give NaN (0 / 0 in the final normalisation)."""
    out, lse = gqa_kernel(
        q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, return_lse=True
    )
    out = torch.where(torch.isneginf(lse)[..., None], float("nan"), out)
    return (out, lse) if return_lse else out


@planted("gqa")
def gqa_empty_rows_mean_v(
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
    """Hidden keys get a large finite negative instead of -inf: empty rows give mean(V)."""
    visible = visible_keys(q, k, mask, causal)
    if visible is not None:
        hidden = torch.where(visible, 0.0, FULLY_MASKED_FILL)
        bias = hidden if bias is None else expand_heads(bias, q.shape[1], k.shape[1]) + hidden
    return gqa_kernel(
        q, k, v, bias=bias, scale=scale, return_lse=return_lse, compute_dtype=torch.float32
    )


@planted("gqa")
def gqa_drop_last_key(
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
    """Key loop bound off by one (j < Lk - 1): the last key is never attended."""
    lk = k.shape[2]
    not_last = (torch.arange(lk, device=q.device) < lk - 1)[None, None, None]
    return gqa_kernel(
        q,
        k,
        v,
        mask=and_mask(mask, not_last),
        bias=bias,
        causal=causal,
        scale=scale,
        return_lse=return_lse,
    )


@planted("gqa")
def gqa_phantom_keys(
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
    """No bounds mask on the last partial 32-key tile: padded keys (zeros) enter the softmax."""
    lk = k.shape[2]
    pad = -lk % 32
    if pad == 0 or lk == 0:
        return gqa_kernel(
            q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, return_lse=return_lse
        )
    s = resolve_scale(scale, q.shape[-1])
    visible = visible_keys(q, k, mask, causal)
    if visible is not None:
        visible = visible.expand(*visible.shape[:-1], lk)
        phantom = torch.ones(*visible.shape[:-1], pad, dtype=torch.bool, device=q.device)
        if causal:
            phantom = torch.zeros_like(phantom)
        visible = torch.cat([visible, phantom], dim=-1)
    if bias is not None:
        bias = torch.nn.functional.pad(bias, (0, pad if bias.shape[-1] > 1 else 0))
    zeros = k.new_zeros(*k.shape[:2], pad, k.shape[3])
    return gqa_kernel(
        q,
        torch.cat([k, zeros], dim=2),
        torch.cat([v, zeros], dim=2),
        mask=visible,
        bias=bias,
        scale=s,
        return_lse=return_lse,
    )


@planted("gqa")
def gqa_no_max_subtraction(
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
    """Softmax without subtracting the row max: exp overflows (inf / inf) on peaked scores."""
    s = resolve_scale(scale, q.shape[-1])
    hq, hk = q.shape[1], k.shape[1]
    kf, vf = (expand_heads(x, hq, hk).float() for x in (k, v))
    scores = torch.matmul(q.float(), kf.transpose(-1, -2)) * s
    if bias is not None:
        scores = scores + expand_heads(bias, hq, hk).float()
    visible = visible_keys(q, k, mask, causal)
    p = torch.exp(scores)
    if visible is not None:
        p = torch.where(visible, p, 0.0)
    l = p.sum(-1, keepdim=True)
    has_key = torch.ones_like(l, dtype=torch.bool)
    if visible is not None:
        has_key = visible.expand_as(p).any(-1, keepdim=True)
    out = torch.where(has_key, torch.matmul(p, vf) / l, 0.0)
    lse = torch.where(has_key, torch.log(l), NEG_INF).squeeze(-1)
    return finish(out, lse, q.dtype, return_lse)


@planted("gqa")
def gqa_scale_off_one_percent(
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
    """Softmax scale off by 1% (a rounded constant, e.g. 0.088 for 1/sqrt(128))."""
    s = resolve_scale(scale, q.shape[-1]) * 1.01
    return gqa_kernel(q, k, v, mask=mask, bias=bias, causal=causal, scale=s, return_lse=return_lse)


@planted("gqa")
def gqa_default_scale_padded_dim(
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
    """Default scale 1/sqrt(BLOCK_D) from the padded head dim (next power of two), not D."""
    if scale is None:
        scale = 1.0 / math.sqrt(1 << (q.shape[-1] - 1).bit_length())
    return gqa_kernel(
        q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, return_lse=return_lse
    )


@planted("gqa")
def gqa_lse_log2(
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
    """LSE returned in base 2 (the kernel's exp2 domain) instead of natural log."""
    out, lse = gqa_kernel(
        q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, return_lse=True
    )
    return (out, lse / LN2) if return_lse else out


@planted("gqa")
def gqa_strides_ignored(
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
    """Strides ignored: q, k, v read from their storage as if contiguous (a raw .view)."""
    q, k, v = (as_if_contiguous(x) for x in (q, k, v))
    return gqa_kernel(
        q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, return_lse=return_lse
    )


@planted("gqa")
def gqa_storage_offset_ignored(
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
    """Storage offset ignored: the allocation's base pointer used instead of data_ptr()."""
    q, k, v = (
        torch.as_strided(x, x.shape, x.stride(), 0) if x.storage_offset() else x for x in (q, k, v)
    )
    return gqa_kernel(
        q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, return_lse=return_lse
    )


@planted("gqa")
def gqa_padded_head_dim_garbage(
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
    """Head dim padded to a multiple of 16 without a load mask: the pad reads the next row."""
    d = q.shape[-1]
    pad = -d % 16
    s = resolve_scale(scale, d)
    if pad:
        q, k, v = (torch.cat([x, _next_row(x)[..., :pad]], dim=-1) for x in (q, k, v))
    out, lse = gqa_kernel(q, k, v, mask=mask, bias=bias, causal=causal, scale=s, return_lse=True)
    out = out[..., :d]
    return (out, lse) if return_lse else out


def _next_row(x: torch.Tensor) -> torch.Tensor:
    """For each row of x (..., D), the row that follows it in contiguous memory (wrapping)."""
    rows = x.reshape(-1, x.shape[-1])
    return torch.roll(rows, -1, dims=0).reshape(x.shape)


@planted("gqa")
def gqa_last_partial_query_tile(
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
    """Last partial 16-row query tile stores each row's result one row up (pointer off by one)."""
    out, lse = gqa_kernel(
        q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, return_lse=True
    )
    lq = q.shape[2]
    start = lq - lq % 16
    if lq > 16 and start < lq:
        rows = torch.arange(lq, device=q.device)
        src = torch.where(rows >= start, torch.clamp(rows + 1, max=lq - 1), rows)
        out, lse = out[:, :, src], lse[:, :, src]
    return (out, lse) if return_lse else out


@planted("gqa", dtype="float32")
def gqa_fp32_as_tf32(
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
    """float32 inputs multiplied in TF32 (10-bit mantissa) instead of IEEE fp32."""
    if q.dtype == torch.float32:
        q, k, v = (round_tf32(x) for x in (q, k, v))
    return gqa_kernel(
        q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, return_lse=return_lse
    )
