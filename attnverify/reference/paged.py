"""Oracle for paged-KV attention (decode, speculative decode, chunked prefill) and state merging.

Cache layouts: "NHD" (num_blocks, block_size, Hk, D) or "HND" (num_blocks, Hk, block_size, D);
block_tables (B, max_blocks) int32 maps each request's logical blocks to physical ones.
Forward only. Kernel: `attnverify.kernels.paged`.
"""

from __future__ import annotations

import torch

from attnverify.reference._common import attend, causal_visible, merge_states
from attnverify.validation import ORACLE_DTYPES, check_merge_inputs, check_paged_inputs


def gather_kv(
    cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_len: int,
    kv_layout: str,
) -> torch.Tensor:
    """The first seq_len tokens of one request from a paged cache, as (Hk, seq_len, D).

    Reads only block_table[:ceil(seq_len / block_size)] and, of the last block, only the
    slots below seq_len.
    """
    block_size = cache.shape[1] if kv_layout == "NHD" else cache.shape[2]
    used = block_table[: -(-seq_len // block_size)].long()
    blocks = cache[used]
    if kv_layout == "HND":
        blocks = blocks.transpose(1, 2)
    tokens = blocks.reshape(-1, *blocks.shape[2:])[:seq_len]
    return tokens.transpose(0, 1)


def split_bounds(length: int, num_splits: int) -> list[tuple[int, int]]:
    """Cut [0, length) into num_splits contiguous chunks of ceil(length / num_splits) keys.

    Trailing chunks may be empty (more splits than keys).
    """
    size = -(-length // num_splits) if length else 0
    return [(min(s * size, length), min((s + 1) * size, length)) for s in range(num_splits)]


def paged_attention(
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
    compute_dtype: torch.dtype = torch.float64,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of the newest Lq positions of each request over its paged KV cache.

    Request b's context is its first seq_lens[b] cached tokens (the Lq new tokens included);
    its queries are the last Lq positions, causal bottom-right: query i sees key j iff
    j <= i + seq_len - Lq (Lq = 1 sees everything). Query head h reads kv head h // G.
    With num_splits = S the KV range is cut into S contiguous chunks; each gives a partial
    (out, lse) and `merge_attention_states` combines them (None or 1: no split). The result
    does not depend on S beyond rounding.

    Args:
        q: (B, Hq, Lq, D) float16 | bfloat16 | float32 | float64.
        k_cache, v_cache: (num_blocks, block_size, Hk, D) for "NHD" or
            (num_blocks, Hk, block_size, D) for "HND"; q's dtype or fp8.
        block_tables: (B, max_blocks) int32; entries past ceil(seq_len / block_size) are
            never read (may be -1 or junk).
        seq_lens: (B,) int32 valid cached tokens per request; slots past it are never read.
        scale: multiplies q.k; default 1 / sqrt(D).
        k_descale, v_descale: float32 () or (Hk,), fp8 caches only (None: 1).
        num_splits: number of KV chunks (>= 1), or None.
        kv_layout: "NHD" or "HND".
        return_lse: also return the natural-log logsumexp of each row.
        compute_dtype: dtype all arithmetic runs in (float64: the oracle).

    Returns:
        out (B, Hq, Lq, D), and with return_lse lse (B, Hq, Lq), in compute_dtype.
        seq_len == 0 (or a causally hidden row) gives out 0 and lse -inf.

    Raises:
        TypeError, ValueError: inputs outside the rules above (see `attnverify.validation`).
    """
    meta = check_paged_inputs(
        q,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        scale,
        k_descale,
        v_descale,
        num_splits,
        kv_layout,
        ORACLE_DTYPES,
    )
    lq = q.shape[2]
    outs, lses = [], []
    for b, seq_len in enumerate(meta.seq_lens):
        k = gather_kv(k_cache, block_tables[b], seq_len, kv_layout).to(compute_dtype)
        v = gather_kv(v_cache, block_tables[b], seq_len, kv_layout).to(compute_dtype)
        if k_descale is not None:
            k = k * k_descale.to(compute_dtype).reshape(-1, 1, 1)
        if v_descale is not None:
            v = v * v_descale.to(compute_dtype).reshape(-1, 1, 1)
        visible = causal_visible(lq, seq_len, q.device)
        parts = []
        for lo, hi in split_bounds(seq_len, num_splits or 1):
            parts.append(
                attend(
                    q[b : b + 1],
                    k[None, :, lo:hi],
                    v[None, :, lo:hi],
                    scale=meta.scale,
                    mask=visible[None, None, :, lo:hi],
                    compute_dtype=compute_dtype,
                )
            )
        out = torch.stack([o for o, _ in parts], dim=-2)
        lse = torch.stack([s for _, s in parts], dim=-1)
        o, s = merge_states(out, lse)
        outs.append(o)
        lses.append(s)
    out, lse = torch.cat(outs), torch.cat(lses)
    return (out, lse) if return_lse else out


def merge_attention_states(
    out: torch.Tensor,
    lse: torch.Tensor,
    *,
    compute_dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge S partial attention states (split-KV, or prefix/suffix cascades) into one.

    `lse = logsumexp_s(lse_s)`, `out = sum_s exp(lse_s - lse) * out_s`. Splits with lse -inf
    contribute nothing (their out is ignored, even NaN); all -inf gives out 0 and lse -inf.

    Args:
        out: (..., S, D) float16 | bfloat16 | float32 | float64 partial outputs, S >= 1.
        lse: (..., S) float32 (float64 accepted) natural-log partial lse.
        compute_dtype: dtype all arithmetic runs in (float64: the oracle).

    Returns:
        (out (..., D), lse (...)) in compute_dtype.

    Raises:
        TypeError, ValueError: shapes or dtypes outside the rules above.
    """
    check_merge_inputs(out, lse, ORACLE_DTYPES)
    return merge_states(out.to(compute_dtype), lse.to(compute_dtype))


__all__ = ["gather_kv", "merge_attention_states", "paged_attention", "split_bounds"]
