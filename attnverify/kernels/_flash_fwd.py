"""Flash core, forward kernel: out and lse for one (query block, query head, batch) program.

KV tiles are walked in two loops: fully visible tiles first (no bounds, no causal test, no
mask load), then the masked ones. Without a mask the split comes from the bounds and the
causal diagonal; with a mask from the block's tile lists (`_flash_plan.mask_tile_lists`), so a
block-sparse mask costs time in proportion to its live tiles: tiles whose mask block is all
False are never visited, tiles all True never read the mask. Helpers and conventions:
`_flash_tiles`.
"""

from __future__ import annotations

import triton
import triton.language as tl

from attnverify.kernels._flash_tiles import (
    AUTOTUNE_KEY,
    FWD_CONFIGS,
    LN2,
    VARYING,
    _aligned,
    _base,
    _load_split,
    _row_loops,
    _scores,
    _tile_lists,
    _tile_start,
    _wide,
    _work_item,
    autotuned,
)


@triton.jit
def _fwd_loop(
    acc0, acc1, m_i, l_i, q0, q1, k_base, v_base, k_off0, k_off1, v_off0, v_off1,
    m_base, m_off, b_base, b_off, entries, n_entries, lo, hi,
    rows, offs_n, len_q, len_k, causal_shift, qk_scale, d0_ok, d1_ok,
    stride_kn, stride_vn, stride_mn, stride_bn,
    BLOCK_N: tl.constexpr, MASK_BLOCK: tl.constexpr, LISTED: tl.constexpr,
    FROM_END: tl.constexpr, MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_D1: tl.constexpr,
    MASK_D0: tl.constexpr, DOT_PREC: tl.constexpr,
):  # fmt: skip
    """Online softmax over KV tiles lo..hi-1 of one query block: update acc, max m_i, sum l_i."""
    for i in range(lo, hi):
        n0 = _tile_start(i, entries, n_entries, LISTED, FROM_END, BLOCK_N, MASK_BLOCK)
        n64 = _wide(n0)
        cols = n0 + offs_n
        cols_ok = cols < len_k
        # [BLOCK_N, D0], [BLOCK_N, D1]
        k0, k1 = _load_split(k_base + n64 * stride_kn + k_off0, k_base + n64 * stride_kn + k_off1,
                             cols_ok, d0_ok, d1_ok, MASKED, MASK_D0, HAS_D1, False)  # fmt: skip
        v0, v1 = _load_split(v_base + n64 * stride_vn + v_off0, v_base + n64 * stride_vn + v_off1,
                             cols_ok, d0_ok, d1_ok, MASKED, MASK_D0, HAS_D1, False)  # fmt: skip
        # [BLOCK_M, BLOCK_N]
        s = _scores(
            q0, q1, k0, k1, rows, cols, len_q, len_k, causal_shift, qk_scale,
            m_base + n64 * stride_mn + m_off, b_base + n64 * stride_bn + b_off,
            MASKED, IS_CAUSAL, HAS_MASK, HAS_BIAS, HAS_D1, DOT_PREC,
        )  # fmt: skip
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


@triton.jit(do_not_specialize=VARYING)
def _flash_fwd_kernel(
    Q, K, V, Out, Lse, Mask, Bias, Tiles, Work,
    stride_qz, stride_qh, stride_qm, stride_qd,
    stride_kz, stride_kh, stride_kn, stride_kd,
    stride_vz, stride_vh, stride_vn, stride_vd,
    stride_oz, stride_oh, stride_om, stride_od,
    stride_lz, stride_lh, stride_lm,
    stride_mz, stride_mh, stride_mm, stride_mn,
    stride_bz, stride_bh, stride_bm, stride_bn,
    stride_tz, stride_th, stride_to,
    seqlen_q, seqlen_k, num_seqs, search_top, group, mask_head_div, bias_head_div, qk_scale,
    HEAD_DIM: tl.constexpr, HEAD_D0: tl.constexpr, HEAD_D1: tl.constexpr,
    HAS_D1: tl.constexpr, BLOCK_OUTER: tl.constexpr, BLOCK_INNER: tl.constexpr,
    MASK_BLOCK: tl.constexpr, IS_VARLEN: tl.constexpr, IS_CAUSAL: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_PREC: tl.constexpr,
    ALIGN: tl.constexpr,
):  # fmt: skip
    """Forward: one program per (query block, query head, batch); writes out and lse."""
    BLOCK_M: tl.constexpr = BLOCK_OUTER
    BLOCK_N: tl.constexpr = BLOCK_INNER
    stride_qz, stride_qh, stride_qm = _aligned(stride_qz, stride_qh, stride_qm, ALIGN)
    stride_kz, stride_kh, stride_kn = _aligned(stride_kz, stride_kh, stride_kn, ALIGN)
    stride_vz, stride_vh, stride_vn = _aligned(stride_vz, stride_vh, stride_vn, ALIGN)
    stride_oz, stride_oh, stride_om = _aligned(stride_oz, stride_oh, stride_om, ALIGN)
    pid, h, z = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start_q, len_q, start_k, len_k, blk = _work_item(
        Work, pid, seqlen_q, seqlen_k, num_seqs, search_top, IS_VARLEN
    )
    m0 = blk * BLOCK_M
    if m0 >= len_q:  # a surplus varlen item (the grid is an upper bound): nothing to do
        return
    hk = h // group
    rows = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d0 = tl.arange(0, HEAD_D0)
    offs_d1 = (HEAD_DIM - HEAD_D1) + tl.arange(0, HEAD_D1)  # ends at D: loads need no mask
    d0_ok = offs_d0 < HEAD_DIM
    d1_ok = offs_d1 >= HEAD_D0  # lanes tile 1 owns; the overlap with tile 0 is zeroed/unstored
    MASK_D0: tl.constexpr = HEAD_D0 > HEAD_DIM
    rows_ok = rows < len_q

    q_base = _base(Q, z, h, start_q + m0, stride_qz, stride_qh, stride_qm)
    q_rows = tl.arange(0, BLOCK_M)[:, None] * stride_qm
    # [BLOCK_M, D0], [BLOCK_M, D1]
    q0, q1 = _load_split(q_base + q_rows + offs_d0[None, :] * stride_qd,
                         q_base + q_rows + offs_d1[None, :] * stride_qd,
                         rows_ok, d0_ok, d1_ok, True, MASK_D0, HAS_D1, True)  # fmt: skip
    k_base = _base(K, z, hk, start_k, stride_kz, stride_kh, stride_kn)
    v_base = _base(V, z, hk, start_k, stride_vz, stride_vh, stride_vn)
    k_off0 = offs_n[:, None] * stride_kn + offs_d0[None, :] * stride_kd
    k_off1 = offs_n[:, None] * stride_kn + offs_d1[None, :] * stride_kd
    v_off0 = offs_n[:, None] * stride_vn + offs_d0[None, :] * stride_vd
    v_off1 = offs_n[:, None] * stride_vn + offs_d1[None, :] * stride_vd
    m_base = _base(Mask, z, h // mask_head_div, m0, stride_mz, stride_mh, stride_mm)
    b_base = _base(Bias, z, h // bias_head_div, m0, stride_bz, stride_bh, stride_bm)
    # rows past Lq read row Lq - 1 (results discarded) so interior tiles load without masks
    local = tl.minimum(tl.arange(0, BLOCK_M), len_q - 1 - m0)[:, None]
    m_off = local * stride_mm + offs_n[None, :] * stride_mn
    b_off = local * stride_bm + offs_n[None, :] * stride_bn
    entries, n_full, n_part = _tile_lists(
        Tiles, z, h // mask_head_div, m0 // MASK_BLOCK, stride_tz, stride_th, stride_to, HAS_MASK
    )
    n_entries = (len_k + MASK_BLOCK - 1) // MASK_BLOCK
    a, lo2, b = _row_loops(m0, len_q, len_k, entries, n_full, n_part, BLOCK_M, BLOCK_N,
                           MASK_BLOCK, IS_CAUSAL, HAS_MASK)  # fmt: skip

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc0 = tl.zeros([BLOCK_M, HEAD_D0], tl.float32)
    acc1 = tl.zeros([BLOCK_M, HEAD_D1], tl.float32)
    shift = len_k - len_q
    acc0, acc1, m_i, l_i = _fwd_loop(
        acc0, acc1, m_i, l_i, q0, q1, k_base, v_base, k_off0, k_off1, v_off0, v_off1,
        m_base, m_off, b_base, b_off, entries, n_entries, 0, a,
        rows, offs_n, len_q, len_k, shift, qk_scale, d0_ok, d1_ok,
        stride_kn, stride_vn, stride_mn, stride_bn,
        BLOCK_N, MASK_BLOCK, HAS_MASK, False, False, IS_CAUSAL, HAS_MASK, HAS_BIAS, HAS_D1,
        MASK_D0, DOT_PREC,
    )  # fmt: skip
    acc0, acc1, m_i, l_i = _fwd_loop(
        acc0, acc1, m_i, l_i, q0, q1, k_base, v_base, k_off0, k_off1, v_off0, v_off1,
        m_base, m_off, b_base, b_off, entries, n_entries, lo2, b,
        rows, offs_n, len_q, len_k, shift, qk_scale, d0_ok, d1_ok,
        stride_kn, stride_vn, stride_mn, stride_bn,
        BLOCK_N, MASK_BLOCK, HAS_MASK, True, True, IS_CAUSAL, HAS_MASK, HAS_BIAS, HAS_D1,
        MASK_D0, DOT_PREC,
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


flash_fwd = autotuned(_flash_fwd_kernel, FWD_CONFIGS, AUTOTUNE_KEY)

__all__ = ["flash_fwd"]
