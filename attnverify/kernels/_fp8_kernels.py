"""FP8 attention forward, the @triton.jit code: tile loads, the online-softmax step, the forward
kernel (`_fp8_fwd_kernel`) and the V transpose kernel (`_transpose_v_kernel`).

Launched by `attnverify.kernels.fp8` (configs, autotuning, TMA descriptors, the V layout policy,
the public API); its module docstring states layouts, dtypes and numerics. Here, in pipeline
order: `_load_tile` (masked pointer loads), `_negate_fp8_if` (a negative softmax scale moves into
q exactly), `_round_to_fp8_grid` (P onto V's fp8 grid under the interpreter, whose cast
mis-rounds), `_k_tiles` / `_v_tiles` (K^T and V chunks by TMA or pointers, V row-major or
K-major), `_scores` (fp8 Q K^T), `_softmax_step`, `_attend_tiles` (the key loop), `_store_out`,
then `_fp8_fwd_kernel` and `_transpose_v_kernel`.

Head dims are covered by two power-of-two column chunks (BLOCK_D0, BLOCK_D1; `HAS_D1` false when
one suffices): every Q, K, V tile and accumulator comes as a pair, chunk 1 aliasing chunk 0 when
unused. Softmax in log2 units (exp2); lse is stored in natural log.

Oracle: `attnverify.reference.fp8.fp8_attention`.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


# fmt: off
@triton.jit
def _load_tile(base, offs_r, offs_c, stride_r, stride_c, n_rows, n_cols,
               MASK_R: tl.constexpr, MASK_C: tl.constexpr):
    """Load the [R, C] tile base + r * stride_r + c * stride_c; masked-off lanes read 0."""
    ptrs = base + offs_r[:, None] * stride_r + offs_c[None, :] * stride_c
    if MASK_R and MASK_C:
        tile = tl.load(ptrs, mask=(offs_r[:, None] < n_rows) & (offs_c[None, :] < n_cols),
                       other=0.0)
    elif MASK_R:
        tile = tl.load(ptrs, mask=offs_r[:, None] < n_rows, other=0.0)
    elif MASK_C:
        tile = tl.load(ptrs, mask=offs_c[None, :] < n_cols, other=0.0)
    else:
        tile = tl.load(ptrs)
    return tile


@triton.jit
def _negate_fp8_if(x, flip):
    """-x where flip (a scalar), else x, for an fp8 tile: flips the sign bit of non-zeros
    (fnuz formats have no -0: their 0x80 is NaN)."""
    bits = x.to(tl.uint8, bitcast=True)
    sign = flip.to(tl.uint8) * 0x80
    bits = tl.where((bits & 0x7F) != 0, bits ^ sign, bits)
    return bits.to(x.dtype, bitcast=True)


@triton.jit
def _round_to_fp8_grid(p, P_MANT: tl.constexpr, P_MIN_EXP: tl.constexpr):
    """Round p >= 0 (fp32) to nearest-even on the fp8 grid; the result stays fp32.

    Exact arithmetic: adding 2^23 quanta rounds at the quantum (RTNE), subtracting is exact.
    Used under the interpreter only, whose fp32 -> fp8 cast mis-rounds (triton #8322): there
    the cast of an already representable value is exact, so the kernel then matches a GPU.
    """
    exp_bits = p.to(tl.int32, bitcast=True) & 0x7F800000
    quantum = exp_bits.to(tl.float32, bitcast=True) * (2.0**-P_MANT)
    quantum = tl.maximum(quantum, 2.0 ** (P_MIN_EXP - P_MANT))
    magic = quantum * 8388608.0
    return (p + magic) - magic


@triton.jit
def _k_tiles(
    k_ptr, k_desc0, k_desc1, off_b, off_hk, start_n, n_left, stride_kn, stride_kd,
    MASKED: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D0: tl.constexpr, BLOCK_D1: tl.constexpr, HAS_D1: tl.constexpr, USE_TMA: tl.constexpr,
):
    """K^T chunks [BLOCK_D0, BLOCK_N], [BLOCK_D1, BLOCK_N] of key tile start_n (k_ptr points
    at key start_n). Pointer loads mask keys >= Lk (MASKED) and padded head-dim lanes; TMA loads
    zero-fill whatever lies outside the (B, H, L, D) box. An unused chunk 1 is chunk 0."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d0 = tl.arange(0, BLOCK_D0)
    offs_d1 = tl.arange(0, BLOCK_D1)
    MASK_D0: tl.constexpr = BLOCK_D0 > HEAD_DIM
    MASK_D1: tl.constexpr = BLOCK_D0 + BLOCK_D1 > HEAD_DIM
    if USE_TMA:
        kt0 = k_desc0.load([off_b, off_hk, start_n, 0]).reshape([BLOCK_N, BLOCK_D0]).T
    else:
        kt0 = _load_tile(k_ptr, offs_d0, offs_n, stride_kd, stride_kn, HEAD_DIM, n_left,
                         MASK_D0, MASKED)
    kt1 = kt0
    if HAS_D1:
        if USE_TMA:
            kt1 = k_desc1.load([off_b, off_hk, start_n, BLOCK_D0]).reshape([BLOCK_N, BLOCK_D1]).T
        else:
            kt1 = _load_tile(k_ptr + BLOCK_D0 * stride_kd, offs_d1, offs_n, stride_kd, stride_kn,
                             HEAD_DIM - BLOCK_D0, n_left, MASK_D1, MASKED)
    return kt0, kt1


@triton.jit
def _v_tiles(
    v_ptr, v_desc0, v_desc1, off_b, off_hk, start_n, n_left, stride_vn, stride_vd,
    MASKED: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D0: tl.constexpr, BLOCK_D1: tl.constexpr, HAS_D1: tl.constexpr, USE_TMA: tl.constexpr,
    V_SEQ_CONTIG: tl.constexpr,
):
    """V chunks [BLOCK_N, BLOCK_D0], [BLOCK_N, BLOCK_D1] of key tile start_n (v_ptr points at
    key start_n); masking and zero fill as `_k_tiles`. An unused chunk 1 is chunk 0."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d0 = tl.arange(0, BLOCK_D0)
    offs_d1 = tl.arange(0, BLOCK_D1)
    MASK_D0: tl.constexpr = BLOCK_D0 > HEAD_DIM
    MASK_D1: tl.constexpr = BLOCK_D0 + BLOCK_D1 > HEAD_DIM
    if USE_TMA:
        if V_SEQ_CONTIG:
            v0 = v_desc0.load([off_b, off_hk, 0, start_n]).reshape([BLOCK_D0, BLOCK_N]).T
        else:
            v0 = v_desc0.load([off_b, off_hk, start_n, 0]).reshape([BLOCK_N, BLOCK_D0])
    else:
        v0 = _load_tile(v_ptr, offs_n, offs_d0, stride_vn, stride_vd, n_left, HEAD_DIM,
                        MASKED, MASK_D0)
    v1 = v0
    if HAS_D1:
        if USE_TMA:
            if V_SEQ_CONTIG:
                v1 = v_desc1.load([off_b, off_hk, BLOCK_D0, start_n])
                v1 = v1.reshape([BLOCK_D1, BLOCK_N]).T
            else:
                v1 = v_desc1.load([off_b, off_hk, start_n, BLOCK_D0])
                v1 = v1.reshape([BLOCK_N, BLOCK_D1])
        else:
            v1 = _load_tile(v_ptr + BLOCK_D0 * stride_vd, offs_n, offs_d1, stride_vn, stride_vd,
                            n_left, HEAD_DIM - BLOCK_D0, MASKED, MASK_D1)
    return v0, v1


@triton.jit
def _scores(q0, q1, kt0, kt1, HAS_D1: tl.constexpr, QK_ACC_CHUNK: tl.constexpr):
    """Raw fp8 scores Q K^T: [BLOCK_M, BLOCK_D] x [BLOCK_D, BLOCK_N] -> [BLOCK_M, BLOCK_N] fp32."""
    if QK_ACC_CHUNK > 0:
        qk = tl.dot(q0, kt0, max_num_imprecise_acc=QK_ACC_CHUNK)
        if HAS_D1:
            qk = tl.dot(q1, kt1, qk, max_num_imprecise_acc=QK_ACC_CHUNK)
    else:
        qk = tl.dot(q0, kt0)
        if HAS_D1:
            qk = tl.dot(q1, kt1, qk)
    return qk


@triton.jit
def _softmax_step(
    qk, m_i, l_i, qk_scale, offs_m, start_n, n_left, causal_offset, p_dtype: tl.constexpr,
    MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr,
    EXACT_P_ROUNDING: tl.constexpr, P_MANT: tl.constexpr, P_MIN_EXP: tl.constexpr,
):
    """Online-softmax update for the raw scores qk of key tile start_n.

    Returns P rounded to p_dtype (V's fp8 dtype) [BLOCK_M, BLOCK_N], the rescale factor alpha
    of the running accumulator [BLOCK_M], and the new running max and row sum [BLOCK_M].
    MASKED tiles hide keys >= Lk and (causal) keys j > i + causal_offset; unmasked tiles are
    visible to every row of the block and need no key mask.
    """
    if MASKED:
        offs_n = tl.arange(0, BLOCK_N)
        # [BLOCK_M, BLOCK_N] scores in log2 units, hidden keys -inf
        visible = offs_n[None, :] < n_left
        if IS_CAUSAL:
            visible = visible & (start_n + offs_n[None, :] <= offs_m[:, None] + causal_offset)
        s = tl.where(visible, qk * qk_scale, float("-inf"))
        # [BLOCK_M]; rows with nothing visible yet keep m = -inf: subtract 0 (no NaN)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_new = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_new[:, None])
    else:
        # qk_scale >= 0: max(qk) * scale is the max score; one FMA per element
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        p = tl.math.exp2(qk * qk_scale - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    if EXACT_P_ROUNDING:
        p = _round_to_fp8_grid(p, P_MANT, P_MIN_EXP)
    return p.to(p_dtype), alpha, m_new, l_i


@triton.jit
def _attend_tiles(
    acc0, acc1, l_i, m_i, q0, q1,
    k_ptr, v_ptr, k_desc0, k_desc1, v_desc0, v_desc1, off_b, off_hk,
    start, end, offs_m, Lk, causal_offset, qk_scale,
    stride_kn, stride_kd, stride_vn, stride_vd,
    MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D0: tl.constexpr, BLOCK_D1: tl.constexpr, HAS_D1: tl.constexpr,
    USE_TMA: tl.constexpr, V_SEQ_CONTIG: tl.constexpr,
    EXACT_P_ROUNDING: tl.constexpr, P_MANT: tl.constexpr, P_MIN_EXP: tl.constexpr,
    QK_ACC_CHUNK: tl.constexpr,
):
    """Online softmax over key tiles [start, end); k_ptr / v_ptr point at key `start`."""
    p_dtype: tl.constexpr = v_ptr.dtype.element_ty
    for start_n in tl.range(start, end, BLOCK_N):
        n_left = Lk - start_n
        kt0, kt1 = _k_tiles(k_ptr, k_desc0, k_desc1, off_b, off_hk, start_n, n_left,
                            stride_kn, stride_kd, MASKED, HEAD_DIM, BLOCK_N, BLOCK_D0, BLOCK_D1,
                            HAS_D1, USE_TMA)
        v0, v1 = _v_tiles(v_ptr, v_desc0, v_desc1, off_b, off_hk, start_n, n_left,
                          stride_vn, stride_vd, MASKED, HEAD_DIM, BLOCK_N, BLOCK_D0, BLOCK_D1,
                          HAS_D1, USE_TMA, V_SEQ_CONTIG)
        qk = _scores(q0, q1, kt0, kt1, HAS_D1, QK_ACC_CHUNK)
        p8, alpha, m_i, l_i = _softmax_step(qk, m_i, l_i, qk_scale, offs_m, start_n, n_left,
                                            causal_offset, p_dtype, MASKED, IS_CAUSAL, BLOCK_N,
                                            EXACT_P_ROUNDING, P_MANT, P_MIN_EXP)
        # [BLOCK_M, BLOCK_N] x [BLOCK_N, BLOCK_D] -> [BLOCK_M, BLOCK_D]
        acc0 = tl.dot(p8, v0, acc0 * alpha[:, None])
        if HAS_D1:
            acc1 = tl.dot(p8, v1, acc1 * alpha[:, None])
        k_ptr += BLOCK_N * stride_kn
        v_ptr += BLOCK_N * stride_vn
    return acc0, acc1, l_i, m_i


@triton.jit
def _store_out(base, acc, offs_m, offs_d, stride_om, n_rows, n_cols, MASK_D: tl.constexpr):
    ptrs = base + offs_m[:, None] * stride_om + offs_d[None, :]
    if MASK_D:
        tl.store(ptrs, acc, mask=(offs_m[:, None] < n_rows) & (offs_d[None, :] < n_cols))
    else:
        tl.store(ptrs, acc, mask=offs_m[:, None] < n_rows)


# Lengths, group size and the strides of descales / lse vary per call and gain nothing from
# specialisation: one compile serves them all.
@triton.jit(do_not_specialize=[
    "Lq", "Lk", "Hq", "GROUP", "lk_bucket", "stride_lb", "stride_lh", "stride_qdb", "stride_qdh",
    "stride_kdb", "stride_kdh", "stride_vdb", "stride_vdh",
])
def _fp8_fwd_kernel(
    Q, K, V, Out, Lse, QD, KD, VD, k_desc0, k_desc1, v_desc0, v_desc1,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om,
    stride_lb, stride_lh,
    stride_qdb, stride_qdh, stride_kdb, stride_kdh, stride_vdb, stride_vdh,
    Lq, Lk, Hq, GROUP, sm_scale, lk_bucket,
    HEAD_DIM: tl.constexpr, BLOCK_D0: tl.constexpr, BLOCK_D1: tl.constexpr,
    HAS_D1: tl.constexpr, IS_CAUSAL: tl.constexpr, USE_TMA: tl.constexpr,
    V_SEQ_CONTIG: tl.constexpr, STORE_LSE: tl.constexpr,
    EXACT_P_ROUNDING: tl.constexpr, P_MANT: tl.constexpr, P_MIN_EXP: tl.constexpr,
    QK_ACC_CHUNK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One program: BLOCK_M query rows of one (batch, query head); 1-D grid of
    cdiv(Lq, BLOCK_M) * Hq * B programs."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(Lq, BLOCK_M)
    if IS_CAUSAL:
        # Longest first over all heads (LPT order): no long block starts in the last wave.
        num_bh = tl.num_programs(0) // num_m
        pid_m = num_m - 1 - pid // num_bh
        bh = pid % num_bh
    else:
        # Consecutive programs read the same head's K and V (L2 reuse).
        pid_m = pid % num_m
        bh = pid // num_m
    off_h = bh % Hq
    off_b = bh // Hq
    off_hk = off_h // GROUP
    start_m = pid_m * BLOCK_M
    offs_mi = tl.arange(0, BLOCK_M)
    offs_m = start_m + offs_mi
    offs_d0 = tl.arange(0, BLOCK_D0)
    offs_d1 = tl.arange(0, BLOCK_D1)
    MASK_D0: tl.constexpr = BLOCK_D0 > HEAD_DIM
    MASK_D1: tl.constexpr = BLOCK_D0 + BLOCK_D1 > HEAD_DIM
    off_b64 = off_b.to(tl.int64)
    off_h64 = off_h.to(tl.int64)
    off_hk64 = off_hk.to(tl.int64)

    q_descale = tl.load(QD + off_b * stride_qdb + off_hk * stride_qdh)
    k_descale = tl.load(KD + off_b * stride_kdb + off_hk * stride_kdh)
    v_descale = tl.load(VD + off_b * stride_vdb + off_hk * stride_vdh)
    qk_scale = sm_scale * q_descale * k_descale * LOG2E

    q_ptr = Q + off_b64 * stride_qb + off_h64 * stride_qh + start_m.to(tl.int64) * stride_qm
    # [BLOCK_M, BLOCK_D0]
    q0 = _load_tile(q_ptr, offs_mi, offs_d0, stride_qm, stride_qd, Lq - start_m, HEAD_DIM,
                    True, MASK_D0)
    acc0 = tl.zeros([BLOCK_M, BLOCK_D0], dtype=tl.float32)
    q1 = q0
    acc1 = acc0
    if HAS_D1:
        # [BLOCK_M, BLOCK_D1]
        q1 = _load_tile(q_ptr + BLOCK_D0 * stride_qd, offs_mi, offs_d1, stride_qm, stride_qd,
                        Lq - start_m, HEAD_DIM - BLOCK_D0, True, MASK_D1)
        acc1 = tl.zeros([BLOCK_M, BLOCK_D1], dtype=tl.float32)
    # A negative scale (or descale) moves into q, exactly (fp8 negation flips the sign bit),
    # so that qk_scale >= 0 and max(qk) * qk_scale is the row max of the scores.
    flip = qk_scale < 0
    q0 = _negate_fp8_if(q0, flip)
    if HAS_D1:
        q1 = _negate_fp8_if(q1, flip)
    qk_scale = tl.abs(qk_scale)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)

    # Keys [0, full_end) are visible to every row of the block; [full_end, hi) need masks.
    causal_offset = Lk - Lq
    if IS_CAUSAL:
        hi = tl.minimum(tl.maximum(start_m + BLOCK_M + causal_offset, 0), Lk)
        full = tl.minimum(tl.maximum(start_m + causal_offset + 1, 0), hi)
    else:
        hi = Lk
        full = Lk
    full_end = (full // BLOCK_N) * BLOCK_N

    k_ptr = K + off_b64 * stride_kb + off_hk64 * stride_kh
    v_ptr = V + off_b64 * stride_vb + off_hk64 * stride_vh
    acc0, acc1, l_i, m_i = _attend_tiles(
        acc0, acc1, l_i, m_i, q0, q1,
        k_ptr, v_ptr, k_desc0, k_desc1, v_desc0, v_desc1, off_b, off_hk,
        0, full_end, offs_m, Lk, causal_offset, qk_scale,
        stride_kn, stride_kd, stride_vn, stride_vd,
        False, IS_CAUSAL, HEAD_DIM, BLOCK_N, BLOCK_D0, BLOCK_D1, HAS_D1, USE_TMA, V_SEQ_CONTIG,
        EXACT_P_ROUNDING, P_MANT, P_MIN_EXP, QK_ACC_CHUNK,
    )
    k_ptr += full_end.to(tl.int64) * stride_kn
    v_ptr += full_end.to(tl.int64) * stride_vn
    acc0, acc1, l_i, m_i = _attend_tiles(
        acc0, acc1, l_i, m_i, q0, q1,
        k_ptr, v_ptr, k_desc0, k_desc1, v_desc0, v_desc1, off_b, off_hk,
        full_end, hi, offs_m, Lk, causal_offset, qk_scale,
        stride_kn, stride_kd, stride_vn, stride_vd,
        True, IS_CAUSAL, HEAD_DIM, BLOCK_N, BLOCK_D0, BLOCK_D1, HAS_D1, USE_TMA, V_SEQ_CONTIG,
        EXACT_P_ROUNDING, P_MANT, P_MIN_EXP, QK_ACC_CHUNK,
    )

    # Rows with no visible key: l = 0, acc = 0 -> out 0, lse -inf.
    has_key = l_i > 0.0
    l_safe = tl.where(has_key, l_i, 1.0)
    out_scale = v_descale / l_safe
    o_ptr = Out + off_b64 * stride_ob + off_h64 * stride_oh + start_m.to(tl.int64) * stride_om
    out_ty = Out.dtype.element_ty
    # [BLOCK_M, BLOCK_D0]
    _store_out(o_ptr, (acc0 * out_scale[:, None]).to(out_ty), offs_mi, offs_d0, stride_om,
               Lq - start_m, HEAD_DIM, MASK_D0)
    if HAS_D1:
        # [BLOCK_M, BLOCK_D1]
        _store_out(o_ptr + BLOCK_D0, (acc1 * out_scale[:, None]).to(out_ty), offs_mi, offs_d1,
                   stride_om, Lq - start_m, HEAD_DIM - BLOCK_D0, MASK_D1)
    if STORE_LSE:
        lse = tl.where(has_key, (m_i + tl.math.log2(l_safe)) * LN2, float("-inf"))
        lse_ptr = Lse + off_b64 * stride_lb + off_h64 * stride_lh
        tl.store(lse_ptr + offs_m, lse, mask=offs_m < Lq)


@triton.jit
def _transpose_v_kernel(
    X, Y, Hk, Lk, stride_xb, stride_xh, stride_xn, stride_xd, stride_yb, stride_yh, stride_yd,
    HEAD_DIM: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Y[b, h, d, n] = X[b, h, n, d] for one [BLOCK_L, BLOCK_D] tile; Y's rows are contiguous.
    Grid (B * Hk, cdiv(Lk, BLOCK_L), cdiv(D, BLOCK_D)); bytes moved as uint8."""
    bh = tl.program_id(0)
    off_b = (bh // Hk).to(tl.int64)
    off_h = (bh % Hk).to(tl.int64)
    offs_n = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    keep = (offs_n[:, None] < Lk) & (offs_d[None, :] < HEAD_DIM)
    x_ptrs = (X + off_b * stride_xb + off_h * stride_xh + offs_n[:, None] * stride_xn
              + offs_d[None, :] * stride_xd)
    # [BLOCK_L, BLOCK_D]
    tile = tl.load(x_ptrs, mask=keep)
    y_ptrs = Y + off_b * stride_yb + off_h * stride_yh + offs_d[:, None] * stride_yd + offs_n[None, :]
    # [BLOCK_D, BLOCK_L]
    tl.store(y_ptrs, tl.trans(tile), mask=tl.trans(keep))
# fmt: on
