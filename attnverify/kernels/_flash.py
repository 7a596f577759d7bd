"""Shared flash-attention core: one forward and one backward (dk/dv pass, dq pass) in Triton.

Used by `kernels.varlen` (packed sequences, cu_seqlens) and `kernels.gqa` (batched, mask and
bias); the differences are constexpr flags, never copies of a kernel:
- IS_VARLEN: rows of sequence n start at cu_seqlens[n]; grids walk a host-built work table of
  (sequence, block) items, longest first (`_common.varlen_work_table`).
- IS_CAUSAL: bottom-right per sequence, query i sees key j iff j <= i + Lk - Lq.
- HAS_MASK / HAS_BIAS: (Bm, Hm, Lqm, Lkm) tensors read through zero strides on broadcast dims;
  a kv-headed one (Hm == Hk) is read by query head h at h // G. Tiles whose mask block is all
  False (host-built `_common.block_any`) are skipped: no K/V loads, no math.
- GQA: query head h reads kv head h // G.
- Head dims: D = D0 (power of two) + D1 (power-of-two remainder tile ending at D, its overlap
  with D0 zeroed), see `_common.HeadDimSplit`; row strides reach the kernels divided by 8 so
  the compiler knows rows are 16-byte aligned (D = 72 loads vectorize).
Any Lq / Lk: interior tiles run unmasked, boundary and diagonal tiles masked.

Layout handled here: every tensor as (z, h, row, d) with explicit strides (varlen: z stride 0,
row offset from the work table). 64-bit base offsets; in-tile offsets stay 32-bit.
Numerics: scores in float32, softmax in base 2 (`exp2`, scores pre-multiplied by LOG2E),
lse stored in natural log (float32). Rows with no visible key: out 0, lse -inf, zero grads.
Backward is deterministic (no atomics): dk/dv per query head (summed over the group on the
host when G > 1), dq in its own pass, dbias per query head reduced on the host.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from attnverify.arch import interpreter_active
from attnverify.kernels import _autotune as autotune_policy
from attnverify.kernels._common import (
    HeadDimSplit,
    block_any,
    split_head_dim,
    varlen_work_table,
)

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
INTERPRETER_BLOCK = 32
GPU_MASK_BLOCK = 128  # granularity of the tile-level mask summary; every BLOCK_* divides it


@dataclass(frozen=True)
class FlashConfig:
    """A pinned launch config: the row block of the grid, the inner loop block, warps, stages."""

    block_outer: int
    block_inner: int
    num_warps: int = 4
    num_stages: int = 1


def _configs(gpu: tuple[tuple[int, int, int], ...]) -> list[triton.Config]:
    """(BLOCK_INNER, num_warps, num_stages) candidates; one small config under the interpreter."""
    if interpreter_active():
        return [triton.Config({"BLOCK_INNER": INTERPRETER_BLOCK}, num_warps=4, num_stages=1)]
    return [triton.Config({"BLOCK_INNER": b}, num_warps=w, num_stages=s) for b, w, s in gpu]


FWD_CONFIGS = ((128, 8, 3), (64, 4, 3), (128, 4, 2), (64, 8, 2))
BWD_CONFIGS = ((32, 4, 5), (64, 8, 3), (32, 8, 3), (64, 4, 2))
FALLBACK_CONFIGS = [
    triton.Config({"BLOCK_INNER": b}, num_warps=4, num_stages=s)
    for b, s in ((32, 2), (32, 1), (16, 1))
]
SMEM_BUDGET = 200 * 1024


def _prune(configs: list[triton.Config], named_args: dict, **kwargs: object) -> list:
    """Drop configs whose pipelined K/V (or Q/dO) tiles cannot fit in shared memory."""
    args = {**named_args, **kwargs}
    width = args["HEAD_D0"] + (args["HEAD_D1"] if args["HAS_D1"] else 0)
    elem = args["Q"].element_size()

    def smem(c: triton.Config) -> int:
        return max(c.num_stages, 1) * 2 * c.kwargs["BLOCK_INNER"] * width * elem

    kept = [c for c in configs if smem(c) <= SMEM_BUDGET]
    if not kept:
        kept = [c for c in FALLBACK_CONFIGS if smem(c) <= SMEM_BUDGET] or FALLBACK_CONFIGS[-1:]
    # $ATTNVERIFY_AUTOTUNE=0 pins the first config; "rotate" (the verifier's policy) still
    # autotunes these kernels: their shared memory (mask, bias, resident tiles) is known only
    # after compiling, and the autotuner drops a config that does not fit, where a pinned
    # one would fail the launch.
    return kept[:1] if autotune_policy.policy() == "0" else kept


AUTOTUNE_KEY = ["HEAD_DIM", "IS_CAUSAL", "HAS_MASK", "HAS_BIAS", "IS_VARLEN", "BLOCK_OUTER"]


def _outer_block(split: HeadDimSplit, dtype: torch.dtype, interpreter: bool) -> int:
    if interpreter:
        return INTERPRETER_BLOCK
    if dtype == torch.float32 and split.padded > 128:
        return 32
    return 64 if dtype == torch.float32 or split.padded > 128 else 128


# ------------------------------------------------------------------ jit helpers


@triton.jit
def _work_item(Work, pid, seqlen_q, seqlen_k, IS_VARLEN: tl.constexpr):
    """(start_q, len_q, start_k, len_k, block) of program `pid` (varlen: from the work table)."""
    if IS_VARLEN:
        w = Work + pid * 5
        start_q = tl.load(w)
        len_q = tl.load(w + 1)
        start_k = tl.load(w + 2)
        len_k = tl.load(w + 3)
        blk = tl.load(w + 4)
    else:
        start_q = pid * 0
        len_q = seqlen_q + start_q
        start_k = start_q
        len_k = seqlen_k + start_q
        blk = pid
    return start_q, len_q, start_k, len_k, blk


@triton.jit
def _wide(x):
    """x as int64 (loop counters may be Python ints under the interpreter)."""
    return tl.full([], 0, tl.int64) + x


@triton.jit
def _aligned(stride_z, stride_h, stride_r, ALIGN: tl.constexpr):
    """Strides the host passed divided by ALIGN, times ALIGN: the compiler then knows every
    row start is ALIGN-element aligned (vector loads, async copies) even when D = 72. The
    batch and head strides come back in 64 bits: a batch stride of 2^31 elements arrives as
    2^28 and would wrap in 32 bits once multiplied (row offsets inside a block stay 32-bit)."""
    return _wide(stride_z) * ALIGN, _wide(stride_h) * ALIGN, stride_r * ALIGN


@triton.jit
def _base(X, z, h, row, stride_z, stride_h, stride_r):
    """Scalar pointer to X[z, h, row, 0] with 64-bit offsets."""
    return X + z.to(tl.int64) * stride_z + h.to(tl.int64) * stride_h + row.to(tl.int64) * stride_r


@triton.jit
def _load_tile(ptrs, rows_ok, cols_ok, MASK_ROWS: tl.constexpr, MASK_COLS: tl.constexpr):
    if MASK_ROWS:
        if MASK_COLS:
            x = tl.load(ptrs, mask=rows_ok[:, None] & cols_ok[None, :], other=0.0)
        else:
            x = tl.load(ptrs, mask=rows_ok[:, None], other=0.0)
    else:
        if MASK_COLS:
            x = tl.load(ptrs, mask=cols_ok[None, :], other=0.0)
        else:
            x = tl.load(ptrs)
    return x


@triton.jit
def _scores(
    q0, q1, k0, k1, rows, cols, len_q, len_k, causal_shift, qk_scale,
    mask_ptrs, bias_ptrs,
    MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_D1: tl.constexpr, DOT_PREC: tl.constexpr,
    SCALED: tl.constexpr = True,
):  # fmt: skip
    """Scores in base 2: (q.k * scale + bias) * LOG2E, -inf where hidden. [BLOCK_M, BLOCK_N]
    SCALED=False (no bias only): q.k, -inf where hidden; the caller applies the scale."""
    tl.static_assert(SCALED or not HAS_BIAS, "unscaled scores cannot take a bias")
    # [BLOCK_M, BLOCK_N]
    s = tl.dot(q0, tl.trans(k0), input_precision=DOT_PREC)
    if HAS_D1:
        s += tl.dot(q1, tl.trans(k1), input_precision=DOT_PREC)
    if SCALED:
        s = s * qk_scale
    in_range = (rows < len_q)[:, None] & (cols < len_k)[None, :]
    if HAS_BIAS:
        if MASKED:
            bias = tl.load(bias_ptrs, mask=in_range, other=0.0)
        else:
            bias = tl.load(bias_ptrs)
        s += bias.to(tl.float32) * LOG2E
    if MASKED:
        visible = in_range
        if IS_CAUSAL:
            visible = visible & (cols[None, :] <= rows[:, None] + causal_shift)
        if HAS_MASK:
            visible = visible & (tl.load(mask_ptrs, mask=visible, other=0) != 0)
        s = tl.where(visible, s, float("-inf"))
    elif HAS_MASK:
        s = tl.where(tl.load(mask_ptrs) != 0, s, float("-inf"))
    return s


@triton.jit
def _tile_active(flag_ptr, HAS_MASK: tl.constexpr):
    """False when the host's tile summary says this tile's mask block is all False."""
    if HAS_MASK:
        active = tl.load(flag_ptr) != 0
    else:
        active = True
    return active


@triton.jit
def _fwd_tile(
    acc0, acc1, m_i, l_i, q0, q1, k_ptrs, v_ptrs, k_off0, k_off1, v_off0, v_off1,
    mask_ptrs, bias_ptrs, flag_ptr, rows, cols, len_q, len_k, causal_shift, qk_scale,
    d0_ok, d1_ok,
    MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_D1: tl.constexpr, MASK_D0: tl.constexpr,
    MASK_D1: tl.constexpr, DOT_PREC: tl.constexpr, RAW_MAX: tl.constexpr,
):  # fmt: skip
    """One KV tile of the online softmax: update acc, running max m_i and sum l_i. RAW_MAX: no
    bias and scale > 0 (the row max of q.k, scaled, is the row max of the scaled scores)."""
    if _tile_active(flag_ptr, HAS_MASK):
        cols_ok = cols < len_k
        # [BLOCK_N, D0], [BLOCK_N, D1]
        k0 = _load_tile(k_ptrs + k_off0, cols_ok, d0_ok, MASKED, MASK_D0)
        v0 = _load_tile(v_ptrs + v_off0, cols_ok, d0_ok, MASKED, MASK_D0)
        k1 = k0
        v1 = v0
        if HAS_D1:
            k1 = _load_tile(k_ptrs + k_off1, cols_ok, d1_ok, MASKED, MASK_D1)
            v1 = _load_tile(v_ptrs + v_off1, cols_ok, d1_ok, MASKED, MASK_D1)
        # [BLOCK_M, BLOCK_N]
        s = _scores(
            q0, q1, k0, k1, rows, cols, len_q, len_k, causal_shift, qk_scale, mask_ptrs,
            bias_ptrs, MASKED, IS_CAUSAL, HAS_MASK, HAS_BIAS, HAS_D1, DOT_PREC, not RAW_MAX,
        )  # fmt: skip
        if RAW_MAX:
            # unscaled scores, scale > 0: scale the row max once per row and fold the scale
            # into the exponent's FMA (one multiply per score fewer than scaling s first)
            m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(s * qk_scale - m_safe[:, None])
        else:
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        # [BLOCK_M, D0], [BLOCK_M, D1]
        acc0 = acc0 * alpha[:, None] + tl.dot(p.to(v0.dtype), v0, input_precision=DOT_PREC)
        if HAS_D1:
            acc1 = acc1 * alpha[:, None] + tl.dot(p.to(v1.dtype), v1, input_precision=DOT_PREC)
        m_i = m_new
    return acc0, acc1, m_i, l_i


@triton.jit
def _row_range(m0, len_q, len_k, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               IS_CAUSAL: tl.constexpr):  # fmt: skip
    """KV range of a query block: [0, n_full) unmasked tiles, then [n_full, n_end) masked."""
    if IS_CAUSAL:
        shift = len_k - len_q
        n_end = tl.maximum(tl.minimum(len_k, m0 + BLOCK_M + shift), 0)
        n_full = tl.maximum(tl.minimum(m0 + shift + 1, len_k), 0) // BLOCK_N * BLOCK_N
    else:
        n_end = len_k
        n_full = len_k // BLOCK_N * BLOCK_N
    return n_full, n_end


# ------------------------------------------------------------------ forward


# Lengths, group and head divisors, and the lse / tile-flag strides vary per call and gain
# nothing from specialisation: one compile serves them all (the verifier draws hundreds of
# shapes; each specialisation is a compile per autotune config).
_VARYING = [
    "seqlen_q",
    "seqlen_k",
    "group",
    "mask_head_div",
    "bias_head_div",
    "stride_lz",
    "stride_lh",
    "stride_fz",
    "stride_fh",
    "stride_fm",
    "stride_fn",
]


@triton.jit(do_not_specialize=_VARYING)
def _flash_fwd_kernel(
    Q, K, V, Out, Lse, Mask, Bias, Flags, Work,
    stride_qz, stride_qh, stride_qm, stride_qd,
    stride_kz, stride_kh, stride_kn, stride_kd,
    stride_vz, stride_vh, stride_vn, stride_vd,
    stride_oz, stride_oh, stride_om, stride_od,
    stride_lz, stride_lh, stride_lm,
    stride_mz, stride_mh, stride_mm, stride_mn,
    stride_bz, stride_bh, stride_bm, stride_bn,
    stride_fz, stride_fh, stride_fm, stride_fn,
    seqlen_q, seqlen_k, group, mask_head_div, bias_head_div, qk_scale,
    HEAD_DIM: tl.constexpr, HEAD_D0: tl.constexpr, HEAD_D1: tl.constexpr,
    HAS_D1: tl.constexpr, BLOCK_OUTER: tl.constexpr, BLOCK_INNER: tl.constexpr,
    MASK_BLOCK: tl.constexpr, IS_VARLEN: tl.constexpr, IS_CAUSAL: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_PREC: tl.constexpr,
    ALIGN: tl.constexpr, RAW_MAX: tl.constexpr,
):  # fmt: skip
    """Forward: one program per (query block, query head, batch); writes out and lse.
    RAW_MAX (host: no bias and scale > 0) takes row maxima before scaling, see `_fwd_tile`."""
    BLOCK_M: tl.constexpr = BLOCK_OUTER
    BLOCK_N: tl.constexpr = BLOCK_INNER
    stride_qz, stride_qh, stride_qm = _aligned(stride_qz, stride_qh, stride_qm, ALIGN)
    stride_kz, stride_kh, stride_kn = _aligned(stride_kz, stride_kh, stride_kn, ALIGN)
    stride_vz, stride_vh, stride_vn = _aligned(stride_vz, stride_vh, stride_vn, ALIGN)
    stride_oz, stride_oh, stride_om = _aligned(stride_oz, stride_oh, stride_om, ALIGN)
    pid, h, z = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start_q, len_q, start_k, len_k, blk = _work_item(Work, pid, seqlen_q, seqlen_k, IS_VARLEN)
    m0 = blk * BLOCK_M
    hk = h // group
    rows = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d0 = tl.arange(0, HEAD_D0)
    offs_d1 = (HEAD_DIM - HEAD_D1) + tl.arange(0, HEAD_D1)  # ends at D: loads need no mask
    d0_ok = offs_d0 < HEAD_DIM
    d1_ok = offs_d1 >= HEAD_D0  # lanes tile 1 owns; the overlap with tile 0 is zeroed/unstored
    MASK_D0: tl.constexpr = HEAD_D0 > HEAD_DIM
    MASK_D1: tl.constexpr = False
    rows_ok = rows < len_q

    q_base = _base(Q, z, h, start_q + m0, stride_qz, stride_qh, stride_qm)
    q_rows = tl.arange(0, BLOCK_M)[:, None] * stride_qm
    # [BLOCK_M, D0], [BLOCK_M, D1]
    q0 = _load_tile(q_base + q_rows + offs_d0[None, :] * stride_qd, rows_ok, d0_ok, True, MASK_D0)
    q1 = q0
    if HAS_D1:
        q1 = _load_tile(q_base + q_rows + offs_d1[None, :] * stride_qd, rows_ok, d1_ok, True, False)
        q1 = tl.where(d1_ok[None, :], q1, 0.0)
    k_base = _base(K, z, hk, start_k, stride_kz, stride_kh, stride_kn)
    v_base = _base(V, z, hk, start_k, stride_vz, stride_vh, stride_vn)
    k_off0 = offs_n[:, None] * stride_kn + offs_d0[None, :] * stride_kd
    k_off1 = offs_n[:, None] * stride_kn + offs_d1[None, :] * stride_kd
    v_off0 = offs_n[:, None] * stride_vn + offs_d0[None, :] * stride_vd
    v_off1 = offs_n[:, None] * stride_vn + offs_d1[None, :] * stride_vd
    m_base = _base(Mask, z, h // mask_head_div, m0, stride_mz, stride_mh, stride_mm)
    b_base = _base(Bias, z, h // bias_head_div, m0, stride_bz, stride_bh, stride_bm)
    f_base = _base(Flags, z, h // mask_head_div, m0 // MASK_BLOCK, stride_fz, stride_fh, stride_fm)
    # rows past Lq read row Lq - 1 (results discarded) so interior tiles load without masks
    local = tl.minimum(tl.arange(0, BLOCK_M), len_q - 1 - m0)[:, None]
    m_off = local * stride_mm + offs_n[None, :] * stride_mn
    b_off = local * stride_bm + offs_n[None, :] * stride_bn

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc0 = tl.zeros([BLOCK_M, HEAD_D0], tl.float32)
    acc1 = tl.zeros([BLOCK_M, HEAD_D1], tl.float32)
    shift = len_k - len_q
    n_full, n_end = _row_range(m0, len_q, len_k, BLOCK_M, BLOCK_N, IS_CAUSAL)
    for n0 in range(0, n_full, BLOCK_N):
        n64 = _wide(n0)
        acc0, acc1, m_i, l_i = _fwd_tile(
            acc0, acc1, m_i, l_i, q0, q1, k_base + n64 * stride_kn, v_base + n64 * stride_vn,
            k_off0, k_off1, v_off0, v_off1, m_base + n64 * stride_mn + m_off,
            b_base + n64 * stride_bn + b_off, f_base + (n0 // MASK_BLOCK) * stride_fn,
            rows, n0 + offs_n, len_q, len_k, shift, qk_scale, d0_ok, d1_ok,
            False, IS_CAUSAL, HAS_MASK, HAS_BIAS, HAS_D1, MASK_D0, MASK_D1, DOT_PREC, RAW_MAX,
        )  # fmt: skip
    for n0 in range(n_full, n_end, BLOCK_N):
        n64 = _wide(n0)
        acc0, acc1, m_i, l_i = _fwd_tile(
            acc0, acc1, m_i, l_i, q0, q1, k_base + n64 * stride_kn, v_base + n64 * stride_vn,
            k_off0, k_off1, v_off0, v_off1, m_base + n64 * stride_mn + m_off,
            b_base + n64 * stride_bn + b_off, f_base + (n0 // MASK_BLOCK) * stride_fn,
            rows, n0 + offs_n, len_q, len_k, shift, qk_scale, d0_ok, d1_ok,
            True, IS_CAUSAL, HAS_MASK, HAS_BIAS, HAS_D1, MASK_D0, MASK_D1, DOT_PREC, RAW_MAX,
        )  # fmt: skip
    has_key = l_i > 0
    inv_l = 1.0 / tl.where(has_key, l_i, 1.0)
    lse = tl.where(has_key, (m_i + tl.math.log2(tl.where(has_key, l_i, 1.0))) * LN2, float("-inf"))
    o_base = _base(Out, z, h, start_q + m0, stride_oz, stride_oh, stride_om)
    o_rows = tl.arange(0, BLOCK_M)[:, None] * stride_om
    out0 = (acc0 * inv_l[:, None]).to(Out.dtype.element_ty)
    tl.store(o_base + o_rows + offs_d0[None, :] * stride_od, out0,
             mask=rows_ok[:, None] & d0_ok[None, :])  # fmt: skip
    if HAS_D1:
        out1 = (acc1 * inv_l[:, None]).to(Out.dtype.element_ty)
        tl.store(o_base + o_rows + offs_d1[None, :] * stride_od, out1,
                 mask=rows_ok[:, None] & d1_ok[None, :])  # fmt: skip
    l_base = _base(Lse, z, h, start_q + m0, stride_lz, stride_lh, stride_lm)
    tl.store(l_base + tl.arange(0, BLOCK_M) * stride_lm, lse, mask=rows_ok)


# ------------------------------------------------------------------ backward


@triton.jit
def _col_range(n0, len_q, len_k, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               IS_CAUSAL: tl.constexpr):  # fmt: skip
    """Query range of a KV block: masked [m_lo, a), unmasked [a, b), masked [b, m_end)."""
    m_end = (len_q + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    if IS_CAUSAL:
        shift = len_k - len_q
        m_lo = tl.maximum(n0 - shift, 0) // BLOCK_M * BLOCK_M
        first_full = (tl.maximum(n0 + BLOCK_N - 1 - shift, 0) + BLOCK_M - 1) // BLOCK_M * BLOCK_M
        a = tl.minimum(tl.maximum(first_full, m_lo), m_end)
    else:
        m_lo = n0 * 0
        a = m_lo
    full_end = len_q // BLOCK_M * BLOCK_M
    if n0 + BLOCK_N > len_k:
        full_end = a
    b = tl.maximum(a, full_end)
    return m_lo, a, b, m_end


@triton.jit
def _bwd_probs(
    q0, q1, do0, do1, k0, k1, v0, v1, lse2, delta, rows, cols, len_q, len_k, causal_shift,
    qk_scale, mask_ptrs, bias_ptrs,
    MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_D1: tl.constexpr, DOT_PREC: tl.constexpr,
):  # fmt: skip
    """Recompute P and dS = P * (dP - delta), the gradient of the (natural) scores."""
    s = _scores(
        q0, q1, k0, k1, rows, cols, len_q, len_k, causal_shift, qk_scale, mask_ptrs, bias_ptrs,
        MASKED, IS_CAUSAL, HAS_MASK, HAS_BIAS, HAS_D1, DOT_PREC,
    )  # fmt: skip
    # [BLOCK_M, BLOCK_N]
    p = tl.math.exp2(s - lse2[:, None])
    dp = tl.dot(do0, tl.trans(v0), input_precision=DOT_PREC)
    if HAS_D1:
        dp += tl.dot(do1, tl.trans(v1), input_precision=DOT_PREC)
    ds = p * (dp - delta[:, None])
    return p, ds


@triton.jit
def _load_row_stats(Lse, Delta, rows, len_q, stride_lm):
    """lse in base 2 (+inf for empty rows and padding, so P = 0 there) and delta."""
    ok = rows < len_q
    lse = tl.load(Lse + rows * stride_lm, mask=ok, other=float("inf"))
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * LOG2E)
    delta = tl.load(Delta + rows * stride_lm, mask=ok, other=0.0)
    return lse2, delta


@triton.jit
def _dkdv_tile(
    dk0, dk1, dv0, dv1, dbq, k0, k1, v0, v1, q_ptrs, do_ptrs, q_off0, q_off1, do_off0,
    do_off1, l_base, d_base, mask_ptrs, bias_ptrs, flag_ptr, db_ptrs, rows, cols, len_q, len_k,
    causal_shift, qk_scale, d0_ok, d1_ok, stride_lm,
    MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_D1: tl.constexpr, MASK_D0: tl.constexpr,
    MASK_D1: tl.constexpr, DBIAS_MODE: tl.constexpr, DOT_PREC: tl.constexpr,
):  # fmt: skip
    """One query tile of the dk/dv pass (and the dS tile for dbias)."""
    if _tile_active(flag_ptr, HAS_MASK):
        rows_ok = rows < len_q
        # [BLOCK_M, D0], [BLOCK_M, D1]
        q0 = _load_tile(q_ptrs + q_off0, rows_ok, d0_ok, MASKED, MASK_D0)
        do0 = _load_tile(do_ptrs + do_off0, rows_ok, d0_ok, MASKED, MASK_D0)
        q1 = q0
        do1 = do0
        if HAS_D1:
            q1 = _load_tile(q_ptrs + q_off1, rows_ok, d1_ok, MASKED, MASK_D1)
            do1 = _load_tile(do_ptrs + do_off1, rows_ok, d1_ok, MASKED, MASK_D1)
        lse2, delta = _load_row_stats(l_base, d_base, rows, len_q, stride_lm)
        # [BLOCK_M, BLOCK_N]
        p, ds = _bwd_probs(
            q0, q1, do0, do1, k0, k1, v0, v1, lse2, delta, rows, cols, len_q, len_k,
            causal_shift, qk_scale, mask_ptrs, bias_ptrs,
            MASKED, IS_CAUSAL, HAS_MASK, HAS_BIAS, HAS_D1, DOT_PREC,
        )  # fmt: skip
        # [BLOCK_N, D0], [BLOCK_N, D1]
        pt = tl.trans(p.to(do0.dtype))
        dst = tl.trans(ds.to(q0.dtype))
        dv0 += tl.dot(pt, do0, input_precision=DOT_PREC)
        dk0 += tl.dot(dst, q0, input_precision=DOT_PREC)
        if HAS_D1:
            dv1 += tl.dot(pt, do1, input_precision=DOT_PREC)
            dk1 += tl.dot(dst, q1, input_precision=DOT_PREC)
        in_range = rows_ok[:, None] & (cols < len_k)[None, :]
        if DBIAS_MODE == 1:
            tl.store(db_ptrs, ds, mask=in_range)
        elif DBIAS_MODE == 2 or DBIAS_MODE == 4:
            dbq += tl.sum(tl.where(in_range, ds, 0.0), 0)
        elif DBIAS_MODE == 3:
            tl.store(db_ptrs, tl.sum(tl.where(in_range, ds, 0.0), 1), mask=rows_ok)
    return dk0, dk1, dv0, dv1, dbq


@triton.jit(do_not_specialize=_VARYING)
def _flash_bwd_dkdv_kernel(
    Q, K, V, DO, Lse, Delta, DK, DV, DB, Mask, Bias, Flags, Work,
    stride_qz, stride_qh, stride_qm, stride_qd,
    stride_kz, stride_kh, stride_kn, stride_kd,
    stride_vz, stride_vh, stride_vn, stride_vd,
    stride_doz, stride_doh, stride_dom, stride_dod,
    stride_dkz, stride_dkh, stride_dkn, stride_dkd,
    stride_dvz, stride_dvh, stride_dvn, stride_dvd,
    stride_lz, stride_lh, stride_lm,
    stride_dbz, stride_dbh, stride_dbm, stride_dbn,
    stride_mz, stride_mh, stride_mm, stride_mn,
    stride_bz, stride_bh, stride_bm, stride_bn,
    stride_fz, stride_fh, stride_fm, stride_fn,
    seqlen_q, seqlen_k, group, mask_head_div, bias_head_div, qk_scale, scale,
    HEAD_DIM: tl.constexpr, HEAD_D0: tl.constexpr, HEAD_D1: tl.constexpr,
    HAS_D1: tl.constexpr, BLOCK_OUTER: tl.constexpr, BLOCK_INNER: tl.constexpr,
    MASK_BLOCK: tl.constexpr, IS_VARLEN: tl.constexpr, IS_CAUSAL: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, DBIAS_MODE: tl.constexpr,
    DOT_PREC: tl.constexpr, ALIGN: tl.constexpr,
):  # fmt: skip
    """dk, dv (per query head) and dS for dbias: one program per (KV block, query head, batch).

    DBIAS_MODE: 0 none; 1 full dS tiles; 2 summed over query rows (Lqm == 1); 3 summed over
    the keys of this block (Lkm == 1); 4 both.
    """
    BLOCK_N: tl.constexpr = BLOCK_OUTER
    BLOCK_M: tl.constexpr = BLOCK_INNER
    stride_qz, stride_qh, stride_qm = _aligned(stride_qz, stride_qh, stride_qm, ALIGN)
    stride_kz, stride_kh, stride_kn = _aligned(stride_kz, stride_kh, stride_kn, ALIGN)
    stride_vz, stride_vh, stride_vn = _aligned(stride_vz, stride_vh, stride_vn, ALIGN)
    stride_doz, stride_doh, stride_dom = _aligned(stride_doz, stride_doh, stride_dom, ALIGN)
    stride_dkz, stride_dkh, stride_dkn = _aligned(stride_dkz, stride_dkh, stride_dkn, ALIGN)
    stride_dvz, stride_dvh, stride_dvn = _aligned(stride_dvz, stride_dvh, stride_dvn, ALIGN)
    pid, h, z = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start_q, len_q, start_k, len_k, blk = _work_item(Work, pid, seqlen_q, seqlen_k, IS_VARLEN)
    n0 = blk * BLOCK_N
    hk = h // group
    cols = n0 + tl.arange(0, BLOCK_N)
    offs_n = tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d0 = tl.arange(0, HEAD_D0)
    offs_d1 = (HEAD_DIM - HEAD_D1) + tl.arange(0, HEAD_D1)  # ends at D: loads need no mask
    d0_ok = offs_d0 < HEAD_DIM
    d1_ok = offs_d1 >= HEAD_D0  # lanes tile 1 owns; the overlap with tile 0 is zeroed/unstored
    MASK_D0: tl.constexpr = HEAD_D0 > HEAD_DIM
    MASK_D1: tl.constexpr = False
    cols_ok = cols < len_k

    k_base = _base(K, z, hk, start_k + n0, stride_kz, stride_kh, stride_kn)
    v_base = _base(V, z, hk, start_k + n0, stride_vz, stride_vh, stride_vn)
    # [BLOCK_N, D0], [BLOCK_N, D1]
    k0 = _load_tile(k_base + offs_n[:, None] * stride_kn + offs_d0[None, :] * stride_kd,
                    cols_ok, d0_ok, True, MASK_D0)  # fmt: skip
    v0 = _load_tile(v_base + offs_n[:, None] * stride_vn + offs_d0[None, :] * stride_vd,
                    cols_ok, d0_ok, True, MASK_D0)  # fmt: skip
    k1 = k0
    v1 = v0
    if HAS_D1:
        k1 = _load_tile(k_base + offs_n[:, None] * stride_kn + offs_d1[None, :] * stride_kd,
                        cols_ok, d1_ok, True, False)  # fmt: skip
        v1 = _load_tile(v_base + offs_n[:, None] * stride_vn + offs_d1[None, :] * stride_vd,
                        cols_ok, d1_ok, True, False)  # fmt: skip
        k1 = tl.where(d1_ok[None, :], k1, 0.0)
        v1 = tl.where(d1_ok[None, :], v1, 0.0)
    q_base = _base(Q, z, h, start_q, stride_qz, stride_qh, stride_qm)
    do_base = _base(DO, z, h, start_q, stride_doz, stride_doh, stride_dom)
    q_off0 = offs_m[:, None] * stride_qm + offs_d0[None, :] * stride_qd
    q_off1 = offs_m[:, None] * stride_qm + offs_d1[None, :] * stride_qd
    do_off0 = offs_m[:, None] * stride_dom + offs_d0[None, :] * stride_dod
    do_off1 = offs_m[:, None] * stride_dom + offs_d1[None, :] * stride_dod
    l_base = _base(Lse, z, h, start_q, stride_lz, stride_lh, stride_lm)
    d_base = _base(Delta, z, h, start_q, stride_lz, stride_lh, stride_lm)
    m_base = _base(Mask, z, h // mask_head_div, n0, stride_mz, stride_mh, stride_mn)
    b_base = _base(Bias, z, h // bias_head_div, n0, stride_bz, stride_bh, stride_bn)
    f_base = _base(Flags, z, h // mask_head_div, n0 // MASK_BLOCK, stride_fz, stride_fh, stride_fn)
    db_base = DB + z.to(tl.int64) * stride_dbz + h.to(tl.int64) * stride_dbh
    m_off = offs_m[:, None] * stride_mm + offs_n[None, :] * stride_mn
    b_off = offs_m[:, None] * stride_bm + offs_n[None, :] * stride_bn
    if DBIAS_MODE == 1:
        db_off = offs_m[:, None] * stride_dbm + cols[None, :] * stride_dbn
    else:
        db_off = offs_m * stride_dbm + blk * stride_dbn

    dk0 = tl.zeros([BLOCK_N, HEAD_D0], tl.float32)
    dv0 = tl.zeros([BLOCK_N, HEAD_D0], tl.float32)
    dk1 = tl.zeros([BLOCK_N, HEAD_D1], tl.float32)
    dv1 = tl.zeros([BLOCK_N, HEAD_D1], tl.float32)
    dbq = tl.zeros([BLOCK_N], tl.float32)
    shift = len_k - len_q
    m_lo, a, b, m_end = _col_range(n0, len_q, len_k, BLOCK_M, BLOCK_N, IS_CAUSAL)
    for m0 in range(m_lo, a, BLOCK_M):
        m64 = _wide(m0)
        dk0, dk1, dv0, dv1, dbq = _dkdv_tile(
            dk0, dk1, dv0, dv1, dbq, k0, k1, v0, v1, q_base + m64 * stride_qm,
            do_base + m64 * stride_dom, q_off0, q_off1, do_off0, do_off1,
            l_base, d_base, m_base + m64 * stride_mm + m_off, b_base + m64 * stride_bm + b_off,
            f_base + (m0 // MASK_BLOCK) * stride_fm, db_base + m64 * stride_dbm + db_off,
            m0 + offs_m, cols, len_q, len_k, shift, qk_scale, d0_ok, d1_ok,
            stride_lm,
            True, IS_CAUSAL, HAS_MASK, HAS_BIAS, HAS_D1, MASK_D0, MASK_D1, DBIAS_MODE, DOT_PREC,
        )  # fmt: skip
    for m0 in range(a, b, BLOCK_M):
        m64 = _wide(m0)
        dk0, dk1, dv0, dv1, dbq = _dkdv_tile(
            dk0, dk1, dv0, dv1, dbq, k0, k1, v0, v1, q_base + m64 * stride_qm,
            do_base + m64 * stride_dom, q_off0, q_off1, do_off0, do_off1,
            l_base, d_base, m_base + m64 * stride_mm + m_off, b_base + m64 * stride_bm + b_off,
            f_base + (m0 // MASK_BLOCK) * stride_fm, db_base + m64 * stride_dbm + db_off,
            m0 + offs_m, cols, len_q, len_k, shift, qk_scale, d0_ok, d1_ok,
            stride_lm,
            False, IS_CAUSAL, HAS_MASK, HAS_BIAS, HAS_D1, MASK_D0, MASK_D1, DBIAS_MODE, DOT_PREC,
        )  # fmt: skip
    for m0 in range(b, m_end, BLOCK_M):
        m64 = _wide(m0)
        dk0, dk1, dv0, dv1, dbq = _dkdv_tile(
            dk0, dk1, dv0, dv1, dbq, k0, k1, v0, v1, q_base + m64 * stride_qm,
            do_base + m64 * stride_dom, q_off0, q_off1, do_off0, do_off1,
            l_base, d_base, m_base + m64 * stride_mm + m_off, b_base + m64 * stride_bm + b_off,
            f_base + (m0 // MASK_BLOCK) * stride_fm, db_base + m64 * stride_dbm + db_off,
            m0 + offs_m, cols, len_q, len_k, shift, qk_scale, d0_ok, d1_ok,
            stride_lm,
            True, IS_CAUSAL, HAS_MASK, HAS_BIAS, HAS_D1, MASK_D0, MASK_D1, DBIAS_MODE, DOT_PREC,
        )  # fmt: skip

    dk_base = _base(DK, z, h, start_k + n0, stride_dkz, stride_dkh, stride_dkn)
    dv_base = _base(DV, z, h, start_k + n0, stride_dvz, stride_dvh, stride_dvn)
    ok0 = cols_ok[:, None] & d0_ok[None, :]
    tl.store(dk_base + offs_n[:, None] * stride_dkn + offs_d0[None, :] * stride_dkd,
             dk0 * scale, mask=ok0)  # fmt: skip
    tl.store(dv_base + offs_n[:, None] * stride_dvn + offs_d0[None, :] * stride_dvd, dv0, mask=ok0)
    if HAS_D1:
        ok1 = cols_ok[:, None] & d1_ok[None, :]
        tl.store(dk_base + offs_n[:, None] * stride_dkn + offs_d1[None, :] * stride_dkd,
                 dk1 * scale, mask=ok1)  # fmt: skip
        tl.store(dv_base + offs_n[:, None] * stride_dvn + offs_d1[None, :] * stride_dvd, dv1,
                 mask=ok1)  # fmt: skip
    if DBIAS_MODE == 2:
        tl.store(db_base + cols * stride_dbn, dbq, mask=cols_ok)
    elif DBIAS_MODE == 4:
        tl.store(db_base + blk * stride_dbn, tl.sum(dbq, 0))


@triton.jit
def _dq_tile(
    dq0, dq1, q0, q1, do0, do1, lse2, delta, k_ptrs, v_ptrs, k_off0, k_off1, v_off0, v_off1,
    mask_ptrs, bias_ptrs, flag_ptr, rows, cols, len_q, len_k, causal_shift, qk_scale,
    d0_ok, d1_ok,
    MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_D1: tl.constexpr, MASK_D0: tl.constexpr,
    MASK_D1: tl.constexpr, DOT_PREC: tl.constexpr,
):  # fmt: skip
    """One KV tile of the dq pass: dq += dS @ K."""
    if _tile_active(flag_ptr, HAS_MASK):
        cols_ok = cols < len_k
        # [BLOCK_N, D0], [BLOCK_N, D1]
        k0 = _load_tile(k_ptrs + k_off0, cols_ok, d0_ok, MASKED, MASK_D0)
        v0 = _load_tile(v_ptrs + v_off0, cols_ok, d0_ok, MASKED, MASK_D0)
        k1 = k0
        v1 = v0
        if HAS_D1:
            k1 = _load_tile(k_ptrs + k_off1, cols_ok, d1_ok, MASKED, MASK_D1)
            v1 = _load_tile(v_ptrs + v_off1, cols_ok, d1_ok, MASKED, MASK_D1)
        _, ds = _bwd_probs(
            q0, q1, do0, do1, k0, k1, v0, v1, lse2, delta, rows, cols, len_q, len_k,
            causal_shift, qk_scale, mask_ptrs, bias_ptrs,
            MASKED, IS_CAUSAL, HAS_MASK, HAS_BIAS, HAS_D1, DOT_PREC,
        )  # fmt: skip
        # [BLOCK_M, D0], [BLOCK_M, D1]
        dq0 += tl.dot(ds.to(k0.dtype), k0, input_precision=DOT_PREC)
        if HAS_D1:
            dq1 += tl.dot(ds.to(k1.dtype), k1, input_precision=DOT_PREC)
    return dq0, dq1


@triton.jit(do_not_specialize=_VARYING)
def _flash_bwd_dq_kernel(
    Q, K, V, DO, Lse, Delta, DQ, Mask, Bias, Flags, Work,
    stride_qz, stride_qh, stride_qm, stride_qd,
    stride_kz, stride_kh, stride_kn, stride_kd,
    stride_vz, stride_vh, stride_vn, stride_vd,
    stride_doz, stride_doh, stride_dom, stride_dod,
    stride_dqz, stride_dqh, stride_dqm, stride_dqd,
    stride_lz, stride_lh, stride_lm,
    stride_mz, stride_mh, stride_mm, stride_mn,
    stride_bz, stride_bh, stride_bm, stride_bn,
    stride_fz, stride_fh, stride_fm, stride_fn,
    seqlen_q, seqlen_k, group, mask_head_div, bias_head_div, qk_scale, scale,
    HEAD_DIM: tl.constexpr, HEAD_D0: tl.constexpr, HEAD_D1: tl.constexpr,
    HAS_D1: tl.constexpr, BLOCK_OUTER: tl.constexpr, BLOCK_INNER: tl.constexpr,
    MASK_BLOCK: tl.constexpr, IS_VARLEN: tl.constexpr, IS_CAUSAL: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_PREC: tl.constexpr,
    ALIGN: tl.constexpr,
):  # fmt: skip
    """dq: one program per (query block, query head, batch), no atomics."""
    BLOCK_M: tl.constexpr = BLOCK_OUTER
    BLOCK_N: tl.constexpr = BLOCK_INNER
    stride_qz, stride_qh, stride_qm = _aligned(stride_qz, stride_qh, stride_qm, ALIGN)
    stride_kz, stride_kh, stride_kn = _aligned(stride_kz, stride_kh, stride_kn, ALIGN)
    stride_vz, stride_vh, stride_vn = _aligned(stride_vz, stride_vh, stride_vn, ALIGN)
    stride_doz, stride_doh, stride_dom = _aligned(stride_doz, stride_doh, stride_dom, ALIGN)
    stride_dqz, stride_dqh, stride_dqm = _aligned(stride_dqz, stride_dqh, stride_dqm, ALIGN)
    pid, h, z = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start_q, len_q, start_k, len_k, blk = _work_item(Work, pid, seqlen_q, seqlen_k, IS_VARLEN)
    m0 = blk * BLOCK_M
    hk = h // group
    rows = m0 + tl.arange(0, BLOCK_M)
    local = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d0 = tl.arange(0, HEAD_D0)
    offs_d1 = (HEAD_DIM - HEAD_D1) + tl.arange(0, HEAD_D1)  # ends at D: loads need no mask
    d0_ok = offs_d0 < HEAD_DIM
    d1_ok = offs_d1 >= HEAD_D0  # lanes tile 1 owns; the overlap with tile 0 is zeroed/unstored
    MASK_D0: tl.constexpr = HEAD_D0 > HEAD_DIM
    MASK_D1: tl.constexpr = False
    rows_ok = rows < len_q

    q_base = _base(Q, z, h, start_q + m0, stride_qz, stride_qh, stride_qm)
    do_base = _base(DO, z, h, start_q + m0, stride_doz, stride_doh, stride_dom)
    # [BLOCK_M, D0], [BLOCK_M, D1]
    q0 = _load_tile(q_base + local[:, None] * stride_qm + offs_d0[None, :] * stride_qd,
                    rows_ok, d0_ok, True, MASK_D0)  # fmt: skip
    do0 = _load_tile(do_base + local[:, None] * stride_dom + offs_d0[None, :] * stride_dod,
                     rows_ok, d0_ok, True, MASK_D0)  # fmt: skip
    q1 = q0
    do1 = do0
    if HAS_D1:
        q1 = _load_tile(q_base + local[:, None] * stride_qm + offs_d1[None, :] * stride_qd,
                        rows_ok, d1_ok, True, False)  # fmt: skip
        do1 = _load_tile(do_base + local[:, None] * stride_dom + offs_d1[None, :] * stride_dod,
                         rows_ok, d1_ok, True, False)  # fmt: skip
        q1 = tl.where(d1_ok[None, :], q1, 0.0)
        do1 = tl.where(d1_ok[None, :], do1, 0.0)
    l_base = _base(Lse, z, h, start_q + m0, stride_lz, stride_lh, stride_lm)
    d_base = _base(Delta, z, h, start_q + m0, stride_lz, stride_lh, stride_lm)
    lse2, delta = _load_row_stats(l_base, d_base, local, len_q - m0, stride_lm)
    k_base = _base(K, z, hk, start_k, stride_kz, stride_kh, stride_kn)
    v_base = _base(V, z, hk, start_k, stride_vz, stride_vh, stride_vn)
    k_off0 = offs_n[:, None] * stride_kn + offs_d0[None, :] * stride_kd
    k_off1 = offs_n[:, None] * stride_kn + offs_d1[None, :] * stride_kd
    v_off0 = offs_n[:, None] * stride_vn + offs_d0[None, :] * stride_vd
    v_off1 = offs_n[:, None] * stride_vn + offs_d1[None, :] * stride_vd
    m_base = _base(Mask, z, h // mask_head_div, m0, stride_mz, stride_mh, stride_mm)
    b_base = _base(Bias, z, h // bias_head_div, m0, stride_bz, stride_bh, stride_bm)
    f_base = _base(Flags, z, h // mask_head_div, m0 // MASK_BLOCK, stride_fz, stride_fh, stride_fm)
    clamped = tl.minimum(local, len_q - 1 - m0)[:, None]  # see _flash_fwd_kernel
    m_off = clamped * stride_mm + offs_n[None, :] * stride_mn
    b_off = clamped * stride_bm + offs_n[None, :] * stride_bn

    dq0 = tl.zeros([BLOCK_M, HEAD_D0], tl.float32)
    dq1 = tl.zeros([BLOCK_M, HEAD_D1], tl.float32)
    shift = len_k - len_q
    n_full, n_end = _row_range(m0, len_q, len_k, BLOCK_M, BLOCK_N, IS_CAUSAL)
    for n0 in range(0, n_full, BLOCK_N):
        n64 = _wide(n0)
        dq0, dq1 = _dq_tile(
            dq0, dq1, q0, q1, do0, do1, lse2, delta, k_base + n64 * stride_kn,
            v_base + n64 * stride_vn, k_off0, k_off1, v_off0, v_off1,
            m_base + n64 * stride_mn + m_off, b_base + n64 * stride_bn + b_off,
            f_base + (n0 // MASK_BLOCK) * stride_fn, rows, n0 + offs_n, len_q, len_k, shift,
            qk_scale, d0_ok, d1_ok,
            False, IS_CAUSAL, HAS_MASK, HAS_BIAS, HAS_D1, MASK_D0, MASK_D1, DOT_PREC,
        )  # fmt: skip
    for n0 in range(n_full, n_end, BLOCK_N):
        n64 = _wide(n0)
        dq0, dq1 = _dq_tile(
            dq0, dq1, q0, q1, do0, do1, lse2, delta, k_base + n64 * stride_kn,
            v_base + n64 * stride_vn, k_off0, k_off1, v_off0, v_off1,
            m_base + n64 * stride_mn + m_off, b_base + n64 * stride_bn + b_off,
            f_base + (n0 // MASK_BLOCK) * stride_fn, rows, n0 + offs_n, len_q, len_k, shift,
            qk_scale, d0_ok, d1_ok,
            True, IS_CAUSAL, HAS_MASK, HAS_BIAS, HAS_D1, MASK_D0, MASK_D1, DOT_PREC,
        )  # fmt: skip

    dq_base = _base(DQ, z, h, start_q + m0, stride_dqz, stride_dqh, stride_dqm)
    tl.store(dq_base + local[:, None] * stride_dqm + offs_d0[None, :] * stride_dqd, dq0 * scale,
             mask=rows_ok[:, None] & d0_ok[None, :])  # fmt: skip
    if HAS_D1:
        tl.store(dq_base + local[:, None] * stride_dqm + offs_d1[None, :] * stride_dqd,
                 dq1 * scale, mask=rows_ok[:, None] & d1_ok[None, :])  # fmt: skip


_fwd = triton.autotune(
    _configs(FWD_CONFIGS), AUTOTUNE_KEY, prune_configs_by={"early_config_prune": _prune}
)(_flash_fwd_kernel)
_dkdv = triton.autotune(
    _configs(BWD_CONFIGS),
    [*AUTOTUNE_KEY, "DBIAS_MODE"],
    prune_configs_by={"early_config_prune": _prune},
)(_flash_bwd_dkdv_kernel)
_dq = triton.autotune(
    _configs(BWD_CONFIGS), AUTOTUNE_KEY, prune_configs_by={"early_config_prune": _prune}
)(_flash_bwd_dq_kernel)


# ------------------------------------------------------------------ launchers


@dataclass(frozen=True)
class FlashProblem:
    """Geometry and options of one call (host ints only; no validation happens here).

    gqa: `batch = B`, `seqlen_q = Lq`, `seqlen_k = Lk`. varlen: `batch = 1`, per-sequence
    `starts_*` / `seqlens_*` from cu_seqlens (seqlen_* unused).
    """

    is_varlen: bool
    batch: int
    num_q_heads: int
    num_kv_heads: int
    causal: bool
    scale: float
    seqlen_q: int = 0
    seqlen_k: int = 0
    starts_q: tuple[int, ...] = ()
    starts_k: tuple[int, ...] = ()
    seqlens_q: tuple[int, ...] = ()
    seqlens_k: tuple[int, ...] = ()

    @property
    def group(self) -> int:
        return self.num_q_heads // self.num_kv_heads


def _strides(x: torch.Tensor, is_varlen: bool) -> tuple[int, int, int, int]:
    """(z, h, row, d) strides: varlen (T, H, D) has no z; gqa (B, H, L, D)."""
    if is_varlen:
        return (0, x.stride(1), x.stride(0), x.stride(2))
    return tuple(x.stride())


def _lse_strides(x: torch.Tensor, is_varlen: bool) -> tuple[int, int, int]:
    """(z, h, row) strides of an lse-shaped tensor: varlen (Hq, Tq); gqa (B, Hq, Lq)."""
    if is_varlen:
        return (0, x.stride(0), x.stride(1))
    return tuple(x.stride())


def _broadcast(x: torch.Tensor | None) -> tuple[int, int, int, int]:
    """Strides of a (Bm, Hm, Lqm, Lkm) tensor with every size-1 (broadcast) dim read at 0."""
    if x is None:
        return (0, 0, 0, 0)
    return tuple(0 if n == 1 else s for n, s in zip(x.shape, x.stride(), strict=True))


def _head_div(x: torch.Tensor | None, problem: FlashProblem) -> int:
    """Query head h reads head h // div of a mask/bias: Hq-headed 1, kv-headed G."""
    if x is None or x.shape[1] == problem.num_q_heads:
        return 1
    return problem.group


@dataclass(frozen=True)
class _Common:
    """Arguments every kernel takes, resolved once per launch, and that launch's grid."""

    kwargs: dict
    grid: tuple[int, int, int]
    work: torch.Tensor


WORK_TABLE_CACHE = 64  # varlen work tables kept on their device (a few KiB each)


@functools.lru_cache(maxsize=WORK_TABLE_CACHE)
def _cached_work_table(
    seqlens_rows: tuple[int, ...],
    seqlens_cols: tuple[int, ...],
    starts_rows: tuple[int, ...],
    starts_cols: tuple[int, ...],
    block: int,
    rows_are_queries: bool,
    device: torch.device,
) -> torch.Tensor:
    table = varlen_work_table(
        seqlens_rows, seqlens_cols, starts_rows, starts_cols, block,
        rows_are_queries=rows_are_queries, device=device,
    )  # fmt: skip
    if table.is_cuda:
        # the copy is asynchronous on this stream; a later launch on another stream must not
        # read the table before it lands (cheap: the caller has just synced on cu_seqlens)
        torch.cuda.current_stream(table.device).synchronize()
    return table


def _work_table(
    problem: FlashProblem, block: int, rows_are_queries: bool, device: torch.device
) -> torch.Tensor:
    """The varlen work table of one grid, built once per (lengths, block, side, device).

    Building it is host Python plus a host-to-device copy, and it runs while the GPU idles: the
    caller has just read cu_seqlens on the host. Repeated calls (every step of a vision encoder
    with fixed image sizes, every benchmark repetition) reuse the device tensor. Kernels only
    read it; a new table is on the device before any stream can read it, and `record_stream`
    keeps an evicted table's memory from reuse until the launches that read it are done.
    """
    p = problem
    if rows_are_queries:
        key = (p.seqlens_q, p.seqlens_k, p.starts_q, p.starts_k)
    else:
        key = (p.seqlens_k, p.seqlens_q, p.starts_k, p.starts_q)
    table = _cached_work_table(*key, block, rows_are_queries, device)
    if table.is_cuda and not torch.cuda.is_current_stream_capturing():
        table.record_stream(torch.cuda.current_stream(table.device))
    return table


def _block_sizes(
    q: torch.Tensor, split: HeadDimSplit, config: FlashConfig | None
) -> tuple[int, int]:
    interpreter = interpreter_active() or q.device.type == "cpu"
    outer = config.block_outer if config else _outer_block(split, q.dtype, interpreter)
    base = INTERPRETER_BLOCK if interpreter else GPU_MASK_BLOCK
    mask_block = max(base, outer, config.block_inner if config else 0)
    return outer, mask_block


def _prepare(
    q: torch.Tensor,
    problem: FlashProblem,
    mask: torch.Tensor | None,
    bias: torch.Tensor | None,
    config: FlashConfig | None,
    *,
    rows_are_queries: bool,
) -> _Common:
    """Shared kwargs and the grid of one pass: over query blocks (forward, dq) or key blocks
    (dk/dv). Only that pass's varlen work table is built."""
    split = split_head_dim(q.shape[-1])
    outer, mask_block = _block_sizes(q, split, config)
    flags = block_any(mask, mask_block) if mask is not None else None
    if problem.is_varlen:
        work = _work_table(problem, outer, rows_are_queries, q.device)
        grid = (work.shape[0], problem.num_q_heads, 1)
    else:
        work = q
        length = problem.seqlen_q if rows_are_queries else problem.seqlen_k
        grid = (triton.cdiv(length, outer), problem.num_q_heads, problem.batch)
    kwargs = dict(
        Mask=mask.view(torch.uint8) if mask is not None else q,
        Bias=bias if bias is not None else q,
        Flags=flags if flags is not None else q,
        **_stride_kw("m", "zhmn", _broadcast(mask)),
        **_stride_kw("b", "zhmn", _broadcast(bias)),
        **_stride_kw("f", "zhmn", _broadcast(flags)),
        seqlen_q=problem.seqlen_q,
        seqlen_k=problem.seqlen_k,
        group=problem.group,
        mask_head_div=_head_div(mask, problem),
        bias_head_div=_head_div(bias, problem),
        qk_scale=problem.scale * LOG2E.value,
        HEAD_DIM=split.head_dim,
        HEAD_D0=split.d0,
        HEAD_D1=split.d1 if split.has_d1 else 16,
        HAS_D1=split.has_d1,
        BLOCK_OUTER=outer,
        MASK_BLOCK=mask_block,
        IS_VARLEN=problem.is_varlen,
        IS_CAUSAL=problem.causal,
        HAS_MASK=mask is not None,
        HAS_BIAS=bias is not None,
        DOT_PREC="ieee" if q.dtype == torch.float32 else None,
    )
    return _Common(kwargs, grid, work)


def _stride_kw(prefix: str, axes: str, strides: tuple[int, ...]) -> dict[str, int]:
    """{"stride_<prefix><axis>": stride} keyword arguments of a kernel."""
    return {f"stride_{prefix}{a}": s for a, s in zip(axes, strides, strict=True)}


ALIGN = 8  # elements: 16 bytes of float16 / bfloat16 (D % 8 == 0 by contract)


def _alignment(is_varlen: bool, *tensors: torch.Tensor) -> int:
    """ALIGN when every z/h/row stride of `tensors` is a multiple of it and D is unit-stride
    (the usual layouts), else 1. Strides reach the kernels divided by this value."""
    ok = all(
        x.stride(-1) == 1 and all(s % ALIGN == 0 for s in _strides(x, is_varlen)[:3])
        for x in tensors
    )
    return ALIGN if ok else 1


def _named(prefix: str, x: torch.Tensor, is_varlen: bool, align: int) -> dict[str, int]:
    z, h, r, d = _strides(x, is_varlen)
    return _stride_kw(prefix, "zhmd", (z // align, h // align, r // align, d))


def _named_kv(prefix: str, x: torch.Tensor, is_varlen: bool, align: int) -> dict[str, int]:
    z, h, r, d = _strides(x, is_varlen)
    return _stride_kw(prefix, "zhnd", (z // align, h // align, r // align, d))


def _launch(kernel, grid: tuple[int, int, int], config: FlashConfig | None, **kwargs: object):
    """Launch the autotuned `kernel`, or its plain jit function with a pinned `config`."""
    if grid[0] == 0:
        return
    if config is None:
        kernel[grid](**kwargs)
    else:
        kernel.fn[grid](
            **kwargs,
            BLOCK_INNER=config.block_inner,
            num_warps=config.num_warps,
            num_stages=config.num_stages,
        )


def flash_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    problem: FlashProblem,
    *,
    mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    config: FlashConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Allocate out (q's shape and dtype) and lse (float32), launch the forward kernel."""
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if problem.is_varlen:
        lse = torch.empty((q.shape[1], q.shape[0]), dtype=torch.float32, device=q.device)
    else:
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse
    common = _prepare(q, problem, mask, bias, config, rows_are_queries=True)
    vl = problem.is_varlen
    k, v = (k, v) if k.numel() else (q, q)
    al = _alignment(vl, q, k, v, out)
    _launch(
        _fwd, common.grid, config,
        Q=q, K=k, V=v, Out=out, Lse=lse, Work=common.work,
        **_named("q", q, vl, al), **_named_kv("k", k, vl, al), **_named_kv("v", v, vl, al),
        **_named("o", out, vl, al), ALIGN=al, RAW_MAX=bias is None and problem.scale > 0,
        **_stride_kw("l", "zhm", _lse_strides(lse, vl)),
        **common.kwargs,
    )  # fmt: skip
    return out, lse


def _dbias_buffer(
    q: torch.Tensor, problem: FlashProblem, bias: torch.Tensor, outer: int
) -> tuple[torch.Tensor, int]:
    """float32 (B, Hq, Lq or 1, Lk or number of KV blocks) buffer and its DBIAS_MODE."""
    reduce_q = bias.shape[2] == 1
    reduce_k = bias.shape[3] == 1
    rows = 1 if reduce_q else problem.seqlen_q
    cols = triton.cdiv(problem.seqlen_k, outer) if reduce_k else problem.seqlen_k
    mode = {(False, False): 1, (True, False): 2, (False, True): 3, (True, True): 4}
    buf = torch.zeros(
        (problem.batch, problem.num_q_heads, rows, cols), dtype=torch.float32, device=q.device
    )
    return buf, mode[(reduce_q, reduce_k)]


def _reduce_dbias(buf: torch.Tensor, bias: torch.Tensor, problem: FlashProblem) -> torch.Tensor:
    """Sum the per-query-head dS buffer down to the bias's own (broadcast) shape."""
    if bias.shape[3] == 1:
        buf = buf.sum(dim=3, keepdim=True)
    hm = bias.shape[1]
    if hm == 1:
        buf = buf.sum(dim=1, keepdim=True)
    elif hm != problem.num_q_heads:
        b, _, r, c = buf.shape
        buf = buf.view(b, problem.num_kv_heads, problem.group, r, c).sum(dim=2)
    if bias.shape[0] == 1:
        buf = buf.sum(dim=0, keepdim=True)
    return buf.to(bias.dtype)


def flash_backward(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    dlse: torch.Tensor | None,
    problem: FlashProblem,
    *,
    mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    need_dbias: bool = False,
    config_dkdv: FlashConfig | None = None,
    config_dq: FlashConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """dq, dk, dv (input dtypes, summed over each query-head group) and dbias (bias's shape)."""
    vl = problem.is_varlen
    g = problem.group
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if g == 1:
        dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
        dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    else:
        shape = list(k.shape)
        shape[1] = problem.num_q_heads
        dk = torch.empty(shape, dtype=torch.float32, device=k.device)
        dv = torch.empty(shape, dtype=torch.float32, device=k.device)
    dbias = None
    if q.numel() == 0 or k.numel() == 0:
        dq.zero_()
        dk.zero_()
        dv.zero_()
        if need_dbias:
            dbias = torch.zeros_like(bias)
        return dq, _sum_group(dk, k, problem), _sum_group(dv, v, problem), dbias
    delta = (out.float() * do.float()).sum(-1)
    delta = delta.transpose(0, 1) if vl else delta
    if dlse is not None:
        delta = delta - dlse
    delta = delta.contiguous()
    lse = lse.contiguous()
    lse_strides = _stride_kw("l", "zhm", _lse_strides(lse, vl))
    common = _prepare(q, problem, mask, bias, config_dkdv, rows_are_queries=False)
    al = _alignment(vl, q, k, v, do, dq, dk, dv)
    shared = dict(
        Q=q, K=k, V=v, DO=do, Lse=lse, Delta=delta, ALIGN=al,
        **_named("q", q, vl, al), **_named_kv("k", k, vl, al), **_named_kv("v", v, vl, al),
        **_named("do", do, vl, al), **lse_strides, scale=problem.scale,
    )  # fmt: skip
    if need_dbias:
        db_buf, mode = _dbias_buffer(q, problem, bias, common.kwargs["BLOCK_OUTER"])
    else:
        db_buf, mode = q, 0
    _launch(
        _dkdv, common.grid, config_dkdv,
        DK=dk, DV=dv, DB=db_buf, Work=common.work,
        **_named_kv("dk", dk, vl, al), **_named_kv("dv", dv, vl, al),
        **_stride_kw("db", "zhmn", db_buf.stride() if mode else (0, 0, 0, 0)),
        DBIAS_MODE=mode, **shared, **common.kwargs,
    )  # fmt: skip
    common = _prepare(q, problem, mask, bias, config_dq, rows_are_queries=True)
    _launch(
        _dq, common.grid, config_dq,
        DQ=dq, Work=common.work, **_named("dq", dq, vl, al), **shared, **common.kwargs,
    )  # fmt: skip
    if need_dbias:
        dbias = _reduce_dbias(db_buf, bias, problem)
    return dq, _sum_group(dk, k, problem), _sum_group(dv, v, problem), dbias


def _sum_group(buf: torch.Tensor, like: torch.Tensor, problem: FlashProblem) -> torch.Tensor:
    """Per-query-head dk/dv buffer -> per-kv-head gradient in `like`'s dtype."""
    g = problem.group
    if g == 1:
        return buf
    if problem.is_varlen:
        t, _, d = buf.shape
        return buf.view(t, problem.num_kv_heads, g, d).sum(dim=2).to(like.dtype)
    b, _, n, d = buf.shape
    return buf.view(b, problem.num_kv_heads, g, n, d).sum(dim=2).to(like.dtype)


__all__ = ["FlashConfig", "FlashProblem", "flash_backward", "flash_forward"]
