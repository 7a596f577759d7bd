"""Correct implementations that are not the oracle, for the tolerance evidence and false-alarm tests.

`flash_gqa` does what our Triton kernels do, in torch: KV blocks visited in order with an online
softmax (running max and sum in fp32), exp2 with log2(e) folded into the scale, P rounded to the
input dtype before P @ V (for fp32: no rounding), fp32 accumulation, out rounded once. Its
backward is FlashAttention-2's: delta = rowsum(dO * O) from the rounded O, P recomputed from the
fp32 lse, dV = P^T dO with P rounded, dS = P * (dP - delta) in fp32, dQ = dS K and dK = dS^T Q
with dS rounded to the input dtype, dbias = dS summed in fp32 over the bias's broadcast dims.
`lower_precision(fn)` is the oracle computed in float32 with out rounded to the input dtype.
`tf32(fn)` is the oracle in float32 with q, k, v first rounded to TF32 (10 mantissa bits): what
an implementation that silently uses TF32 tensor cores computes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from attnverify.reference._common import causal_visible, expand_heads
from attnverify.reference.fp8 import dequantize
from attnverify.verify.gqa import sum_to

LOG2E = 1.0 / math.log(2.0)
BLOCK_N = 32
TF32_DROPPED_BITS = 13


class _FlashGqa(torch.autograd.Function):
    """Forward `_flash_forward`; backward FlashAttention-2's (module docstring)."""

    @staticmethod
    def forward(ctx: Any, q, k, v, bias, mask, causal, scale, block_n):  # type: ignore[override]
        out, lse = _flash_forward(q, k, v, mask, bias, causal, scale, block_n)
        ctx.save_for_backward(q, k, v, bias, mask, out, lse)
        ctx.causal, ctx.scale = causal, scale
        return out, lse

    @staticmethod
    def backward(ctx: Any, dout: torch.Tensor, dlse: torch.Tensor):  # type: ignore[override]
        q, k, v, bias, mask, out, lse = ctx.saved_tensors
        dtype = q.dtype
        hq, hk = q.shape[1], k.shape[1]
        g = hq // hk
        kf = expand_heads(k, hq, hk).float()
        vf = expand_heads(v, hq, hk).float()
        s = _scores(q.float(), kf, bias, mask, ctx.causal, ctx.scale, hk)
        finite = torch.isfinite(lse).unsqueeze(-1)
        p = torch.where(
            finite, torch.exp2(s - torch.where(finite, lse.unsqueeze(-1), 0.0) * LOG2E), 0.0
        )
        do = dout.to(dtype).float()
        delta = (do * out.float()).sum(dim=-1, keepdim=True)
        dv = torch.matmul(p.to(dtype).float().transpose(-1, -2), do)
        dp = torch.matmul(do, vf.transpose(-1, -2))
        ds = p * (dp - delta)
        ds_r = ds.to(dtype).float()
        dq = torch.matmul(ds_r, kf) * ctx.scale
        dk = torch.matmul(ds_r.transpose(-1, -2), q.float()) * ctx.scale
        b, lk = q.shape[0], k.shape[2]
        dk = dk.reshape(b, hk, g, lk, -1).sum(dim=2)
        dv = dv.reshape(b, hk, g, lk, -1).sum(dim=2)
        dbias = None
        if bias is not None and ctx.needs_input_grad[3]:
            dbias = sum_to(ds, tuple(bias.shape), hk).to(bias.dtype)
        return dq.to(dtype), dk.to(dtype), dv.to(dtype), dbias, None, None, None, None


def _scores(qf, kf, bias, mask, causal, scale, hk) -> torch.Tensor:
    """log2-domain scores (B, Hq, Lq, Lk) in fp32, masked entries -inf."""
    hq = qf.shape[1]
    s = torch.matmul(qf, kf.transpose(-1, -2)) * (scale * LOG2E)
    if bias is not None:
        s = s + expand_heads(bias, hq, hk).float() * LOG2E
    if mask is not None:
        s = torch.where(expand_heads(mask, hq, hk), s, -math.inf)
    if causal:
        s = torch.where(causal_visible(s.shape[-2], s.shape[-1], s.device), s, -math.inf)
    return s


def flash_gqa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    return_lse: bool = False,
    block_n: int = BLOCK_N,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """gqa_attention computed tile by tile like a flash kernel (see module docstring)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out, lse = _FlashGqa.apply(q, k, v, bias, mask, causal, scale, block_n)
    return (out, lse) if return_lse else out


def _flash_forward(q, k, v, mask, bias, causal, scale, block_n, p_dtype=None, out_dtype=None):
    """Forward of `flash_gqa`: (out in q's dtype or out_dtype, lse float32); P is rounded to
    p_dtype (default q's dtype) before P @ V."""
    dtype = q.dtype
    p_dtype = p_dtype or dtype
    hq, hk = q.shape[1], k.shape[1]
    lq, lk = q.shape[2], k.shape[2]
    qf = q.float()
    kf = expand_heads(k, hq, hk).float()
    vf = expand_heads(v, hq, hk)
    visible = expand_heads(mask, hq, hk) if mask is not None else None
    if causal:
        c = causal_visible(lq, lk, q.device)
        visible = c if visible is None else visible & c
    bias_f = expand_heads(bias, hq, hk).float() * LOG2E if bias is not None else None
    shape = (*q.shape[:3], 1)
    m = torch.full(shape, -math.inf, device=q.device)
    l = torch.zeros(shape, device=q.device)
    acc = torch.zeros(q.shape, device=q.device)
    for j0 in range(0, lk, block_n):
        j1 = min(lk, j0 + block_n)
        s = torch.matmul(qf, kf[..., j0:j1, :].transpose(-1, -2)) * (scale * LOG2E)
        if bias_f is not None:
            s = s + bias_f[..., j0:j1] if bias_f.shape[-1] > 1 else s + bias_f
        if visible is not None:
            vis = visible[..., j0:j1] if visible.shape[-1] > 1 else visible
            s = torch.where(vis, s, -math.inf)
        m_new = torch.maximum(m, s.detach().amax(dim=-1, keepdim=True))
        m_safe = torch.where(torch.isfinite(m_new), m_new, 0.0)
        p = torch.exp2(s - m_safe)
        alpha = torch.exp2(m - m_safe)
        l = l * alpha + p.sum(dim=-1, keepdim=True)
        pv = torch.matmul(p.to(p_dtype).float(), vf[..., j0:j1, :].float())
        acc = acc * alpha + pv
        m = m_new
    has = l > 0
    out = torch.where(has, acc / torch.where(has, l, 1.0), 0.0).to(out_dtype or dtype)
    m_safe = torch.where(torch.isfinite(m), m, 0.0)
    lse = torch.where(has, (m_safe + torch.log2(torch.where(has, l, 1.0))) / LOG2E, -math.inf)
    return out, lse.squeeze(-1)


def flash_fp8(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_descale: torch.Tensor,
    k_descale: torch.Tensor,
    v_descale: torch.Tensor,
    *,
    causal: bool = False,
    scale: float | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """fp8_attention like the fp8 kernel: dequantized fp32 scores, online softmax over KV blocks,
    P = exp2(s - running max) rounded to V's fp8 dtype per block, out in out_dtype."""
    qd, kd, vd = (
        dequantize(x, d, torch.float32) for x, d in ((q, q_descale), (k, k_descale), (v, v_descale))
    )
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out, lse = _flash_forward(qd, kd, vd, None, None, causal, scale, BLOCK_N, v.dtype, out_dtype)
    return (out, lse) if return_lse else out


def lower_precision(fn: Callable[..., Any], out_dtype_key: str | None = None) -> Callable[..., Any]:
    """The oracle `fn` computed in float32, out rounded to the input dtype (or to the
    `out_dtype_key` keyword's value), lse in float32."""

    def run(*args: Any, **kwargs: Any) -> Any:
        first = args[0]
        out_dtype = kwargs.get(out_dtype_key, first.dtype) if out_dtype_key else first.dtype
        result = fn(*args, **kwargs, compute_dtype=torch.float32)
        out, lse = result
        return out.to(out_dtype), lse.float()

    return run


def round_tf32(x: torch.Tensor) -> torch.Tensor:
    """Round float32 values to TF32 (10 mantissa bits; round to nearest, ties away)."""
    bits = x.float().contiguous().view(torch.int32)
    half = 1 << (TF32_DROPPED_BITS - 1)
    rounded = (bits + half) & ~((1 << TF32_DROPPED_BITS) - 1)
    return rounded.view(torch.float32).reshape(x.shape)


def tf32(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The oracle `fn` in float32 with q, k, v rounded to TF32 first (a TF32 GEMM's inputs)."""

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        out, lse = fn(
            round_tf32(q),
            round_tf32(k),
            round_tf32(v),
            *args,
            **kwargs,
            compute_dtype=torch.float32,
        )
        return out.to(q.dtype), lse.float()

    return run
