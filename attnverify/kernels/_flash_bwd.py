"""Flash core, backward kernels: a dk/dv pass (one program per KV block) and a dq pass (one
program per query block), deterministic (no atomics).

dk/dv are written per query head (fp32, summed over the group on the host when G > 1); dS for
dbias per query head, reduced in-kernel over broadcast query rows / key columns (DBIAS_MODE).
Tiles are walked as in the forward: fully visible ones without bounds or mask loads, masked
ones after, and with a mask only the live tiles of the block's lists. Helpers and conventions:
`_flash_tiles`.
"""

from __future__ import annotations

import triton
import triton.language as tl

from attnverify.kernels._flash_tiles import (
    AUTOTUNE_KEY,
    BWD_CONFIGS,
    LOG2E,
    VARYING,
    _aligned,
    _base,
    _col_loops,
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
def _dkdv_loop(
    dk0, dk1, dv0, dv1, dbq, k0, k1, v0, v1, q_base, do_base, q_off0, q_off1, do_off0,
    do_off1, l_base, d_base, m_base, m_off, b_base, b_off, db_base, db_off, entries,
    n_entries, lo, hi, offs_m, cols, len_q, len_k, causal_shift, qk_scale, d0_ok, d1_ok,
    stride_qm, stride_dom, stride_lm, stride_mm, stride_bm, stride_dbm,
    BLOCK_M: tl.constexpr, MASK_BLOCK: tl.constexpr, LISTED: tl.constexpr,
    FROM_END: tl.constexpr, MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_D1: tl.constexpr,
    MASK_D0: tl.constexpr, DBIAS_MODE: tl.constexpr, DOT_PREC: tl.constexpr,
):  # fmt: skip
    """Query tiles lo..hi-1 of the dk/dv pass (and the dS tiles for dbias)."""
    for i in range(lo, hi):
        m0 = _tile_start(i, entries, n_entries, LISTED, FROM_END, BLOCK_M, MASK_BLOCK)
        m64 = _wide(m0)
        rows = m0 + offs_m
        rows_ok = rows < len_q
        # [BLOCK_M, D0], [BLOCK_M, D1]
        q0, q1 = _load_split(q_base + m64 * stride_qm + q_off0, q_base + m64 * stride_qm + q_off1,
                             rows_ok, d0_ok, d1_ok, MASKED, MASK_D0, HAS_D1, False)  # fmt: skip
        do0, do1 = _load_split(do_base + m64 * stride_dom + do_off0,
                               do_base + m64 * stride_dom + do_off1,
                               rows_ok, d0_ok, d1_ok, MASKED, MASK_D0, HAS_D1, False)  # fmt: skip
        lse2, delta = _load_row_stats(l_base, d_base, rows, len_q, stride_lm)
        # [BLOCK_M, BLOCK_N]
        p, ds = _bwd_probs(
            q0, q1, do0, do1, k0, k1, v0, v1, lse2, delta, rows, cols, len_q, len_k,
            causal_shift, qk_scale, m_base + m64 * stride_mm + m_off,
            b_base + m64 * stride_bm + b_off,
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
        db_ptrs = db_base + m64 * stride_dbm + db_off
        if DBIAS_MODE == 1:
            tl.store(db_ptrs, ds, mask=in_range)
        elif DBIAS_MODE == 2 or DBIAS_MODE == 4:
            dbq += tl.sum(tl.where(in_range, ds, 0.0), 0)
        elif DBIAS_MODE == 3:
            tl.store(db_ptrs, tl.sum(tl.where(in_range, ds, 0.0), 1), mask=rows_ok)
    return dk0, dk1, dv0, dv1, dbq


@triton.jit(do_not_specialize=VARYING)
def _flash_bwd_dkdv_kernel(
    Q, K, V, DO, Lse, Delta, DK, DV, DB, Mask, Bias, Tiles, Work,
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
    stride_tz, stride_th, stride_to,
    seqlen_q, seqlen_k, num_seqs, search_top, group, mask_head_div, bias_head_div, qk_scale,
    scale,
    HEAD_DIM: tl.constexpr, HEAD_D0: tl.constexpr, HEAD_D1: tl.constexpr,
    HAS_D1: tl.constexpr, BLOCK_OUTER: tl.constexpr, BLOCK_INNER: tl.constexpr,
    MASK_BLOCK: tl.constexpr, IS_VARLEN: tl.constexpr, IS_CAUSAL: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, DBIAS_MODE: tl.constexpr,
    DOT_PREC: tl.constexpr, ALIGN: tl.constexpr,
):  # fmt: skip
    """dk, dv (per query head) and dS for dbias: one program per (KV block, query head, batch).

    DBIAS_MODE: 0 none; 1 full dS tiles; 2 summed over query rows (Lqm == 1); 3 summed over
    the keys of this block (Lkm == 1); 4 both. With a mask, `Tiles` holds per-KV-block lists.
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
    start_q, len_q, start_k, len_k, blk = _work_item(
        Work, pid, seqlen_q, seqlen_k, num_seqs, search_top, IS_VARLEN
    )
    n0 = blk * BLOCK_N
    if n0 >= len_k:  # a surplus varlen item (the grid is an upper bound): nothing to do
        return
    hk = h // group
    cols = n0 + tl.arange(0, BLOCK_N)
    offs_n = tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d0 = tl.arange(0, HEAD_D0)
    offs_d1 = (HEAD_DIM - HEAD_D1) + tl.arange(0, HEAD_D1)  # ends at D: loads need no mask
    d0_ok = offs_d0 < HEAD_DIM
    d1_ok = offs_d1 >= HEAD_D0  # lanes tile 1 owns; the overlap with tile 0 is zeroed/unstored
    MASK_D0: tl.constexpr = HEAD_D0 > HEAD_DIM
    cols_ok = cols < len_k

    k_base = _base(K, z, hk, start_k + n0, stride_kz, stride_kh, stride_kn)
    v_base = _base(V, z, hk, start_k + n0, stride_vz, stride_vh, stride_vn)
    # [BLOCK_N, D0], [BLOCK_N, D1]
    k0, k1 = _load_split(k_base + offs_n[:, None] * stride_kn + offs_d0[None, :] * stride_kd,
                         k_base + offs_n[:, None] * stride_kn + offs_d1[None, :] * stride_kd,
                         cols_ok, d0_ok, d1_ok, True, MASK_D0, HAS_D1, True)  # fmt: skip
    v0, v1 = _load_split(v_base + offs_n[:, None] * stride_vn + offs_d0[None, :] * stride_vd,
                         v_base + offs_n[:, None] * stride_vn + offs_d1[None, :] * stride_vd,
                         cols_ok, d0_ok, d1_ok, True, MASK_D0, HAS_D1, True)  # fmt: skip
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
    db_base = DB + z.to(tl.int64) * stride_dbz + h.to(tl.int64) * stride_dbh
    m_off = offs_m[:, None] * stride_mm + offs_n[None, :] * stride_mn
    b_off = offs_m[:, None] * stride_bm + offs_n[None, :] * stride_bn
    if DBIAS_MODE == 1:
        db_off = offs_m[:, None] * stride_dbm + cols[None, :] * stride_dbn
    else:
        db_off = offs_m * stride_dbm + blk * stride_dbn
    entries, n_full, n_part = _tile_lists(
        Tiles, z, h // mask_head_div, n0 // MASK_BLOCK, stride_tz, stride_th, stride_to, HAS_MASK
    )
    n_entries = (len_q + MASK_BLOCK - 1) // MASK_BLOCK
    lo, a, b, b2, c = _col_loops(n0, len_q, len_k, n_full, n_part, BLOCK_M, BLOCK_N, MASK_BLOCK,
                                 IS_CAUSAL, HAS_MASK)  # fmt: skip

    dk0 = tl.zeros([BLOCK_N, HEAD_D0], tl.float32)
    dv0 = tl.zeros([BLOCK_N, HEAD_D0], tl.float32)
    dk1 = tl.zeros([BLOCK_N, HEAD_D1], tl.float32)
    dv1 = tl.zeros([BLOCK_N, HEAD_D1], tl.float32)
    dbq = tl.zeros([BLOCK_N], tl.float32)
    shift = len_k - len_q
    # masked (causal diagonal) | fully visible (listed full) | masked (boundary, listed partial)
    dk0, dk1, dv0, dv1, dbq = _dkdv_loop(
        dk0, dk1, dv0, dv1, dbq, k0, k1, v0, v1, q_base, do_base, q_off0, q_off1, do_off0,
        do_off1, l_base, d_base, m_base, m_off, b_base, b_off, db_base, db_off, entries,
        n_entries, lo, a, offs_m, cols, len_q, len_k, shift, qk_scale, d0_ok, d1_ok,
        stride_qm, stride_dom, stride_lm, stride_mm, stride_bm, stride_dbm,
        BLOCK_M, MASK_BLOCK, False, False, True, IS_CAUSAL, HAS_MASK, HAS_BIAS, HAS_D1,
        MASK_D0, DBIAS_MODE, DOT_PREC,
    )  # fmt: skip
    dk0, dk1, dv0, dv1, dbq = _dkdv_loop(
        dk0, dk1, dv0, dv1, dbq, k0, k1, v0, v1, q_base, do_base, q_off0, q_off1, do_off0,
        do_off1, l_base, d_base, m_base, m_off, b_base, b_off, db_base, db_off, entries,
        n_entries, a, b, offs_m, cols, len_q, len_k, shift, qk_scale, d0_ok, d1_ok,
        stride_qm, stride_dom, stride_lm, stride_mm, stride_bm, stride_dbm,
        BLOCK_M, MASK_BLOCK, HAS_MASK, False, False, IS_CAUSAL, HAS_MASK, HAS_BIAS, HAS_D1,
        MASK_D0, DBIAS_MODE, DOT_PREC,
    )  # fmt: skip
    dk0, dk1, dv0, dv1, dbq = _dkdv_loop(
        dk0, dk1, dv0, dv1, dbq, k0, k1, v0, v1, q_base, do_base, q_off0, q_off1, do_off0,
        do_off1, l_base, d_base, m_base, m_off, b_base, b_off, db_base, db_off, entries,
        n_entries, b2, c, offs_m, cols, len_q, len_k, shift, qk_scale, d0_ok, d1_ok,
        stride_qm, stride_dom, stride_lm, stride_mm, stride_bm, stride_dbm,
        BLOCK_M, MASK_BLOCK, HAS_MASK, True, True, IS_CAUSAL, HAS_MASK, HAS_BIAS, HAS_D1,
        MASK_D0, DBIAS_MODE, DOT_PREC,
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
def _dq_loop(
    dq0, dq1, q0, q1, do0, do1, lse2, delta, k_base, v_base, k_off0, k_off1, v_off0, v_off1,
    m_base, m_off, b_base, b_off, entries, n_entries, lo, hi,
    rows, offs_n, len_q, len_k, causal_shift, qk_scale, d0_ok, d1_ok,
    stride_kn, stride_vn, stride_mn, stride_bn,
    BLOCK_N: tl.constexpr, MASK_BLOCK: tl.constexpr, LISTED: tl.constexpr,
    FROM_END: tl.constexpr, MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_D1: tl.constexpr,
    MASK_D0: tl.constexpr, DOT_PREC: tl.constexpr,
):  # fmt: skip
    """KV tiles lo..hi-1 of the dq pass: dq += dS @ K."""
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
        _, ds = _bwd_probs(
            q0, q1, do0, do1, k0, k1, v0, v1, lse2, delta, rows, cols, len_q, len_k,
            causal_shift, qk_scale, m_base + n64 * stride_mn + m_off,
            b_base + n64 * stride_bn + b_off,
            MASKED, IS_CAUSAL, HAS_MASK, HAS_BIAS, HAS_D1, DOT_PREC,
        )  # fmt: skip
        # [BLOCK_M, D0], [BLOCK_M, D1]
        dq0 += tl.dot(ds.to(k0.dtype), k0, input_precision=DOT_PREC)
        if HAS_D1:
            dq1 += tl.dot(ds.to(k1.dtype), k1, input_precision=DOT_PREC)
    return dq0, dq1


@triton.jit(do_not_specialize=VARYING)
def _flash_bwd_dq_kernel(
    Q, K, V, DO, Lse, Delta, DQ, Mask, Bias, Tiles, Work,
    stride_qz, stride_qh, stride_qm, stride_qd,
    stride_kz, stride_kh, stride_kn, stride_kd,
    stride_vz, stride_vh, stride_vn, stride_vd,
    stride_doz, stride_doh, stride_dom, stride_dod,
    stride_dqz, stride_dqh, stride_dqm, stride_dqd,
    stride_lz, stride_lh, stride_lm,
    stride_mz, stride_mh, stride_mm, stride_mn,
    stride_bz, stride_bh, stride_bm, stride_bn,
    stride_tz, stride_th, stride_to,
    seqlen_q, seqlen_k, num_seqs, search_top, group, mask_head_div, bias_head_div, qk_scale,
    scale,
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
    start_q, len_q, start_k, len_k, blk = _work_item(
        Work, pid, seqlen_q, seqlen_k, num_seqs, search_top, IS_VARLEN
    )
    m0 = blk * BLOCK_M
    if m0 >= len_q:  # a surplus varlen item (the grid is an upper bound): nothing to do
        return
    hk = h // group
    rows = m0 + tl.arange(0, BLOCK_M)
    local = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d0 = tl.arange(0, HEAD_D0)
    offs_d1 = (HEAD_DIM - HEAD_D1) + tl.arange(0, HEAD_D1)  # ends at D: loads need no mask
    d0_ok = offs_d0 < HEAD_DIM
    d1_ok = offs_d1 >= HEAD_D0  # lanes tile 1 owns; the overlap with tile 0 is zeroed/unstored
    MASK_D0: tl.constexpr = HEAD_D0 > HEAD_DIM
    rows_ok = rows < len_q

    q_base = _base(Q, z, h, start_q + m0, stride_qz, stride_qh, stride_qm)
    do_base = _base(DO, z, h, start_q + m0, stride_doz, stride_doh, stride_dom)
    # [BLOCK_M, D0], [BLOCK_M, D1]
    q0, q1 = _load_split(q_base + local[:, None] * stride_qm + offs_d0[None, :] * stride_qd,
                         q_base + local[:, None] * stride_qm + offs_d1[None, :] * stride_qd,
                         rows_ok, d0_ok, d1_ok, True, MASK_D0, HAS_D1, True)  # fmt: skip
    do0, do1 = _load_split(do_base + local[:, None] * stride_dom + offs_d0[None, :] * stride_dod,
                           do_base + local[:, None] * stride_dom + offs_d1[None, :] * stride_dod,
                           rows_ok, d0_ok, d1_ok, True, MASK_D0, HAS_D1, True)  # fmt: skip
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
    clamped = tl.minimum(local, len_q - 1 - m0)[:, None]  # see _flash_fwd_kernel
    m_off = clamped * stride_mm + offs_n[None, :] * stride_mn
    b_off = clamped * stride_bm + offs_n[None, :] * stride_bn
    entries, n_full, n_part = _tile_lists(
        Tiles, z, h // mask_head_div, m0 // MASK_BLOCK, stride_tz, stride_th, stride_to, HAS_MASK
    )
    n_entries = (len_k + MASK_BLOCK - 1) // MASK_BLOCK
    a, lo2, b = _row_loops(m0, len_q, len_k, entries, n_full, n_part, BLOCK_M, BLOCK_N,
                           MASK_BLOCK, IS_CAUSAL, HAS_MASK)  # fmt: skip

    dq0 = tl.zeros([BLOCK_M, HEAD_D0], tl.float32)
    dq1 = tl.zeros([BLOCK_M, HEAD_D1], tl.float32)
    shift = len_k - len_q
    dq0, dq1 = _dq_loop(
        dq0, dq1, q0, q1, do0, do1, lse2, delta, k_base, v_base, k_off0, k_off1, v_off0, v_off1,
        m_base, m_off, b_base, b_off, entries, n_entries, 0, a,
        rows, offs_n, len_q, len_k, shift, qk_scale, d0_ok, d1_ok,
        stride_kn, stride_vn, stride_mn, stride_bn,
        BLOCK_N, MASK_BLOCK, HAS_MASK, False, False, IS_CAUSAL, HAS_MASK, HAS_BIAS, HAS_D1,
        MASK_D0, DOT_PREC,
    )  # fmt: skip
    dq0, dq1 = _dq_loop(
        dq0, dq1, q0, q1, do0, do1, lse2, delta, k_base, v_base, k_off0, k_off1, v_off0, v_off1,
        m_base, m_off, b_base, b_off, entries, n_entries, lo2, b,
        rows, offs_n, len_q, len_k, shift, qk_scale, d0_ok, d1_ok,
        stride_kn, stride_vn, stride_mn, stride_bn,
        BLOCK_N, MASK_BLOCK, HAS_MASK, True, True, IS_CAUSAL, HAS_MASK, HAS_BIAS, HAS_D1,
        MASK_D0, DOT_PREC,
    )  # fmt: skip

    dq_base = _base(DQ, z, h, start_q + m0, stride_dqz, stride_dqh, stride_dqm)
    tl.store(dq_base + local[:, None] * stride_dqm + offs_d0[None, :] * stride_dqd, dq0 * scale,
             mask=rows_ok[:, None] & d0_ok[None, :])  # fmt: skip
    if HAS_D1:
        tl.store(dq_base + local[:, None] * stride_dqm + offs_d1[None, :] * stride_dqd,
                 dq1 * scale, mask=rows_ok[:, None] & d1_ok[None, :])  # fmt: skip


flash_dkdv = autotuned(_flash_bwd_dkdv_kernel, BWD_CONFIGS, [*AUTOTUNE_KEY, "DBIAS_MODE"])
flash_dq = autotuned(_flash_bwd_dq_kernel, BWD_CONFIGS, AUTOTUNE_KEY)

__all__ = ["flash_dkdv", "flash_dq"]
