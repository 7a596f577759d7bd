"""Flash core, backward kernels: a dk/dv pass and a dq pass, deterministic (no atomics).

dk/dv: one program per (KV block, query head, batch) walks the query blocks that see it,
recomputing P and dS = P * (dP - delta); per query head (the host sums a group when G > 1),
plus dS for dbias (DBIAS_MODE). dq: one program per (query block, query head, batch) walks its
KV tiles. The inner loops' tiles (Q and dO in the dk/dv pass, K and V in the dq pass) load
through host TMA descriptors (USE_TMA, NVIDIA sm90+, `_flash_tma.tma_policy`) or pointers, with
the same values (`_flash_tiles._pair_tiles`); the tiles a program keeps for its whole loop,
mask, bias, lse, delta, tile codes and dbias always through pointers. The launcher is
`_flash.flash_backward`; shared helpers live in `_flash_tiles`.
"""

from __future__ import annotations

import triton
import triton.language as tl

from attnverify.kernels._flash_fwd import _set_kv_block_shapes
from attnverify.kernels._flash_tiles import (
    _VARYING,
    AUTOTUNE_KEY,
    BWD_CONFIGS,
    LOG2E,
    _aligned,
    _base,
    _configs,
    _lanes,
    _load_pair,
    _offsets,
    _pair_tiles,
    _program,
    _prune,
    _query_block_extras,
    _row_range,
    _scores,
    _tile_active,
    _wide,
)


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
    do_off1, Q_desc0, Q_desc1, DO_desc0, DO_desc1, z, h, row, l_base, d_base, mask_ptrs,
    bias_ptrs, flag_ptr, db_ptrs, rows, cols, len_q, len_k, causal_shift, qk_scale, d0_ok,
    d1_ok, stride_lm,
    MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_D1: tl.constexpr, MASK_D0: tl.constexpr,
    MASK_D1: tl.constexpr, DBIAS_MODE: tl.constexpr, DOT_PREC: tl.constexpr,
    TMA: tl.constexpr, IS_VARLEN: tl.constexpr, HEAD_DIM: tl.constexpr,
    HEAD_D0: tl.constexpr, HEAD_D1: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    """One query tile of the dk/dv pass (and the dS tile for dbias). TMA: Q and dO through
    the descriptors at query row `row` (varlen: packed; `_flash_tiles._pair_tiles`)."""
    if _tile_active(flag_ptr, HAS_MASK):
        rows_ok = rows < len_q
        # [BLOCK_M, D0], [BLOCK_M, D1]
        q0, q1, do0, do1 = _pair_tiles(
            q_ptrs, do_ptrs, q_off0, q_off1, do_off0, do_off1, Q_desc0, Q_desc1, DO_desc0,
            DO_desc1, z, h, row, rows_ok, d0_ok, d1_ok, MASKED, TMA, IS_VARLEN, HEAD_DIM,
            HEAD_D0, HEAD_D1, HAS_D1, MASK_D0, MASK_D1, BLOCK_M,
        )  # fmt: skip
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
    Q_desc0, Q_desc1, DO_desc0, DO_desc1,
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
    seqlen_q, seqlen_k, len_bucket, group, mask_head_div, bias_head_div, qk_scale, scale,
    HEAD_DIM: tl.constexpr, HEAD_D0: tl.constexpr, HEAD_D1: tl.constexpr,
    HAS_D1: tl.constexpr, BLOCK_OUTER: tl.constexpr, BLOCK_INNER: tl.constexpr,
    MASK_BLOCK: tl.constexpr, IS_VARLEN: tl.constexpr, IS_CAUSAL: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, DBIAS_MODE: tl.constexpr,
    DOT_PREC: tl.constexpr, ALIGN: tl.constexpr, USE_TMA: tl.constexpr,
    HEADS_FIRST: tl.constexpr,
):  # fmt: skip
    """dk, dv (per query head) and dS for dbias: one program per (KV block, query head, batch).

    DBIAS_MODE: 0 none; 1 full dS tiles; 2 summed over query rows (Lqm == 1); 3 summed over
    the keys of this block (Lkm == 1); 4 both.
    USE_TMA: the query tiles' Q and dO through the host's TMA descriptors Q_desc* / DO_desc*
    (over Q and dO as (Z, Hq, rows, D), varlen (1, Hq, T, D); boxes [1, 1, BLOCK_M, D0] and
    [1, 1, BLOCK_M, D1]), the same values as the pointer loads (`_flash_tiles._pair_tiles`;
    varlen masked tiles load through pointers).
    HEADS_FIRST: grid axes 0 and 1 swapped (`_flash_tiles._program`).
    """
    BLOCK_N: tl.constexpr = BLOCK_OUTER
    BLOCK_M: tl.constexpr = BLOCK_INNER
    # varlen TMA: masked tiles load through pointers, unpipelined (pipelined pointer loads keep
    # [BLOCK, D] 64-bit pointers of later stages live; `_flash_tiles._pair_tiles`)
    MASKED_STAGES: tl.constexpr = 1 if USE_TMA and IS_VARLEN else None
    stride_qz, stride_qh, stride_qm = _aligned(stride_qz, stride_qh, stride_qm, ALIGN)
    stride_kz, stride_kh, stride_kn = _aligned(stride_kz, stride_kh, stride_kn, ALIGN)
    stride_vz, stride_vh, stride_vn = _aligned(stride_vz, stride_vh, stride_vn, ALIGN)
    stride_doz, stride_doh, stride_dom = _aligned(stride_doz, stride_doh, stride_dom, ALIGN)
    stride_dkz, stride_dkh, stride_dkn = _aligned(stride_dkz, stride_dkh, stride_dkn, ALIGN)
    stride_dvz, stride_dvh, stride_dvn = _aligned(stride_dvz, stride_dvh, stride_dvn, ALIGN)
    h, z, start_q, len_q, start_k, len_k, blk = _program(
        Work, seqlen_q, seqlen_k, IS_VARLEN, HEADS_FIRST
    )
    n0 = blk * BLOCK_N
    hk = h // group
    cols = n0 + tl.arange(0, BLOCK_N)
    offs_n = tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d0, offs_d1, d0_ok, d1_ok = _lanes(HEAD_DIM, HEAD_D0, HEAD_D1)
    MASK_D0: tl.constexpr = HEAD_D0 > HEAD_DIM
    MASK_D1: tl.constexpr = False
    cols_ok = cols < len_k

    k_base = _base(K, z, hk, start_k + n0, stride_kz, stride_kh, stride_kn)
    v_base = _base(V, z, hk, start_k + n0, stride_vz, stride_vh, stride_vn)
    # [BLOCK_N, D0], [BLOCK_N, D1]
    k0, k1, v0, v1 = _load_pair(
        k_base, v_base, offs_n, stride_kn, stride_kd, stride_vn, stride_vd,
        offs_d0, offs_d1, cols_ok, d0_ok, d1_ok, MASK_D0, HAS_D1,
    )  # fmt: skip
    q_base = _base(Q, z, h, start_q, stride_qz, stride_qh, stride_qm)
    do_base = _base(DO, z, h, start_q, stride_doz, stride_doh, stride_dom)
    q_off0, q_off1 = _offsets(offs_m, stride_qm, stride_qd, offs_d0, offs_d1)
    do_off0, do_off1 = _offsets(offs_m, stride_dom, stride_dod, offs_d0, offs_d1)
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
    for m0 in tl.range(m_lo, a, BLOCK_M, num_stages=MASKED_STAGES):
        m64 = _wide(m0)
        dk0, dk1, dv0, dv1, dbq = _dkdv_tile(
            dk0, dk1, dv0, dv1, dbq, k0, k1, v0, v1, q_base + m64 * stride_qm,
            do_base + m64 * stride_dom, q_off0, q_off1, do_off0, do_off1,
            Q_desc0, Q_desc1, DO_desc0, DO_desc1, z, h, start_q + m0, l_base, d_base,
            m_base + m64 * stride_mm + m_off, b_base + m64 * stride_bm + b_off,
            f_base + (m0 // MASK_BLOCK) * stride_fm, db_base + m64 * stride_dbm + db_off,
            m0 + offs_m, cols, len_q, len_k, shift, qk_scale, d0_ok, d1_ok,
            stride_lm,
            True, IS_CAUSAL, HAS_MASK, HAS_BIAS, HAS_D1, MASK_D0, MASK_D1, DBIAS_MODE, DOT_PREC,
            USE_TMA, IS_VARLEN, HEAD_DIM, HEAD_D0, HEAD_D1, BLOCK_M,
        )  # fmt: skip
    for m0 in range(a, b, BLOCK_M):
        m64 = _wide(m0)
        dk0, dk1, dv0, dv1, dbq = _dkdv_tile(
            dk0, dk1, dv0, dv1, dbq, k0, k1, v0, v1, q_base + m64 * stride_qm,
            do_base + m64 * stride_dom, q_off0, q_off1, do_off0, do_off1,
            Q_desc0, Q_desc1, DO_desc0, DO_desc1, z, h, start_q + m0, l_base, d_base,
            m_base + m64 * stride_mm + m_off, b_base + m64 * stride_bm + b_off,
            f_base + (m0 // MASK_BLOCK) * stride_fm, db_base + m64 * stride_dbm + db_off,
            m0 + offs_m, cols, len_q, len_k, shift, qk_scale, d0_ok, d1_ok,
            stride_lm,
            False, IS_CAUSAL, HAS_MASK, HAS_BIAS, HAS_D1, MASK_D0, MASK_D1, DBIAS_MODE, DOT_PREC,
            USE_TMA, IS_VARLEN, HEAD_DIM, HEAD_D0, HEAD_D1, BLOCK_M,
        )  # fmt: skip
    for m0 in tl.range(b, m_end, BLOCK_M, num_stages=MASKED_STAGES):
        m64 = _wide(m0)
        dk0, dk1, dv0, dv1, dbq = _dkdv_tile(
            dk0, dk1, dv0, dv1, dbq, k0, k1, v0, v1, q_base + m64 * stride_qm,
            do_base + m64 * stride_dom, q_off0, q_off1, do_off0, do_off1,
            Q_desc0, Q_desc1, DO_desc0, DO_desc1, z, h, start_q + m0, l_base, d_base,
            m_base + m64 * stride_mm + m_off, b_base + m64 * stride_bm + b_off,
            f_base + (m0 // MASK_BLOCK) * stride_fm, db_base + m64 * stride_dbm + db_off,
            m0 + offs_m, cols, len_q, len_k, shift, qk_scale, d0_ok, d1_ok,
            stride_lm,
            True, IS_CAUSAL, HAS_MASK, HAS_BIAS, HAS_D1, MASK_D0, MASK_D1, DBIAS_MODE, DOT_PREC,
            USE_TMA, IS_VARLEN, HEAD_DIM, HEAD_D0, HEAD_D1, BLOCK_M,
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
    K_desc0, K_desc1, V_desc0, V_desc1, z, hk, row,
    mask_ptrs, bias_ptrs, flag_ptr, rows, cols, len_q, len_k, causal_shift, qk_scale,
    d0_ok, d1_ok,
    MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_D1: tl.constexpr, MASK_D0: tl.constexpr,
    MASK_D1: tl.constexpr, DOT_PREC: tl.constexpr,
    TMA: tl.constexpr, IS_VARLEN: tl.constexpr, HEAD_DIM: tl.constexpr,
    HEAD_D0: tl.constexpr, HEAD_D1: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """One KV tile of the dq pass: dq += dS @ K. TMA: K and V through the descriptors at
    key row `row` (varlen: packed; `_flash_tiles._pair_tiles`)."""
    if _tile_active(flag_ptr, HAS_MASK):
        # [BLOCK_N, D0], [BLOCK_N, D1]
        k0, k1, v0, v1 = _pair_tiles(
            k_ptrs, v_ptrs, k_off0, k_off1, v_off0, v_off1, K_desc0, K_desc1, V_desc0,
            V_desc1, z, hk, row, cols < len_k, d0_ok, d1_ok, MASKED, TMA, IS_VARLEN, HEAD_DIM,
            HEAD_D0, HEAD_D1, HAS_D1, MASK_D0, MASK_D1, BLOCK_N,
        )  # fmt: skip
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
    Q, K, V, DO, Lse, Delta, DQ, Mask, Bias, Flags, Work, K_desc0, K_desc1, V_desc0, V_desc1,
    stride_qz, stride_qh, stride_qm, stride_qd,
    stride_kz, stride_kh, stride_kn, stride_kd,
    stride_vz, stride_vh, stride_vn, stride_vd,
    stride_doz, stride_doh, stride_dom, stride_dod,
    stride_dqz, stride_dqh, stride_dqm, stride_dqd,
    stride_lz, stride_lh, stride_lm,
    stride_mz, stride_mh, stride_mm, stride_mn,
    stride_bz, stride_bh, stride_bm, stride_bn,
    stride_fz, stride_fh, stride_fm, stride_fn,
    seqlen_q, seqlen_k, len_bucket, group, mask_head_div, bias_head_div, qk_scale, scale,
    HEAD_DIM: tl.constexpr, HEAD_D0: tl.constexpr, HEAD_D1: tl.constexpr,
    HAS_D1: tl.constexpr, BLOCK_OUTER: tl.constexpr, BLOCK_INNER: tl.constexpr,
    MASK_BLOCK: tl.constexpr, IS_VARLEN: tl.constexpr, IS_CAUSAL: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_PREC: tl.constexpr,
    ALIGN: tl.constexpr, USE_TMA: tl.constexpr, HEADS_FIRST: tl.constexpr,
):  # fmt: skip
    """dq: one program per (query block, query head, batch), no atomics. USE_TMA: the key
    tiles' K and V through the host's TMA descriptors K_desc* / V_desc* (over K and V as
    (Z, Hk, rows, D), varlen (1, Hk, T, D); boxes [1, 1, BLOCK_N, D0] and [1, 1, BLOCK_N,
    D1]), the same values as the pointer loads (`_flash_tiles._pair_tiles`; varlen masked
    tiles load through pointers). HEADS_FIRST: grid axes 0 and 1 swapped
    (`_flash_tiles._program`)."""
    BLOCK_M: tl.constexpr = BLOCK_OUTER
    BLOCK_N: tl.constexpr = BLOCK_INNER
    # varlen TMA: masked tiles load through pointers, unpipelined (pipelined pointer loads keep
    # [BLOCK, D] 64-bit pointers of later stages live; `_flash_tiles._pair_tiles`)
    MASKED_STAGES: tl.constexpr = 1 if USE_TMA and IS_VARLEN else None
    stride_qz, stride_qh, stride_qm = _aligned(stride_qz, stride_qh, stride_qm, ALIGN)
    stride_kz, stride_kh, stride_kn = _aligned(stride_kz, stride_kh, stride_kn, ALIGN)
    stride_vz, stride_vh, stride_vn = _aligned(stride_vz, stride_vh, stride_vn, ALIGN)
    stride_doz, stride_doh, stride_dom = _aligned(stride_doz, stride_doh, stride_dom, ALIGN)
    stride_dqz, stride_dqh, stride_dqm = _aligned(stride_dqz, stride_dqh, stride_dqm, ALIGN)
    h, z, start_q, len_q, start_k, len_k, blk = _program(
        Work, seqlen_q, seqlen_k, IS_VARLEN, HEADS_FIRST
    )
    m0 = blk * BLOCK_M
    hk = h // group
    rows = m0 + tl.arange(0, BLOCK_M)
    local = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d0, offs_d1, d0_ok, d1_ok = _lanes(HEAD_DIM, HEAD_D0, HEAD_D1)
    MASK_D0: tl.constexpr = HEAD_D0 > HEAD_DIM
    MASK_D1: tl.constexpr = False
    rows_ok = rows < len_q

    q_base = _base(Q, z, h, start_q + m0, stride_qz, stride_qh, stride_qm)
    do_base = _base(DO, z, h, start_q + m0, stride_doz, stride_doh, stride_dom)
    # [BLOCK_M, D0], [BLOCK_M, D1]
    q0, q1, do0, do1 = _load_pair(
        q_base, do_base, local, stride_qm, stride_qd, stride_dom, stride_dod,
        offs_d0, offs_d1, rows_ok, d0_ok, d1_ok, MASK_D0, HAS_D1,
    )  # fmt: skip
    l_base = _base(Lse, z, h, start_q + m0, stride_lz, stride_lh, stride_lm)
    d_base = _base(Delta, z, h, start_q + m0, stride_lz, stride_lh, stride_lm)
    lse2, delta = _load_row_stats(l_base, d_base, local, len_q - m0, stride_lm)
    k_base = _base(K, z, hk, start_k, stride_kz, stride_kh, stride_kn)
    v_base = _base(V, z, hk, start_k, stride_vz, stride_vh, stride_vn)
    k_off0, k_off1 = _offsets(offs_n, stride_kn, stride_kd, offs_d0, offs_d1)
    v_off0, v_off1 = _offsets(offs_n, stride_vn, stride_vd, offs_d0, offs_d1)
    m_base, b_base, f_base, m_off, b_off = _query_block_extras(
        Mask, Bias, Flags, z, h, m0, len_q, offs_n, mask_head_div, bias_head_div,
        stride_mz, stride_mh, stride_mm, stride_mn, stride_bz, stride_bh, stride_bm, stride_bn,
        stride_fz, stride_fh, stride_fm, BLOCK_M, MASK_BLOCK,
    )  # fmt: skip

    dq0 = tl.zeros([BLOCK_M, HEAD_D0], tl.float32)
    dq1 = tl.zeros([BLOCK_M, HEAD_D1], tl.float32)
    shift = len_k - len_q
    n_full, n_end = _row_range(m0, len_q, len_k, BLOCK_M, BLOCK_N, IS_CAUSAL)
    for n0 in range(0, n_full, BLOCK_N):
        n64 = _wide(n0)
        dq0, dq1 = _dq_tile(
            dq0, dq1, q0, q1, do0, do1, lse2, delta, k_base + n64 * stride_kn,
            v_base + n64 * stride_vn, k_off0, k_off1, v_off0, v_off1,
            K_desc0, K_desc1, V_desc0, V_desc1, z, hk, start_k + n0,
            m_base + n64 * stride_mn + m_off, b_base + n64 * stride_bn + b_off,
            f_base + (n0 // MASK_BLOCK) * stride_fn, rows, n0 + offs_n, len_q, len_k, shift,
            qk_scale, d0_ok, d1_ok,
            False, IS_CAUSAL, HAS_MASK, HAS_BIAS, HAS_D1, MASK_D0, MASK_D1, DOT_PREC,
            USE_TMA, IS_VARLEN, HEAD_DIM, HEAD_D0, HEAD_D1, BLOCK_N,
        )  # fmt: skip
    for n0 in tl.range(n_full, n_end, BLOCK_N, num_stages=MASKED_STAGES):
        n64 = _wide(n0)
        dq0, dq1 = _dq_tile(
            dq0, dq1, q0, q1, do0, do1, lse2, delta, k_base + n64 * stride_kn,
            v_base + n64 * stride_vn, k_off0, k_off1, v_off0, v_off1,
            K_desc0, K_desc1, V_desc0, V_desc1, z, hk, start_k + n0,
            m_base + n64 * stride_mn + m_off, b_base + n64 * stride_bn + b_off,
            f_base + (n0 // MASK_BLOCK) * stride_fn, rows, n0 + offs_n, len_q, len_k, shift,
            qk_scale, d0_ok, d1_ok,
            True, IS_CAUSAL, HAS_MASK, HAS_BIAS, HAS_D1, MASK_D0, MASK_D1, DOT_PREC,
            USE_TMA, IS_VARLEN, HEAD_DIM, HEAD_D0, HEAD_D1, BLOCK_N,
        )  # fmt: skip

    dq_base = _base(DQ, z, h, start_q + m0, stride_dqz, stride_dqh, stride_dqm)
    tl.store(dq_base + local[:, None] * stride_dqm + offs_d0[None, :] * stride_dqd, dq0 * scale,
             mask=rows_ok[:, None] & d0_ok[None, :])  # fmt: skip
    if HAS_D1:
        tl.store(dq_base + local[:, None] * stride_dqm + offs_d1[None, :] * stride_dqd,
                 dq1 * scale, mask=rows_ok[:, None] & d1_ok[None, :])  # fmt: skip


QDO_DESC_NAMES = ("Q_desc0", "DO_desc0", "Q_desc1", "DO_desc1")


def _set_qdo_block_shapes(nargs: dict) -> None:
    """Config pre-hook of the dk/dv pass: the TMA descriptors' boxes for the config's
    BLOCK_INNER (its query block), [1, 1, BLOCK_INNER, D0] (Q_desc0, DO_desc0) and
    [1, 1, BLOCK_INNER, D1] (Q_desc1, DO_desc1); a descriptor argument that is None (pointer
    loads, no tile 1) is left as it is."""
    block_m = nargs["BLOCK_INNER"]
    for name in QDO_DESC_NAMES:
        if nargs[name] is not None:
            width = nargs["HEAD_D0"] if name.endswith("0") else nargs["HEAD_D1"]
            nargs[name].block_shape = [1, 1, block_m, width]


# Both passes also tune per inner-tile load path: TMA and pointer loads pipeline differently.
# The dq pass's descriptors are the forward's (K_desc*, V_desc*: `_set_kv_block_shapes`).
_dkdv = triton.autotune(
    _configs(BWD_CONFIGS, _set_qdo_block_shapes),
    [*AUTOTUNE_KEY, "DBIAS_MODE", "USE_TMA"],
    prune_configs_by={"early_config_prune": _prune},
)(_flash_bwd_dkdv_kernel)
_dq = triton.autotune(
    _configs(BWD_CONFIGS, _set_kv_block_shapes),
    [*AUTOTUNE_KEY, "USE_TMA"],
    prune_configs_by={"early_config_prune": _prune},
)(_flash_bwd_dq_kernel)
