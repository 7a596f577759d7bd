"""Planted paged-attention bugs: block tables, slots past seq_len, splits, descales, layout."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from attnverify import reference
from attnverify.reference._common import attend, causal_visible
from attnverify.reference.paged import gather_kv, split_bounds
from attnverify.validation import resolve_scale

from ._kernels import (
    finish,
)
from ._registry import planted


def paged_kernel(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    *,
    scale: float | None = None,
    k_descale: torch.Tensor | None = None,
    v_descale: torch.Tensor | None = None,
    num_splits: int | None = None,
    kv_layout: str = "NHD",
    return_lse: bool = False,
) -> Any:
    """A correct paged "kernel": the oracle in the input precision, rounded like a kernel."""
    out, lse = reference.paged_attention(
        q,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        scale=scale,
        k_descale=k_descale,
        v_descale=v_descale,
        num_splits=num_splits,
        kv_layout=kv_layout,
        return_lse=True,
        compute_dtype=q.dtype,
    )
    return finish(out, lse, q.dtype, return_lse)


def paged_split_kernel(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    *,
    scale: float | None,
    k_descale: torch.Tensor | None,
    v_descale: torch.Tensor | None,
    num_splits: int | None,
    kv_layout: str,
    return_lse: bool,
    merge: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    chunk: Callable[[int, int], tuple[int, int]] = lambda lo, hi: (lo, hi),
) -> Any:
    """Flash-decoding in float32: per-split partial states merged by `merge` (bugs swap it).

    `chunk(lo, hi)` may bend each split's key range.
    """
    s = resolve_scale(scale, q.shape[-1])
    lq = q.shape[2]
    outs, lses = [], []
    for b, seq_len in enumerate(seq_lens.tolist()):
        k = gather_kv(k_cache, block_tables[b], seq_len, kv_layout).float()
        v = gather_kv(v_cache, block_tables[b], seq_len, kv_layout).float()
        if k_descale is not None:
            k = k * k_descale.reshape(-1, 1, 1)
        if v_descale is not None:
            v = v * v_descale.reshape(-1, 1, 1)
        visible = causal_visible(lq, seq_len, q.device)
        parts = []
        for lo, hi in split_bounds(seq_len, num_splits or 1):
            lo, hi = chunk(lo, hi)
            parts.append(
                attend(
                    q[b : b + 1],
                    k[None, :, lo:hi],
                    v[None, :, lo:hi],
                    scale=s,
                    mask=visible[None, None, :, lo:hi],
                    compute_dtype=torch.float32,
                )
            )
        o, l = merge(torch.stack([p[0] for p in parts], -2), torch.stack([p[1] for p in parts], -1))
        outs.append(o)
        lses.append(l)
    return finish(torch.cat(outs), torch.cat(lses), q.dtype, return_lse)


def merge_correct(out: torch.Tensor, lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The oracle's merge in float32 (what a correct split-KV kernel does)."""
    return reference.merge_attention_states(out, lse, compute_dtype=torch.float32)


def average_states(out: torch.Tensor, lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return out.mean(-2), torch.logsumexp(lse, -1)


def merge_unguarded(out: torch.Tensor, lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An empty split's partial is acc / l = 0 / 0 = NaN, and the merge multiplies it by 0."""
    out = torch.where(torch.isneginf(lse)[..., None], float("nan"), out)
    m = lse.amax(-1, keepdim=True)
    w = torch.exp(lse - m)
    total = w.sum(-1, keepdim=True)
    return (w[..., None] * out).sum(-2) / total, (m + torch.log(total)).squeeze(-1)


@planted("paged")
def paged_blocks_in_physical_order(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    block_tables: Tensor,
    seq_lens: Tensor,
    *,
    scale: float | None = None,
    k_descale: Tensor | None = None,
    v_descale: Tensor | None = None,
    num_splits: int | None = None,
    kv_layout: str = "NHD",
    return_lse: bool = False,
) -> Any:
    """A request's blocks read in ascending physical order instead of block-table order."""
    bs = k_cache.shape[1] if kv_layout == "NHD" else k_cache.shape[2]
    tables = block_tables.clone()
    for b, n in enumerate(seq_lens.tolist()):
        used = -(-n // bs)
        tables[b, :used] = tables[b, :used].sort().values
    return paged_kernel(
        q,
        k_cache,
        v_cache,
        tables,
        seq_lens,
        scale=scale,
        k_descale=k_descale,
        v_descale=v_descale,
        num_splits=num_splits,
        kv_layout=kv_layout,
        return_lse=return_lse,
    )


@planted("paged")
def paged_block_table_ignored(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    block_tables: Tensor,
    seq_lens: Tensor,
    *,
    scale: float | None = None,
    k_descale: Tensor | None = None,
    v_descale: Tensor | None = None,
    num_splits: int | None = None,
    kv_layout: str = "NHD",
    return_lse: bool = False,
) -> Any:
    """Block table ignored: request b's logical block i read at physical block b * max_blocks + i."""
    b_, max_blocks = block_tables.shape
    num_blocks = k_cache.shape[0]
    ids = torch.arange(b_ * max_blocks, device=q.device).reshape(b_, max_blocks) % num_blocks
    return paged_kernel(
        q,
        k_cache,
        v_cache,
        ids.to(torch.int32),
        seq_lens,
        scale=scale,
        k_descale=k_descale,
        v_descale=v_descale,
        num_splits=num_splits,
        kv_layout=kv_layout,
        return_lse=return_lse,
    )


@planted("paged")
def paged_reads_past_seq_len(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    block_tables: Tensor,
    seq_lens: Tensor,
    *,
    scale: float | None = None,
    k_descale: Tensor | None = None,
    v_descale: Tensor | None = None,
    num_splits: int | None = None,
    kv_layout: str = "NHD",
    return_lse: bool = False,
) -> Any:
    """Whole last block read: slots past seq_len (stale or NaN) enter the softmax."""
    bs = k_cache.shape[1] if kv_layout == "NHD" else k_cache.shape[2]
    rounded = (-(-seq_lens // bs) * bs).to(torch.int32)
    return paged_kernel(
        q,
        k_cache,
        v_cache,
        block_tables,
        rounded,
        scale=scale,
        k_descale=k_descale,
        v_descale=v_descale,
        num_splits=num_splits,
        kv_layout=kv_layout,
        return_lse=return_lse,
    )


@planted("paged")
def paged_multi_token_ignores_causal(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    block_tables: Tensor,
    seq_lens: Tensor,
    *,
    scale: float | None = None,
    k_descale: Tensor | None = None,
    v_descale: Tensor | None = None,
    num_splits: int | None = None,
    kv_layout: str = "NHD",
    return_lse: bool = False,
) -> Any:
    """Speculative decode (Lq > 1) without causal: every new token sees the later new tokens."""
    b, hq, lq, d = q.shape
    out, lse = paged_kernel(
        q.transpose(1, 2).reshape(b * lq, hq, 1, d),
        k_cache,
        v_cache,
        block_tables.repeat_interleave(lq, dim=0),
        seq_lens.repeat_interleave(lq),
        scale=scale,
        k_descale=k_descale,
        v_descale=v_descale,
        num_splits=num_splits,
        kv_layout=kv_layout,
        return_lse=True,
    )
    out = out.reshape(b, lq, hq, d).transpose(1, 2)
    lse = lse.reshape(b, lq, hq).transpose(1, 2)
    return (out, lse) if return_lse else out


@planted("paged")
def paged_hnd_read_as_nhd(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    block_tables: Tensor,
    seq_lens: Tensor,
    *,
    scale: float | None = None,
    k_descale: Tensor | None = None,
    v_descale: Tensor | None = None,
    num_splits: int | None = None,
    kv_layout: str = "NHD",
    return_lse: bool = False,
) -> Any:
    """HND cache indexed with NHD strides (layout flag ignored)."""
    if kv_layout == "HND":
        nb, hk, bs, d = k_cache.shape
        k_cache, v_cache = (c.reshape(nb, bs, hk, d) for c in (k_cache, v_cache))
    return paged_kernel(
        q,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        scale=scale,
        k_descale=k_descale,
        v_descale=v_descale,
        num_splits=num_splits,
        kv_layout="NHD",
        return_lse=return_lse,
    )


@planted("paged")
def paged_zero_length_nan(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    block_tables: Tensor,
    seq_lens: Tensor,
    *,
    scale: float | None = None,
    k_descale: Tensor | None = None,
    v_descale: Tensor | None = None,
    num_splits: int | None = None,
    kv_layout: str = "NHD",
    return_lse: bool = False,
) -> Any:
    """Rows with no visible key (seq_len = 0, or hidden new tokens) give NaN (0 / 0)."""
    out, lse = paged_kernel(
        q,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        scale=scale,
        k_descale=k_descale,
        v_descale=v_descale,
        num_splits=num_splits,
        kv_layout=kv_layout,
        return_lse=True,
    )
    out = torch.where(torch.isneginf(lse)[..., None], float("nan"), out)
    return (out, lse) if return_lse else out


@planted("paged")
def paged_splits_plain_average(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    block_tables: Tensor,
    seq_lens: Tensor,
    *,
    scale: float | None = None,
    k_descale: Tensor | None = None,
    v_descale: Tensor | None = None,
    num_splits: int | None = None,
    kv_layout: str = "NHD",
    return_lse: bool = False,
) -> Any:
    """Split-KV partial outputs merged by a plain average instead of lse weights."""
    return paged_split_kernel(
        q,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        scale=scale,
        k_descale=k_descale,
        v_descale=v_descale,
        num_splits=num_splits,
        kv_layout=kv_layout,
        return_lse=return_lse,
        merge=average_states,
    )


@planted("paged")
def paged_empty_split_nan(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    block_tables: Tensor,
    seq_lens: Tensor,
    *,
    scale: float | None = None,
    k_descale: Tensor | None = None,
    v_descale: Tensor | None = None,
    num_splits: int | None = None,
    kv_layout: str = "NHD",
    return_lse: bool = False,
) -> Any:
    """Empty splits (more splits than keys, hidden rows) merged unguarded: NaN from -inf lse."""
    return paged_split_kernel(
        q,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        scale=scale,
        k_descale=k_descale,
        v_descale=v_descale,
        num_splits=num_splits,
        kv_layout=kv_layout,
        return_lse=return_lse,
        merge=merge_unguarded,
    )


@planted("paged")
def paged_split_drops_last_key(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    block_tables: Tensor,
    seq_lens: Tensor,
    *,
    scale: float | None = None,
    k_descale: Tensor | None = None,
    v_descale: Tensor | None = None,
    num_splits: int | None = None,
    kv_layout: str = "NHD",
    return_lse: bool = False,
) -> Any:
    """Split bounds off by one: each split's last key is dropped."""
    return paged_split_kernel(
        q,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        scale=scale,
        k_descale=k_descale,
        v_descale=v_descale,
        num_splits=num_splits,
        kv_layout=kv_layout,
        return_lse=return_lse,
        merge=merge_correct,
        chunk=lambda lo, hi: (lo, max(lo, hi - 1)),
    )


@planted("paged")
def paged_missing_v_descale(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    block_tables: Tensor,
    seq_lens: Tensor,
    *,
    scale: float | None = None,
    k_descale: Tensor | None = None,
    v_descale: Tensor | None = None,
    num_splits: int | None = None,
    kv_layout: str = "NHD",
    return_lse: bool = False,
) -> Any:
    """fp8 cache: v_descale never applied (out in quantized units)."""
    return paged_kernel(
        q,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        scale=scale,
        k_descale=k_descale,
        v_descale=None if v_descale is None else torch.ones_like(v_descale),
        num_splits=num_splits,
        kv_layout=kv_layout,
        return_lse=return_lse,
    )


@planted("paged")
def paged_per_tensor_descale(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    block_tables: Tensor,
    seq_lens: Tensor,
    *,
    scale: float | None = None,
    k_descale: Tensor | None = None,
    v_descale: Tensor | None = None,
    num_splits: int | None = None,
    kv_layout: str = "NHD",
    return_lse: bool = False,
) -> Any:
    """fp8 cache: per-head (Hk,) k descale read as per-tensor (element 0 for every head)."""
    if k_descale is not None and k_descale.dim() == 1:
        k_descale = k_descale[0]
    return paged_kernel(
        q,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        scale=scale,
        k_descale=k_descale,
        v_descale=v_descale,
        num_splits=num_splits,
        kv_layout=kv_layout,
        return_lse=return_lse,
    )


@planted("paged")
def paged_block_size_assumed_16(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    block_tables: Tensor,
    seq_lens: Tensor,
    *,
    scale: float | None = None,
    k_descale: Tensor | None = None,
    v_descale: Tensor | None = None,
    num_splits: int | None = None,
    kv_layout: str = "NHD",
    return_lse: bool = False,
) -> Any:
    """Page size hard-coded to 16: token t read at block_tables[t // 16], slot t % 16."""
    if kv_layout == "HND":
        k_cache, v_cache = (c.transpose(1, 2) for c in (k_cache, v_cache))
    num_blocks, block_size = k_cache.shape[:2]
    flat_k, flat_v = (
        c.reshape(num_blocks * block_size, 1, *c.shape[2:]) for c in (k_cache, v_cache)
    )
    lens = seq_lens.tolist()
    tables = block_tables.tolist()
    rows = []
    for b, n in enumerate(lens):
        tokens = [
            (tables[b][min(t // 16, len(tables[b]) - 1)] % num_blocks) * block_size + t % 16
            for t in range(n)
        ]
        rows.append([min(i, num_blocks * block_size - 1) for i in tokens])
    width = max((len(r) for r in rows), default=0) or 1
    table = torch.tensor(
        [r + [0] * (width - len(r)) for r in rows], dtype=torch.int32, device=q.device
    )
    return paged_kernel(
        q,
        flat_k,
        flat_v,
        table,
        seq_lens,
        scale=scale,
        k_descale=k_descale,
        v_descale=v_descale,
        num_splits=num_splits,
        kv_layout="NHD",
        return_lse=return_lse,
    )
