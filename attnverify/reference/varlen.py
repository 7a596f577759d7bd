"""Oracle for variable-length (packed) attention, e.g. per-image attention in vision encoders.

Layouts: q (Tq, Hq, D); k, v (Tk, Hk, D); sequences delimited by cu_seqlens (N+1,) int32.
Float64 by default, differentiable in q, k, v. Kernel: `attnverify.kernels.varlen`.
"""

from __future__ import annotations

import torch

from attnverify.reference._common import attend
from attnverify.validation import ORACLE_DTYPES, check_grid_thw, check_varlen_inputs


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    *,
    causal: bool = False,
    scale: float | None = None,
    return_lse: bool = False,
    compute_dtype: torch.dtype = torch.float64,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention within each packed sequence; no token attends across a sequence boundary.

    Sequence n holds query rows cu_seqlens_q[n]:cu_seqlens_q[n+1] and key rows
    cu_seqlens_k[n]:cu_seqlens_k[n+1]. Zero-length sequences are allowed. Causal is bottom-right
    aligned per sequence: query i of a sequence sees its key j iff j <= i + Lk_n - Lq_n.
    Query head h reads kv head h // G with G = Hq // Hk.

    Args:
        q: (Tq, Hq, D) float16 | bfloat16 | float32 | float64.
        k: (Tk, Hk, D), same dtype as q. Hq % Hk == 0.
        v: (Tk, Hk, D), same dtype as q.
        cu_seqlens_q: (N+1,) int32 on q's device or on the CPU, starts at 0, non-decreasing,
            last entry Tq.
        cu_seqlens_k: (N+1,) int32 on q's device or on the CPU, starts at 0, non-decreasing,
            last entry Tk.
        max_seqlen_q, max_seqlen_k: upper bounds on the lengths (None: computed); a value
            below the real maximum is an error.
        causal: bottom-right causal per sequence.
        scale: multiplies q.k; default 1 / sqrt(D).
        return_lse: also return the natural-log logsumexp of each row.
        compute_dtype: dtype all arithmetic runs in (float64: the oracle).

    Returns:
        out (Tq, Hq, D), and with return_lse also lse (Hq, Tq), in compute_dtype. Rows with no
        visible key (Lk_n = 0, or causally hidden) give out 0, lse -inf and zero gradients.

    Raises:
        TypeError, ValueError: inputs outside the rules above (see `attnverify.validation`).
    """
    meta = check_varlen_inputs(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, ORACLE_DTYPES
    )
    outs, lses = [], []
    start_q = start_k = 0
    # N = 0 (cu_seqlens == [0]) means Tq = Tk = 0: one empty sequence keeps out in the graph.
    lengths = list(zip(meta.seqlens_q, meta.seqlens_k, strict=True)) or [(0, 0)]
    for lq, lk in lengths:
        qs = q[start_q : start_q + lq].transpose(0, 1).unsqueeze(0)
        ks = k[start_k : start_k + lk].transpose(0, 1).unsqueeze(0)
        vs = v[start_k : start_k + lk].transpose(0, 1).unsqueeze(0)
        start_q, start_k = start_q + lq, start_k + lk
        o, lse = attend(qs, ks, vs, scale=meta.scale, causal=causal, compute_dtype=compute_dtype)
        outs.append(o[0].transpose(0, 1))
        lses.append(lse[0])
    out = torch.cat(outs, dim=0)
    lse = torch.cat(lses, dim=1)
    return (out, lse) if return_lse else out


def cu_seqlens_from_grid_thw(grid_thw: torch.Tensor) -> torch.Tensor:
    """cu_seqlens for a vision encoder's packed patches: one sequence per frame of each image.

    Args:
        grid_thw: (num_images, 3) integer tensor of (t, h, w) patch counts per image.

    Returns:
        (N+1,) int32 on grid_thw's device, N = sum of t; every frame is a sequence of h * w
        tokens, in image order (Qwen2-VL family convention).

    Raises:
        TypeError, ValueError: grid_thw not an integer (num_images, 3) tensor, or negative.
    """
    grid_thw = check_grid_thw(grid_thw)
    frame_lens = torch.repeat_interleave(grid_thw[:, 1] * grid_thw[:, 2], grid_thw[:, 0])
    cu = torch.zeros(frame_lens.numel() + 1, dtype=torch.int32, device=grid_thw.device)
    cu[1:] = frame_lens.cumsum(0)
    return cu


__all__ = ["cu_seqlens_from_grid_thw", "varlen_attention"]
