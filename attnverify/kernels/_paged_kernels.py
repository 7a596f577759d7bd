"""The @triton.jit code of paged-KV attention (`attnverify.kernels.paged`), in pipeline order.

- fp8 word conversion: `_fp8_byte_to_f16` (integer bit operations) and `_fp8_words_to_f16`
  ([R, W] int32 words of 4 fp8 values -> [R, 4 W] float16, by inline PTX on NVIDIA sm89+ or by
  bit operations), exact, NaN kept.
- `_kv_tile`: one [BLOCK_N, BLOCK_D] K and V tile of a kv head through the block table (keys
  at or past the split's end, and their block-table entries, are not read); fp8 caches as
  int32 words converted in registers.
- `_paged_fwd_kernel`: one program per (request, kv head row tile, split); all G * Lq query
  rows of a kv head share one K/V read; causal bottom-right; writes out and natural-log lse
  (the final result with one split, float32 partials with several).
- `_merge_kernel`: merges S partial (out, lse) states per row, -inf lse exactly.

On NVIDIA sm90+ the merge of a split launch is a programmatic dependent launch: the attention
kernel signals after its KV loop (EARLY_DEPENDENTS), the merge waits for its writes before
reading anything (WAIT_PRIOR), so the merge's launch overlaps the attention kernel's tail.

Layouts, dtypes and semantics: `attnverify.kernels.paged`, whose launchers (`launch_paged`,
`launch_merge`) pick the constexprs; the kernels validate nothing. Oracle:
`attnverify.reference.paged`.
"""

from __future__ import annotations

import triton
import triton.language as tl

# fp8 pairs -> float16 pairs in PTX (sm89+). $4: one 32-bit word, elements 0..3 in bytes 0..3;
# $0..$3: the four float16 values. e4m3: the hardware conversion (NaN stays NaN); e5m2 is the
# high byte of a float16, so a byte permute into the high halves is exact.
_E4M3_WORD_PTX = tl.constexpr("""{
.reg .b16 lo, hi;
.reg .b32 a, b;
mov.b32 {lo, hi}, $4;
cvt.rn.f16x2.e4m3x2 a, lo;
cvt.rn.f16x2.e4m3x2 b, hi;
mov.b32 {$0, $1}, a;
mov.b32 {$2, $3}, b;
}""")
_E5M2_WORD_PTX = tl.constexpr("""{
.reg .b32 a, b;
prmt.b32 a, $4, 0, 0x1404;
prmt.b32 b, $4, 0, 0x3424;
mov.b32 {$0, $1}, a;
mov.b32 {$2, $3}, b;
}""")


@triton.jit
def _fp8_byte_to_f16(x, E5M2: tl.constexpr):
    """int32 fp8 bit patterns (0..255) -> float16 of the same value, by integer operations."""
    if E5M2:
        # e5m2 is the high byte of a float16
        return (x << 8).to(tl.int16).to(tl.float16, bitcast=True)
    else:
        # e4m3 (bias 7) shifted into float16's fields (bias 15) reads as value / 2^8;
        # magnitude 0x7F is e4m3fn's NaN
        mag = x & 0x7F
        h = tl.where(mag == 0x7F, 0x7E00, mag << 7) | ((x & 0x80) << 8)
        return (h.to(tl.int16).to(tl.float16, bitcast=True) * 256.0).to(tl.float16)


@triton.jit
def _fp8_words_to_f16(w, E5M2: tl.constexpr, PTX: tl.constexpr):
    """[R, W] int32 words of 4 fp8 values each (byte j of word i: element 4 i + j) ->
    [R, 4 W] float16 of the same values (exact). The conversion runs in registers on 32-bit
    words: whatever Triton stages in shared memory for the dot is 32- or 16-bit, never bytes."""
    if PTX:
        f0, f1, f2, f3 = tl.inline_asm_elementwise(
            _E5M2_WORD_PTX if E5M2 else _E4M3_WORD_PTX,
            "=h,=h,=h,=h,r",
            [w],
            dtype=(tl.float16, tl.float16, tl.float16, tl.float16),
            is_pure=True,
            pack=1,
        )
    else:
        f0 = _fp8_byte_to_f16(w & 0xFF, E5M2)
        f1 = _fp8_byte_to_f16((w >> 8) & 0xFF, E5M2)
        f2 = _fp8_byte_to_f16((w >> 16) & 0xFF, E5M2)
        f3 = _fp8_byte_to_f16((w >> 24) & 0xFF, E5M2)
    # [R, W, 2, 2]: [r, i, m, k] = element 4 i + 2 m + k of row r
    f = tl.join(tl.join(f0, f2), tl.join(f1, f3))
    return tl.reshape(f, (f.shape[0], f.shape[1] * 4))


@triton.jit
def _kv_tile(
    k_head,
    v_head,
    table,
    start_n,
    end,
    stride_btp,
    stride_kb,
    stride_ks,
    stride_kd,
    stride_vb,
    stride_vs,
    stride_vd,
    offs_d,
    d_ok,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    FP8_WORDS: tl.constexpr,
    FP8_E5M2: tl.constexpr,
):
    """K and V [BLOCK_N, BLOCK_D] of keys start_n.. of one kv head; keys at or past `end`, and
    the block-table entries of their pages, are not read.

    FP8_WORDS (0: off): the caches are int32 views of fp8 caches (strides in words, `offs_d` /
    `d_ok` the BLOCK_D / 4 words of a row), returned as float16, converted by PTX (2) or by
    integer operations (1)."""
    pos = start_n + tl.arange(0, BLOCK_N)
    pos_ok = pos < end
    slot = (pos % BLOCK_SIZE).to(tl.int64)[:, None]
    if BLOCK_SIZE % BLOCK_N == 0:
        # the tile lies in one page: one block-table entry
        block = tl.load(table + (start_n // BLOCK_SIZE) * stride_btp, mask=start_n < end, other=0)
        block = block.to(tl.int64)
    else:
        # [BLOCK_N] the page of each key
        block = tl.load(table + (pos // BLOCK_SIZE) * stride_btp, mask=pos_ok, other=0)
        block = block.to(tl.int64)[:, None]
    mask = pos_ok[:, None] & d_ok[None, :]
    # [BLOCK_N, BLOCK_D] (fp8 words: [BLOCK_N, BLOCK_D / 4])
    k = tl.load(
        k_head + block * stride_kb + slot * stride_ks + offs_d[None, :] * stride_kd,
        mask=mask,
        other=0.0,
    )
    v = tl.load(
        v_head + block * stride_vb + slot * stride_vs + offs_d[None, :] * stride_vd,
        mask=mask,
        other=0.0,
    )
    if FP8_WORDS:
        k = _fp8_words_to_f16(k, FP8_E5M2, FP8_WORDS == 2)
        v = _fp8_words_to_f16(v, FP8_E5M2, FP8_WORDS == 2)
    return k, v


# Per-call sizes (group, query count, split count) and the strides of the split partials and
# descales vary with the request mix and gain nothing from specialisation: one compile serves
# them all.
@triton.jit(
    do_not_specialize=[
        "stride_btb",
        "stride_lb",
        "stride_lh",
        "stride_lm",
        "stride_ls",
        "stride_kds",
        "stride_vds",
        "group_size",
        "num_queries",
        "num_row_tiles",
        "num_splits",
    ]
)
def _paged_fwd_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    block_tables_ptr,
    seq_lens_ptr,
    k_descale_ptr,
    v_descale_ptr,
    out_ptr,
    lse_ptr,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_qd,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_kd,
    stride_vb,
    stride_vs,
    stride_vh,
    stride_vd,
    stride_btb,
    stride_btp,
    stride_ob,
    stride_oh,
    stride_om,
    stride_os,
    stride_od,
    stride_lb,
    stride_lh,
    stride_lm,
    stride_ls,
    stride_kds,
    stride_vds,
    qk_scale,
    group_size,
    num_queries,
    num_row_tiles,
    num_splits,
    HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_K_DESCALE: tl.constexpr,
    HAS_V_DESCALE: tl.constexpr,
    NUM_STAGES: tl.constexpr,
    FP16_DOT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    FP8_WORDS: tl.constexpr,
    FP8_E5M2: tl.constexpr,
    EARLY_DEPENDENTS: tl.constexpr,
):
    # grid (num_splits, Hk * row tiles, B): one program per (request, kv head, split); its
    # BLOCK_M rows are (query head of the group, query position) pairs sharing one K/V read
    split = tl.program_id(0)
    kv_head = tl.program_id(1) // num_row_tiles
    row_tile = tl.program_id(1) % num_row_tiles
    b = tl.program_id(2).to(tl.int64)

    seq_len = tl.load(seq_lens_ptr + b)
    tiles_per_split = tl.cdiv(tl.cdiv(seq_len, BLOCK_N), num_splits)
    start = split * tiles_per_split * BLOCK_N
    end = tl.minimum(start + tiles_per_split * BLOCK_N, seq_len)

    # rows: query head g of this kv head's group, query position i
    rows = row_tile * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < group_size * num_queries
    head = (kv_head * group_size + rows // num_queries).to(tl.int64)
    query = rows % num_queries
    last_key = query + seq_len - num_queries  # query i sees key j iff j <= last_key[i]
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    if FP8_WORDS:
        # the cache rows are int32 words of 4 fp8 values
        offs_kv = tl.arange(0, BLOCK_D // 4)
        kv_ok = offs_kv < HEAD_DIM // 4
    else:
        offs_kv = offs_d
        kv_ok = d_ok

    # [BLOCK_M, BLOCK_D]
    q = tl.load(
        q_ptr
        + b * stride_qb
        + head[:, None] * stride_qh
        + query[:, None] * stride_qm
        + offs_d[None, :] * stride_qd,
        mask=row_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    if HAS_K_DESCALE:
        qk_scale = qk_scale * tl.load(k_descale_ptr + kv_head * stride_kds)
    if FP16_DOT:
        # fp8 cache: multiply in float16, q scaled by 2^e so that max|q| is in [2^13, 2^14)
        q_max = tl.max(tl.max(tl.abs(q.to(tl.float32)), 1), 0)
        q_mult = tl.exp2(13.0 - tl.floor(tl.log2(tl.where(q_max > 0.0, q_max, 1.0))))
        q = (q.to(tl.float32) * q_mult).to(tl.float16)
        qk_scale = qk_scale / q_mult

    k_head = k_ptr + kv_head.to(tl.int64) * stride_kh
    v_head = v_ptr + kv_head.to(tl.int64) * stride_vh
    table = block_tables_ptr + b * stride_btb
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in tl.range(start, end, BLOCK_N, num_stages=NUM_STAGES):
        k, v = _kv_tile(
            k_head,
            v_head,
            table,
            start_n,
            end,
            stride_btp,
            stride_kb,
            stride_ks,
            stride_kd,
            stride_vb,
            stride_vs,
            stride_vd,
            offs_kv,
            kv_ok,
            BLOCK_SIZE,
            BLOCK_N,
            FP8_WORDS,
            FP8_E5M2,
        )
        pos = start_n + tl.arange(0, BLOCK_N)
        # [BLOCK_M, BLOCK_N] scores in log2 units
        s = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=DOT_PRECISION) * qk_scale
        visible = (pos[None, :] < end) & (pos[None, :] <= last_key[:, None])
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        # [BLOCK_M, BLOCK_D]
        acc = acc * alpha[:, None] + tl.dot(
            p.to(q.dtype), v.to(q.dtype), input_precision=DOT_PRECISION
        )
        m_i = m_new

    if EARLY_DEPENDENTS:
        # programmatic dependent launch: the merge may start its launch now; it waits for this
        # grid's writes in `gdc_wait`
        tl.extra.cuda.gdc_launch_dependents()
    has_key = l_i > 0.0
    out = acc / tl.where(has_key, l_i, 1.0)[:, None]
    if HAS_V_DESCALE:
        out = out * tl.load(v_descale_ptr + kv_head * stride_vds)
    # natural-log lse: (m + log2 l) * ln 2
    lse = tl.where(
        has_key, (m_i + tl.log2(tl.where(has_key, l_i, 1.0))) * 0.6931471805599453, float("-inf")
    )
    o_rows = b * stride_ob + head * stride_oh + query * stride_om + split * stride_os
    tl.store(
        out_ptr + o_rows[:, None] + offs_d[None, :] * stride_od,
        out.to(out_ptr.dtype.element_ty),
        mask=row_ok[:, None] & d_ok[None, :],
    )
    l_rows = b * stride_lb + head * stride_lh + query * stride_lm + split * stride_ls
    tl.store(lse_ptr + l_rows, lse, mask=row_ok)


@triton.jit(
    do_not_specialize=[
        "stride_or",
        "stride_os",
        "stride_lr",
        "stride_ls",
        "stride_mlr",
        "num_splits",
    ]
)
def _merge_kernel(
    out_ptr,
    lse_ptr,
    merged_ptr,
    merged_lse_ptr,
    stride_or,
    stride_os,
    stride_od,
    stride_lr,
    stride_ls,
    stride_mr,
    stride_md,
    stride_mlr,
    num_splits,
    head_dim,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
    WAIT_PRIOR: tl.constexpr,
):
    if WAIT_PRIOR:
        # launched as a programmatic dependent: wait until the prior grid's writes are visible
        tl.extra.cuda.gdc_wait()
    row = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim
    lse_row = lse_ptr + row * stride_lr
    out_row = out_ptr + row * stride_or

    m = tl.full([BLOCK_S], float("-inf"), dtype=tl.float32)
    for s0 in range(0, num_splits, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        lse = tl.load(lse_row + offs_s * stride_ls, mask=offs_s < num_splits, other=float("-inf"))
        m = tl.maximum(m, lse.to(tl.float32))
    m_max = tl.max(m, 0)
    m_safe = tl.where(m_max == float("-inf"), 0.0, m_max)

    total = tl.zeros([BLOCK_S], dtype=tl.float32)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for s0 in range(0, num_splits, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        lse = tl.load(lse_row + offs_s * stride_ls, mask=offs_s < num_splits, other=float("-inf"))
        # [BLOCK_S] weights; a split with lse -inf weighs 0 and its out is never loaded
        w = tl.exp(lse.to(tl.float32) - m_safe)
        total += w
        # [BLOCK_S, BLOCK_D]
        part = tl.load(
            out_row + offs_s[:, None] * stride_os + offs_d[None, :] * stride_od,
            mask=(w > 0.0)[:, None] & d_ok[None, :],
            other=0.0,
        )
        acc += tl.sum(tl.where((w > 0.0)[:, None], w[:, None] * part.to(tl.float32), 0.0), 0)
    total_sum = tl.sum(total, 0)
    has = total_sum > 0.0
    merged = acc / tl.where(has, total_sum, 1.0)
    tl.store(
        merged_ptr + row * stride_mr + offs_d * stride_md,
        merged.to(merged_ptr.dtype.element_ty),
        mask=d_ok,
    )
    if tl.program_id(1) == 0:
        merged_lse = tl.where(has, tl.log(tl.where(has, total_sum, 1.0)) + m_safe, float("-inf"))
        tl.store(merged_lse_ptr + row * stride_mlr, merged_lse)
