"""An independent numpy/scipy float64 cross-oracle for every variant.

Written apart from `attnverify.reference` (it does not import `attnverify.reference._common`):
plain loops per sequence (varlen) and per block and token (paged), einsum with an explicit
broadcast of mask and bias (gqa), a bit-level fp8 decoder (fp8), `scipy.special.logsumexp`
for every log-sum-exp (merge included). Two implementations that agree are much harder to get
wrong the same way.

Every function takes and returns numpy float64 arrays; layouts and semantics are DESIGN.md's:
unscaled bias, True = attend, bottom-right causal, query head h reads kv head h // G, natural
log LSE, and rows with no visible key give out 0 and lse -inf.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

# fp8 formats: (exponent bits, mantissa bits, exponent bias, encoding family).
# "fn": no infinities, S.1111.111 is NaN. "ieee": exponent all ones is inf/NaN.
# "fnuz": no infinities and no negative zero, 0x80 is the only NaN.
FP8_FORMATS = {
    "float8_e4m3fn": (4, 3, 7, "fn"),
    "float8_e5m2": (5, 2, 15, "ieee"),
    "float8_e4m3fnuz": (4, 3, 8, "fnuz"),
    "float8_e5m2fnuz": (5, 2, 16, "fnuz"),
}


def fp8_decode_table(name: str) -> np.ndarray:
    """The float64 value of each of the 256 bit patterns of fp8 format `name` (NaN included)."""
    exp_bits, man_bits, bias, family = FP8_FORMATS[name]
    table = np.empty(256, dtype=np.float64)
    for code in range(256):
        sign = -1.0 if code >> 7 else 1.0
        exponent = (code >> man_bits) & ((1 << exp_bits) - 1)
        mantissa = code & ((1 << man_bits) - 1)
        exp_all_ones = exponent == (1 << exp_bits) - 1
        if family == "fnuz" and code == 0x80:
            value = np.nan
        elif family == "ieee" and exp_all_ones:
            value = sign * np.inf if mantissa == 0 else np.nan
        elif family == "fn" and exp_all_ones and mantissa == (1 << man_bits) - 1:
            value = np.nan
        elif exponent == 0:
            value = sign * mantissa / (1 << man_bits) * 2.0 ** (1 - bias)
        else:
            value = sign * (1 + mantissa / (1 << man_bits)) * 2.0 ** (exponent - bias)
        table[code] = value
    return table


def fp8_decode(bits: np.ndarray, name: str) -> np.ndarray:
    """Decode an array of fp8 bit patterns (uint8) of format `name` to float64."""
    return fp8_decode_table(name)[bits.astype(np.int64)]


def _rows_attention(s: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Softmax over the last axis of scores s (..., Lq, Lk) (-inf = hidden), times v (..., Lk, D).

    Rows whose scores are all -inf (or Lk = 0) give out 0 and lse -inf.
    """
    lse = logsumexp(s, axis=-1)
    finite = np.isfinite(lse)
    p = np.exp(s - np.where(finite, lse, 0.0)[..., None])
    out = np.matmul(p, v)
    return np.where(finite[..., None], out, 0.0), lse


def gqa(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    causal: bool = False,
    scale: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """q (B, Hq, Lq, D); k, v (B, Hk, Lk, D); mask/bias (Bm, Hm, Lqm, Lkm). Returns out, lse."""
    b, hq, lq, d = q.shape
    hk, lk = k.shape[1], k.shape[2]
    group = hq // hk
    scale = 1.0 / np.sqrt(d) if scale is None else scale
    kv_head = np.arange(hq) // group
    k_full = k[:, kv_head]
    v_full = v[:, kv_head]
    s = np.einsum("bhqd,bhkd->bhqk", q, k_full) * scale
    full = (b, hq, lq, lk)
    if bias is not None:
        if bias.shape[1] == hk and hk != hq:
            bias = bias[:, kv_head]
        s = s + np.broadcast_to(bias, full)
    visible = np.ones(full, dtype=bool)
    if mask is not None:
        if mask.shape[1] == hk and hk != hq:
            mask = mask[:, kv_head]
        visible &= np.broadcast_to(mask, full)
    if causal:
        rows = np.arange(lq)[:, None]
        cols = np.arange(lk)[None, :]
        visible &= cols <= rows + (lk - lq)
    s = np.where(visible, s, -np.inf)
    return _rows_attention(s, v_full)


def varlen(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    cu_seqlens_q: list[int],
    cu_seqlens_k: list[int],
    *,
    causal: bool = False,
    scale: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """q (Tq, Hq, D); k, v (Tk, Hk, D); plain loops over sequences and heads.

    Returns out (Tq, Hq, D) and lse (Hq, Tq).
    """
    tq, hq, d = q.shape
    hk = k.shape[1]
    group = hq // hk
    scale = 1.0 / np.sqrt(d) if scale is None else scale
    out = np.zeros((tq, hq, d))
    lse = np.full((hq, tq), -np.inf)
    for n in range(len(cu_seqlens_q) - 1):
        q0, q1 = cu_seqlens_q[n], cu_seqlens_q[n + 1]
        k0, k1 = cu_seqlens_k[n], cu_seqlens_k[n + 1]
        lq, lk = q1 - q0, k1 - k0
        for h in range(hq):
            qs = q[q0:q1, h]
            ks = k[k0:k1, h // group]
            vs = v[k0:k1, h // group]
            s = (qs @ ks.T) * scale
            if causal:
                for i in range(lq):
                    s[i, max(0, i + lk - lq + 1) :] = -np.inf
            o, row_lse = _rows_attention(s, vs)
            out[q0:q1, h] = o
            lse[h, q0:q1] = row_lse
    return out, lse


def gather_paged(
    cache: np.ndarray, block_table: list[int], seq_len: int, kv_layout: str
) -> np.ndarray:
    """The first seq_len tokens of a request, token by token, as (Hk, seq_len, D)."""
    block_size = cache.shape[1] if kv_layout == "NHD" else cache.shape[2]
    tokens = []
    for t in range(seq_len):
        block = block_table[t // block_size]
        slot = t % block_size
        tokens.append(cache[block, slot] if kv_layout == "NHD" else cache[block, :, slot])
    hk, d = (cache.shape[2], cache.shape[3]) if kv_layout == "NHD" else cache.shape[1::2]
    return np.stack(tokens, axis=1) if tokens else np.zeros((hk, 0, d))


def paged(
    q: np.ndarray,
    k_cache: np.ndarray,
    v_cache: np.ndarray,
    block_tables: list[list[int]],
    seq_lens: list[int],
    *,
    scale: float | None = None,
    kv_layout: str = "NHD",
) -> tuple[np.ndarray, np.ndarray]:
    """q (B, Hq, Lq, D) over (already dequantized) paged caches; causal bottom-right per request.

    Returns out (B, Hq, Lq, D) and lse (B, Hq, Lq).
    """
    outs, lses = [], []
    for b, seq_len in enumerate(seq_lens):
        k = gather_paged(k_cache, block_tables[b], seq_len, kv_layout)
        v = gather_paged(v_cache, block_tables[b], seq_len, kv_layout)
        o, s = gqa(q[b : b + 1], k[None], v[None], causal=True, scale=scale)
        outs.append(o)
        lses.append(s)
    return np.concatenate(outs), np.concatenate(lses)


def merge(out: np.ndarray, lse: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """out (..., S, D), lse (..., S) -> (..., D), (...); splits with lse -inf contribute nothing."""
    total = logsumexp(lse, axis=-1)
    finite = np.isfinite(total)
    weights = np.exp(lse - np.where(finite, total, 0.0)[..., None])
    terms = np.where(weights[..., None] > 0, weights[..., None] * out, 0.0)
    return terms.sum(axis=-2), total


__all__ = [
    "FP8_FORMATS",
    "fp8_decode",
    "fp8_decode_table",
    "gather_paged",
    "gqa",
    "merge",
    "paged",
    "varlen",
]
