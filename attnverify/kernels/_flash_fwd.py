"""Flash core, forward kernel: one program per (query block, query head, batch) writes out and lse.

Online softmax over the KV tiles of its query block: without a mask, full tiles unmasked
first, then the boundary and diagonal tiles masked (`_row_range`); with a mask, the block's
lists of tiles to visit (`_flash._tile_lists`: clean tiles unmasked, then the rest masked).
Out in the input dtype; lse (natural log, float32) -inf for rows with no visible key, whose
out is 0. K and V tiles load through host TMA descriptors (USE_TMA, NVIDIA sm90+,
`_flash_tma.tma_policy`) or pointers, with the same values (`_flash_tiles._pair_tiles`); Q, mask,
bias and the tile lists always through pointers. The launcher is `_flash.flash_forward`;
shared helpers live in `_flash_tiles`.
"""

from __future__ import annotations

import triton
import triton.language as tl

from attnverify.kernels._flash_tiles import (
    _VARYING,
    FWD_AUTOTUNE_KEY,
    FWD_CONFIGS,
    LN2,
    _aligned,
    _base,
    _configs,
    _lanes,
    _load_tile,
    _offsets,
    _pair_tiles,
    _program,
    _prune,
    _query_block_extras,
    _row_range,
    _scores,
    _wide,
)


@triton.jit
def _fwd_tile(
    acc0, acc1, m_i, l_i, q0, q1, k_ptrs, v_ptrs, k_off0, k_off1, v_off0, v_off1,
    K_desc0, K_desc1, V_desc0, V_desc1, z, hk, row,
    mask_ptrs, bias_ptrs, mask_partial, rows, cols, len_q, len_k, causal_shift, qk_scale,
    d0_ok, d1_ok,
    MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_D1: tl.constexpr, MASK_D0: tl.constexpr,
    MASK_D1: tl.constexpr, DOT_PREC: tl.constexpr, RAW_MAX: tl.constexpr,
    TMA: tl.constexpr, IS_VARLEN: tl.constexpr, HEAD_DIM: tl.constexpr,
    HEAD_D0: tl.constexpr, HEAD_D1: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """One KV tile of the online softmax: update acc, running max m_i and sum l_i. RAW_MAX: no
    bias and scale > 0 (the row max of q.k, scaled, is the row max of the scaled scores).
    TMA: K and V through the descriptors at key row `row` (varlen: packed; `_pair_tiles`).
    HAS_MASK: a tile of the query block's "rest" list (`_flash._tile_lists`); its mask
    elements are read only when `mask_partial` is 1 (the tile is not all True)."""
    # [BLOCK_N, D0], [BLOCK_N, D1]
    k0, k1, v0, v1 = _pair_tiles(
        k_ptrs, v_ptrs, k_off0, k_off1, v_off0, v_off1, K_desc0, K_desc1, V_desc0,
        V_desc1, z, hk, row, cols < len_k, d0_ok, d1_ok, MASKED, TMA, IS_VARLEN, HEAD_DIM,
        HEAD_D0, HEAD_D1, HAS_D1, MASK_D0, MASK_D1, BLOCK_N,
    )  # fmt: skip
    # [BLOCK_M, BLOCK_N]
    s = _scores(
        q0, q1, k0, k1, rows, cols, len_q, len_k, causal_shift, qk_scale, mask_ptrs,
        bias_ptrs, MASKED, IS_CAUSAL, False, HAS_BIAS, HAS_D1, DOT_PREC, not RAW_MAX,
    )  # fmt: skip
    if HAS_MASK:
        # mask_partial (int, 0 or 1) reaches the load mask through a [BLOCK_M, 1] tensor: the
        # interpreter rejects a scalar bool broadcast into a load mask
        partial = (rows[:, None] * 0 + mask_partial) != 0
        in_range = (rows < len_q)[:, None] & (cols < len_k)[None, :]
        keep = tl.load(mask_ptrs, mask=in_range & partial, other=1) != 0
        s = tl.where(keep, s, float("-inf"))
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


@triton.jit(do_not_specialize=_VARYING)
def _flash_fwd_kernel(
    Q, K, V, Out, Lse, Mask, Bias, Flags, Work, K_desc0, K_desc1, V_desc0, V_desc1,
    stride_qz, stride_qh, stride_qm, stride_qd,
    stride_kz, stride_kh, stride_kn, stride_kd,
    stride_vz, stride_vh, stride_vn, stride_vd,
    stride_oz, stride_oh, stride_om, stride_od,
    stride_lz, stride_lh, stride_lm,
    stride_mz, stride_mh, stride_mm, stride_mn,
    stride_bz, stride_bh, stride_bm, stride_bn,
    stride_fz, stride_fh, stride_fm, stride_fn,
    seqlen_q, seqlen_k, len_bucket, group, mask_head_div, bias_head_div, qk_scale,
    HEAD_DIM: tl.constexpr, HEAD_D0: tl.constexpr, HEAD_D1: tl.constexpr,
    HAS_D1: tl.constexpr, BLOCK_OUTER: tl.constexpr, BLOCK_INNER: tl.constexpr,
    MASK_BLOCK: tl.constexpr, IS_VARLEN: tl.constexpr, IS_CAUSAL: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_PREC: tl.constexpr,
    ALIGN: tl.constexpr, RAW_MAX: tl.constexpr, USE_TMA: tl.constexpr,
    HEADS_FIRST: tl.constexpr, CLEAN_STAGES: tl.constexpr, REST_STAGES: tl.constexpr,
):  # fmt: skip
    """Forward: one program per (query block, query head, batch); writes out and lse.
    RAW_MAX (host: no bias and scale > 0) takes row maxima before scaling, see `_fwd_tile`.
    Flags (HAS_MASK): per query block of MASK_BLOCK rows, the key-tile lists of
    `_flash._tile_lists`, not the tile codes the backward reads.
    USE_TMA: K and V tiles through the host's TMA descriptors K_desc* / V_desc* (over K and V
    as (Z, Hk, rows, D), varlen (1, Hk, T, D); boxes [1, 1, BLOCK_N, D0] and [1, 1, BLOCK_N,
    D1]), the same values as the pointer loads (`_flash_tiles._pair_tiles`; varlen masked
    tiles load through pointers). HEADS_FIRST: grid axes 0 and 1 swapped
    (`_flash_tiles._program`). CLEAN_STAGES, REST_STAGES (HAS_MASK): pipeline stages of the
    two list loops, None meaning the config's (`_flash._list_stages`)."""
    BLOCK_M: tl.constexpr = BLOCK_OUTER
    BLOCK_N: tl.constexpr = BLOCK_INNER
    # varlen TMA: masked tiles load through pointers, unpipelined (pipelined pointer loads keep
    # [BLOCK, D] 64-bit pointers of later stages live; `_flash_tiles._pair_tiles`)
    MASKED_STAGES: tl.constexpr = 1 if USE_TMA and IS_VARLEN else None
    stride_qz, stride_qh, stride_qm = _aligned(stride_qz, stride_qh, stride_qm, ALIGN)
    stride_kz, stride_kh, stride_kn = _aligned(stride_kz, stride_kh, stride_kn, ALIGN)
    stride_vz, stride_vh, stride_vn = _aligned(stride_vz, stride_vh, stride_vn, ALIGN)
    stride_oz, stride_oh, stride_om = _aligned(stride_oz, stride_oh, stride_om, ALIGN)
    h, z, start_q, len_q, start_k, len_k, blk = _program(
        Work, seqlen_q, seqlen_k, IS_VARLEN, HEADS_FIRST
    )
    m0 = blk * BLOCK_M
    hk = h // group
    rows = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d0, offs_d1, d0_ok, d1_ok = _lanes(HEAD_DIM, HEAD_D0, HEAD_D1)
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
    k_off0, k_off1 = _offsets(offs_n, stride_kn, stride_kd, offs_d0, offs_d1)
    v_off0, v_off1 = _offsets(offs_n, stride_vn, stride_vd, offs_d0, offs_d1)
    m_base, b_base, f_base, m_off, b_off = _query_block_extras(
        Mask, Bias, Flags, z, h, m0, len_q, offs_n, mask_head_div, bias_head_div,
        stride_mz, stride_mh, stride_mm, stride_mn, stride_bz, stride_bh, stride_bm, stride_bn,
        stride_fz, stride_fh, stride_fm, BLOCK_M, MASK_BLOCK,
    )  # fmt: skip

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc0 = tl.zeros([BLOCK_M, HEAD_D0], tl.float32)
    acc1 = tl.zeros([BLOCK_M, HEAD_D1], tl.float32)
    shift = len_k - len_q
    if HAS_MASK:
        # the row block's lists (`_flash._tile_lists`): clean tiles (all True, inside Lk,
        # causally visible to every row) without any mask, then the rest, masked (bounds,
        # causal, and the mask elements where the code's low bit says so)
        n_clean = tl.load(f_base)
        for t in tl.range(0, n_clean, num_stages=CLEAN_STAGES):
            tile = tl.load(f_base + (t + 2) * stride_fn)
            for j in tl.static_range(MASK_BLOCK // BLOCK_N):
                n0 = tile * MASK_BLOCK + j * BLOCK_N
                n64 = _wide(n0)
                acc0, acc1, m_i, l_i = _fwd_tile(
                    acc0, acc1, m_i, l_i, q0, q1, k_base + n64 * stride_kn,
                    v_base + n64 * stride_vn, k_off0, k_off1, v_off0, v_off1, K_desc0, K_desc1,
                    V_desc0, V_desc1, z, hk, start_k + n0, m_base + n64 * stride_mn + m_off,
                    b_base + n64 * stride_bn + b_off, 0, rows, n0 + offs_n, len_q, len_k,
                    shift, qk_scale, d0_ok, d1_ok, False, IS_CAUSAL, False, HAS_BIAS, HAS_D1,
                    MASK_D0, MASK_D1, DOT_PREC, RAW_MAX, USE_TMA, IS_VARLEN, HEAD_DIM, HEAD_D0,
                    HEAD_D1, BLOCK_N,
                )  # fmt: skip
        last = f_base + (tl.cdiv(len_k, MASK_BLOCK) + 1) * stride_fn
        # REST_STAGES (2, or 1 for wide tiles): the mask tiles join K and V in the pipeline's
        # shared memory
        for t in tl.range(0, tl.load(f_base + stride_fn), num_stages=REST_STAGES):
            code = tl.load(last - t * stride_fn)
            for j in tl.static_range(MASK_BLOCK // BLOCK_N):
                n0 = (code // 2) * MASK_BLOCK + j * BLOCK_N
                n64 = _wide(n0)
                acc0, acc1, m_i, l_i = _fwd_tile(
                    acc0, acc1, m_i, l_i, q0, q1, k_base + n64 * stride_kn,
                    v_base + n64 * stride_vn, k_off0, k_off1, v_off0, v_off1, K_desc0, K_desc1,
                    V_desc0, V_desc1, z, hk, start_k + n0, m_base + n64 * stride_mn + m_off,
                    b_base + n64 * stride_bn + b_off, code % 2, rows, n0 + offs_n, len_q,
                    len_k, shift, qk_scale, d0_ok, d1_ok, True, IS_CAUSAL, True, HAS_BIAS,
                    HAS_D1, MASK_D0, MASK_D1, DOT_PREC, RAW_MAX, USE_TMA, IS_VARLEN, HEAD_DIM,
                    HEAD_D0, HEAD_D1, BLOCK_N,
                )  # fmt: skip
    else:
        n_full, n_end = _row_range(m0, len_q, len_k, BLOCK_M, BLOCK_N, IS_CAUSAL)
        for n0 in range(0, n_full, BLOCK_N):
            n64 = _wide(n0)
            acc0, acc1, m_i, l_i = _fwd_tile(
                acc0, acc1, m_i, l_i, q0, q1, k_base + n64 * stride_kn,
                v_base + n64 * stride_vn, k_off0, k_off1, v_off0, v_off1, K_desc0, K_desc1,
                V_desc0, V_desc1, z, hk, start_k + n0, m_base + n64 * stride_mn + m_off,
                b_base + n64 * stride_bn + b_off, 0, rows, n0 + offs_n, len_q, len_k,
                shift, qk_scale, d0_ok, d1_ok, False, IS_CAUSAL, False, HAS_BIAS, HAS_D1,
                MASK_D0, MASK_D1, DOT_PREC, RAW_MAX, USE_TMA, IS_VARLEN, HEAD_DIM, HEAD_D0,
                HEAD_D1, BLOCK_N,
            )  # fmt: skip
        for n0 in tl.range(n_full, n_end, BLOCK_N, num_stages=MASKED_STAGES):
            n64 = _wide(n0)
            acc0, acc1, m_i, l_i = _fwd_tile(
                acc0, acc1, m_i, l_i, q0, q1, k_base + n64 * stride_kn,
                v_base + n64 * stride_vn, k_off0, k_off1, v_off0, v_off1, K_desc0, K_desc1,
                V_desc0, V_desc1, z, hk, start_k + n0, m_base + n64 * stride_mn + m_off,
                b_base + n64 * stride_bn + b_off, 0, rows, n0 + offs_n, len_q, len_k,
                shift, qk_scale, d0_ok, d1_ok, True, IS_CAUSAL, False, HAS_BIAS, HAS_D1,
                MASK_D0, MASK_D1, DOT_PREC, RAW_MAX, USE_TMA, IS_VARLEN, HEAD_DIM, HEAD_D0,
                HEAD_D1, BLOCK_N,
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


KV_DESC_NAMES = ("K_desc0", "V_desc0", "K_desc1", "V_desc1")


def _set_kv_block_shapes(nargs: dict) -> None:
    """Config pre-hook: the TMA descriptors' boxes for the config's BLOCK_INNER,
    [1, 1, BLOCK_INNER, D0] (K_desc0, V_desc0) and [1, 1, BLOCK_INNER, D1] (K_desc1, V_desc1);
    a descriptor argument that is None (pointer loads, no tile 1) is left as it is."""
    block_n = nargs["BLOCK_INNER"]
    for name in KV_DESC_NAMES:
        if nargs[name] is not None:
            width = nargs["HEAD_D0"] if name.endswith("0") else nargs["HEAD_D1"]
            nargs[name].block_shape = [1, 1, block_n, width]


_fwd = triton.autotune(
    _configs(FWD_CONFIGS, _set_kv_block_shapes),
    FWD_AUTOTUNE_KEY,
    prune_configs_by={"early_config_prune": _prune},
)(_flash_fwd_kernel)
