"""Oracle for fp8 attention, and the fp8 quantizer the tests and verifier use.

Layouts as gqa: q (B, Hq, Lq, D); k, v (B, Hk, Lk, D), in an fp8 dtype. The real value of an
fp8 tensor is `x.float() * descale`, descale float32 of shape () or (B, Hk); a (B, Hk) q
descale is read by query head h at kv head h // G. Forward only. Kernel: `attnverify.kernels.fp8`.
"""

from __future__ import annotations

import torch

from attnverify.reference._common import attend
from attnverify.validation import FP8_DTYPES, check_fp8_inputs, check_tensor

GRANULARITIES = ("tensor", "head")


def dequantize(x: torch.Tensor, descale: torch.Tensor, compute_dtype: torch.dtype) -> torch.Tensor:
    """Real values of fp8 `x` (B, H, L, D): `x * descale`, descale () or (B, Hk) mapped to H."""
    xd = x.to(compute_dtype)
    if descale.dim() == 0:
        return xd * descale.to(compute_dtype)
    groups = x.shape[1] // descale.shape[1]
    d = descale.to(compute_dtype).repeat_interleave(groups, dim=1)
    return xd * d[:, :, None, None]


def fp8_attention(
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
    compute_dtype: torch.dtype = torch.float64,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention on dequantized fp8 inputs: gqa_attention(q * dq, k * dk, v * dv).

    Args:
        q: (B, Hq, Lq, D) float8_e4m3fn | float8_e5m2 | float8_e4m3fnuz | float8_e5m2fnuz.
        k, v: (B, Hk, Lk, D) fp8 (any of the above). Hq % Hk == 0.
        q_descale, k_descale, v_descale: float32 of shape () or (B, Hk).
        causal: bottom-right causal (query i sees key j iff j <= i + Lk - Lq).
        scale: multiplies the dequantized q.k; default 1 / sqrt(D).
        out_dtype: bfloat16 | float16, the kernel's output dtype (validated; the oracle
            returns compute_dtype).
        return_lse: also return the natural-log logsumexp of each row.
        compute_dtype: dtype all arithmetic runs in (float64: the oracle).

    Returns:
        out (B, Hq, Lq, D), and with return_lse lse (B, Hq, Lq), in compute_dtype. Rows with
        no visible key give out 0 and lse -inf.

    Raises:
        TypeError, ValueError: non-fp8 inputs, bad descale shapes/dtypes, bad out_dtype, ...
    """
    scale = check_fp8_inputs(q, k, v, q_descale, k_descale, v_descale, scale, out_dtype)
    qd, kd, vd = (
        dequantize(x, d, compute_dtype) for x, d in ((q, q_descale), (k, k_descale), (v, v_descale))
    )
    out, lse = attend(qd, kd, vd, scale=scale, causal=causal, compute_dtype=compute_dtype)
    return (out, lse) if return_lse else out


def quantize_fp8(
    x: torch.Tensor,
    dtype: torch.dtype,
    granularity: str = "tensor",
    *,
    kv_heads: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize x (B, H, L, D) to fp8 with a per-tensor or per-(batch, kv-head) descale.

    Args:
        x: (B, H, L, D) floating tensor.
        dtype: target fp8 dtype.
        granularity: "tensor" (descale shape ()) or "head" (descale shape (B, Hk)).
        kv_heads: Hk for granularity "head" (default H); query heads h share the descale of
            kv head h // (H // Hk).

    Returns:
        (x_fp8, descale): descale float32 with `x_fp8.float() * descale ~= x`; the largest
        magnitude of each group maps to the format's max. An all-zero group gets descale 1.

    Raises:
        TypeError, ValueError: dtype not fp8, unknown granularity, H % kv_heads != 0.
    """
    if dtype not in FP8_DTYPES:
        raise TypeError(
            f"dtype must be an fp8 dtype ({', '.join(map(str, FP8_DTYPES))}); got {dtype}"
        )
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}; got {granularity!r}")
    check_tensor("x", x, 4, (torch.float16, torch.bfloat16, torch.float32, torch.float64))
    fmax = torch.finfo(dtype).max
    xf = x.detach().to(torch.float32)
    b, h, length, d = x.shape
    hk = h if kv_heads is None else kv_heads
    if hk < 1 or h % hk:
        raise ValueError(f"kv_heads must divide the head count H={h}; got {kv_heads}")
    if granularity == "tensor":
        groups = xf.abs().reshape(1, xf.numel())
    else:
        groups = xf.abs().reshape(b, hk, (h // hk) * length * d)
    # One appended zero keeps amax defined on empty groups (L = 0); |x| >= 0 leaves it unchanged.
    amax = torch.nn.functional.pad(groups, (0, 1)).amax(dim=-1)
    descale = torch.where(amax > 0, amax / fmax, 1.0).to(torch.float32)
    if granularity == "tensor":
        descale = descale.reshape(())
        full = descale
    else:
        full = descale.repeat_interleave(h // hk, dim=1)[:, :, None, None]
    x_fp8 = (xf / full).clamp(-fmax, fmax).to(dtype)
    return x_fp8, descale


__all__ = ["dequantize", "fp8_attention", "quantize_fp8"]
