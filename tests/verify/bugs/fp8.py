"""Planted fp8 attention bugs: descales and causal alignment."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from attnverify import reference
from attnverify.reference._common import attend
from attnverify.validation import resolve_scale

from ._kernels import (
    finish,
)
from ._registry import planted


def fp8_kernel(
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
) -> Any:
    """A correct fp8 "kernel": the oracle in float32, out rounded to out_dtype."""
    out, lse = reference.fp8_attention(
        q,
        k,
        v,
        q_descale,
        k_descale,
        v_descale,
        causal=causal,
        scale=scale,
        out_dtype=out_dtype,
        return_lse=True,
        compute_dtype=torch.float32,
    )
    return finish(out, lse, out_dtype, return_lse)


@planted("fp8", dtype="float8_e4m3fn")
def fp8_missing_v_descale(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_descale: Tensor,
    k_descale: Tensor,
    v_descale: Tensor,
    *,
    causal: bool = False,
    scale: float | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
    return_lse: bool = False,
) -> Any:
    """v_descale never applied: the output stays in V's quantized units."""
    return fp8_kernel(
        q,
        k,
        v,
        q_descale,
        k_descale,
        torch.ones_like(v_descale),
        causal=causal,
        scale=scale,
        out_dtype=out_dtype,
        return_lse=return_lse,
    )


@planted("fp8", dtype="float8_e4m3fn")
def fp8_per_tensor_descale(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_descale: Tensor,
    k_descale: Tensor,
    v_descale: Tensor,
    *,
    causal: bool = False,
    scale: float | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
    return_lse: bool = False,
) -> Any:
    """Per-(batch, kv head) descales read as per-tensor: element [0, 0] used for every head."""
    q_descale, k_descale, v_descale = (
        d.reshape(-1)[0] if d.dim() else d for d in (q_descale, k_descale, v_descale)
    )
    return fp8_kernel(
        q,
        k,
        v,
        q_descale,
        k_descale,
        v_descale,
        causal=causal,
        scale=scale,
        out_dtype=out_dtype,
        return_lse=return_lse,
    )


@planted("fp8", dtype="float8_e4m3fn")
def fp8_causal_top_left(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_descale: Tensor,
    k_descale: Tensor,
    v_descale: Tensor,
    *,
    causal: bool = False,
    scale: float | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
    return_lse: bool = False,
) -> Any:
    """fp8 path with top-left causal when Lq != Lk (alignment copied from an old kernel)."""
    lq, lk = q.shape[2], k.shape[2]
    if not (causal and lq != lk):
        return fp8_kernel(
            q,
            k,
            v,
            q_descale,
            k_descale,
            v_descale,
            causal=causal,
            scale=scale,
            out_dtype=out_dtype,
            return_lse=return_lse,
        )
    from attnverify.reference.fp8 import dequantize

    qd, kd, vd = (
        dequantize(x, d, torch.float32) for x, d in ((q, q_descale), (k, k_descale), (v, v_descale))
    )
    top_left = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril()[None, None]
    out, lse = attend(
        qd,
        kd,
        vd,
        scale=resolve_scale(scale, q.shape[-1]),
        mask=top_left,
        compute_dtype=torch.float32,
    )
    return finish(out, lse, out_dtype, return_lse)


@planted("fp8", dtype="float8_e4m3fn")
def fp8_descales_swapped(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_descale: Tensor,
    k_descale: Tensor,
    v_descale: Tensor,
    *,
    causal: bool = False,
    scale: float | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
    return_lse: bool = False,
) -> Any:
    """k_descale and v_descale swapped (argument order of a different fp8 API)."""
    return fp8_kernel(
        q,
        k,
        v,
        q_descale,
        v_descale,
        k_descale,
        causal=causal,
        scale=scale,
        out_dtype=out_dtype,
        return_lse=return_lse,
    )
