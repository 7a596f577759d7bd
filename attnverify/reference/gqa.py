"""Oracle for GQA attention with a broadcast boolean mask and an additive bias.

Layouts: q (B, Hq, Lq, D); k, v (B, Hk, Lk, D); mask, bias (Bm, Hm, Lqm, Lkm) broadcast.
Float64 by default, differentiable in q, k, v and bias. Kernel: `attnverify.kernels.gqa`.
"""

from __future__ import annotations

import torch

from attnverify.reference._common import attend
from attnverify.validation import ORACLE_DTYPES, check_gqa_inputs


def gqa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    return_lse: bool = False,
    compute_dtype: torch.dtype = torch.float64,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Grouped-query attention: softmax(scale * q k^T + bias, masked) v, in `compute_dtype`.

    Scores `s[i, j] = scale * <q_i, k_j> + bias[i, j]` (the bias is not scaled); masked and
    causally hidden keys get -inf. Query head h reads kv head h // G with G = Hq // Hk.
    Causal with Lq != Lk is bottom-right aligned: query i sees key j iff j <= i + Lk - Lq::

        Lq=2, Lk=4:  q0: x x x .      Lq=4, Lk=2:  q0: . .   (empty row)
                     q1: x x x x                   q1: . .   (empty row)
                                                   q2: x .
                                                   q3: x x

    Args:
        q: (B, Hq, Lq, D) float16 | bfloat16 | float32 | float64.
        k: (B, Hk, Lk, D), same dtype as q. Hq % Hk == 0.
        v: (B, Hk, Lk, D), same dtype as q.
        mask: (Bm, Hm, Lqm, Lkm) bool, True = attend; Bm in {1, B}, Hm in {1, Hk, Hq},
            Lqm in {1, Lq}, Lkm in {1, Lk}. A kv-headed mask (Hm == Hk) is read at h // G.
        bias: (Bm, Hm, Lqm, Lkm) q's dtype or float32, same broadcast rules as mask. Its
            gradient has the bias's shape: summed over every broadcast dim (and the group).
        causal: bottom-right causal masking, combinable with mask and bias.
        scale: multiplies q.k; default 1 / sqrt(D).
        return_lse: also return the natural-log logsumexp of each row.
        compute_dtype: dtype all arithmetic runs in (float64: the oracle).

    Returns:
        out (B, Hq, Lq, D), and with return_lse also lse (B, Hq, Lq), both in compute_dtype.
        A row with no visible key gives out 0, lse -inf and zero gradients, never NaN.

    Raises:
        TypeError, ValueError: inputs outside the rules above (see `attnverify.validation`).
    """
    scale = check_gqa_inputs(q, k, v, mask, bias, scale, dtypes=ORACLE_DTYPES)
    out, lse = attend(
        q, k, v, scale=scale, mask=mask, bias=bias, causal=causal, compute_dtype=compute_dtype
    )
    return (out, lse) if return_lse else out


__all__ = ["gqa_attention"]
