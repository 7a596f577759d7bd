"""Planted varlen bugs: sequence boundaries, per-sequence causal, lse layout, GQA backward."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from attnverify.reference._common import NEG_INF
from attnverify.validation import resolve_scale

from ._kernels import (
    GroupFirstHead,
    gqa_kernel,
)
from ._registry import planted


def seq_ranges(cu: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) of each sequence from a cu_seqlens tensor."""
    values = cu.tolist()
    return list(itertools.pairwise(values))


def varlen_by_ranges(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ranges_q: list[tuple[int, int]],
    ranges_k: list[tuple[int, int]],
    *,
    causal: bool,
    scale: float | None,
    return_lse: bool,
    key_mask: Callable[[int, int, int, int], torch.Tensor | None] = lambda *_: None,
) -> Any:
    """A varlen "kernel" over explicit (start, end) ranges per sequence (bugs bend the ranges).

    `key_mask(n, lq, lk, start_q)` may return an extra (1, 1, Lq, Lk) mask for sequence n.
    Rows of q outside every range are left 0 (an unwritten output).
    """
    s = resolve_scale(scale, q.shape[-1])
    out = q * 0  # an unwritten output, still in the graph as a kernel's output is
    lse_t = torch.full((q.shape[0], q.shape[1]), NEG_INF, dtype=torch.float32, device=q.device)
    outs, lses, rows = [], [], []
    for n, ((qa, qb), (ka, kb)) in enumerate(zip(ranges_q, ranges_k, strict=True)):
        if qb <= qa:
            continue
        qs, ks, vs = (x.transpose(0, 1).unsqueeze(0) for x in (q[qa:qb], k[ka:kb], v[ka:kb]))
        o, l = gqa_kernel(
            qs,
            ks,
            vs,
            mask=key_mask(n, qb - qa, kb - ka, qa),
            causal=causal,
            scale=s,
            return_lse=True,
        )
        outs.append(o[0].transpose(0, 1))
        lses.append(l[0])
        rows.append(torch.arange(qa, qb, device=q.device))
    if outs:
        idx = torch.cat(rows)
        out = out.index_put((idx,), torch.cat(outs))
        lse_t = lse_t.index_put((idx,), torch.cat(lses, dim=1).transpose(0, 1))
    lse = lse_t.transpose(0, 1)
    return (out, lse) if return_lse else out


@planted("varlen")
def varlen_leak_next_key(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    *,
    causal: bool = False,
    scale: float | None = None,
    return_lse: bool = False,
) -> Any:
    """Key bound off by one (j <= end): each sequence also attends the next sequence's first key."""
    ranges_k = [(a, min(b + 1, k.shape[0])) for a, b in seq_ranges(cu_seqlens_k)]
    return varlen_by_ranges(
        q,
        k,
        v,
        seq_ranges(cu_seqlens_q),
        ranges_k,
        causal=causal,
        scale=scale,
        return_lse=return_lse,
    )


@planted("varlen")
def varlen_drop_last_key(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    *,
    causal: bool = False,
    scale: float | None = None,
    return_lse: bool = False,
) -> Any:
    """Per-sequence key loop bound off by one: each sequence's last key is never attended."""

    def not_last(n: int, lq: int, lk: int, start_q: int) -> torch.Tensor:
        return (torch.arange(lk, device=q.device) < lk - 1)[None, None, None]

    return varlen_by_ranges(
        q,
        k,
        v,
        seq_ranges(cu_seqlens_q),
        seq_ranges(cu_seqlens_k),
        causal=causal,
        scale=scale,
        return_lse=return_lse,
        key_mask=not_last,
    )


@planted("varlen")
def varlen_keys_use_cu_seqlens_q(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    *,
    causal: bool = False,
    scale: float | None = None,
    return_lse: bool = False,
) -> Any:
    """cu_seqlens_q used for the key ranges too (a self-attention-only assumption)."""
    ranges = seq_ranges(cu_seqlens_q)
    return varlen_by_ranges(
        q, k, v, ranges, ranges, causal=causal, scale=scale, return_lse=return_lse
    )


@planted("varlen")
def varlen_causal_packed_positions(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    *,
    causal: bool = False,
    scale: float | None = None,
    return_lse: bool = False,
) -> Any:
    """Causal compares packed positions (k_start + j <= q_start + i), not per-sequence bottom-right."""
    ranges_q, ranges_k = seq_ranges(cu_seqlens_q), seq_ranges(cu_seqlens_k)
    if not causal:
        return varlen_by_ranges(
            q, k, v, ranges_q, ranges_k, causal=False, scale=scale, return_lse=return_lse
        )

    def packed(n: int, lq: int, lk: int, start_q: int) -> torch.Tensor:
        i = torch.arange(lq, device=q.device)[:, None] + start_q
        j = torch.arange(lk, device=q.device)[None, :] + ranges_k[n][0]
        return (j <= i)[None, None]

    return varlen_by_ranges(
        q,
        k,
        v,
        ranges_q,
        ranges_k,
        causal=False,
        scale=scale,
        return_lse=return_lse,
        key_mask=packed,
    )


@planted("varlen")
def varlen_last_sequence_skipped(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    *,
    causal: bool = False,
    scale: float | None = None,
    return_lse: bool = False,
) -> Any:
    """Grid over N - 1 sequences (cu_seqlens.numel() - 2): the last sequence is never written."""
    return varlen_by_ranges(
        q,
        k,
        v,
        seq_ranges(cu_seqlens_q)[:-1],
        seq_ranges(cu_seqlens_k)[:-1],
        causal=causal,
        scale=scale,
        return_lse=return_lse,
    )


@planted("varlen")
def varlen_empty_sequence_nan(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    *,
    causal: bool = False,
    scale: float | None = None,
    return_lse: bool = False,
) -> Any:
    """Queries of a sequence with no visible key (Lk = 0, causal Lq > Lk) give NaN."""
    out, lse = varlen_by_ranges(
        q,
        k,
        v,
        seq_ranges(cu_seqlens_q),
        seq_ranges(cu_seqlens_k),
        causal=causal,
        scale=scale,
        return_lse=True,
    )
    out = torch.where(torch.isneginf(lse).transpose(0, 1)[..., None], float("nan"), out)
    return (out, lse) if return_lse else out


@planted("varlen")
def varlen_lse_token_major(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    *,
    causal: bool = False,
    scale: float | None = None,
    return_lse: bool = False,
) -> Any:
    """lse written token-major (Tq, Hq) into the (Hq, Tq) output (wrong layout, right shape)."""
    out, lse = varlen_by_ranges(
        q,
        k,
        v,
        seq_ranges(cu_seqlens_q),
        seq_ranges(cu_seqlens_k),
        causal=causal,
        scale=scale,
        return_lse=True,
    )
    lse = lse.transpose(0, 1).reshape(lse.shape)
    return (out, lse) if return_lse else out


@planted("varlen", grads=True)
def varlen_dkdv_one_head(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    *,
    causal: bool = False,
    scale: float | None = None,
    return_lse: bool = False,
) -> Any:
    """Varlen GQA backward: dK/dV from the first query head of each group only."""
    hq, hk = q.shape[1], k.shape[1]
    if hq != hk:
        k, v = (
            GroupFirstHead.apply(x.transpose(0, 1)[None], hq // hk)[0].transpose(0, 1)
            for x in (k, v)
        )
    return varlen_by_ranges(
        q,
        k,
        v,
        seq_ranges(cu_seqlens_q),
        seq_ranges(cu_seqlens_k),
        causal=causal,
        scale=scale,
        return_lse=return_lse,
    )


@planted("varlen")
def varlen_keys_bounded_by_max_seqlen(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    *,
    causal: bool = False,
    scale: float | None = None,
    return_lse: bool = False,
) -> Any:
    """Key loop bounded by max_seqlen_k instead of the sequence's own length (reads past its end)."""
    ranges_k = seq_ranges(cu_seqlens_k)
    longest = (
        max_seqlen_k if max_seqlen_k is not None else max((b - a for a, b in ranges_k), default=0)
    )
    ranges_k = [(a, min(a + longest, k.shape[0])) for a, _ in ranges_k]
    return varlen_by_ranges(
        q,
        k,
        v,
        seq_ranges(cu_seqlens_q),
        ranges_k,
        causal=causal,
        scale=scale,
        return_lse=return_lse,
    )
