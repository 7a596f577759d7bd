"""Flash core, summed dbias kernel: the gradient of a bias that several (batch, query head)
pairs read, summed over them on chip.

A full (Bb, Hb, Lq, Lk) gqa bias with Bb = 1 < B or Hb < Hq (1, or Hk: query head h reads bias
head h // G) is read by R = (B / Bb) * (Hq / Hb) pairs, and its gradient is the sum of their
dS = P * (dP - delta). Storing every pair's dS from the dk/dv pass for a host reduction costs
a float32 (B, Hq, Lq, Lk) buffer (4.3 GB at B = 1, Hq = 16, L = 8192) written once and read
once. Here one program per (query block, key block, bias batch and head) recomputes S = Q K^T
and dP = dO V^T of each of its R pairs (two of the backward's five products) and keeps the sum
in registers: a fixed loop order and one store per tile, so deterministic without atomics, and
no buffer. Tiles whose mask block is all False (tile codes, `_flash_mask`) or that causal
masking hides are skipped; the bias tile is read once per program. Grid axis 0 walks GROUP_M
query blocks at a time over every key block, so the programs running together share their Q,
dO, K and V tiles in L2. The launcher is `_flash.flash_backward`.
"""

from __future__ import annotations

import triton
import triton.language as tl

from attnverify.kernels._flash_bwd import _load_row_stats
from attnverify.kernels._flash_tiles import (
    LOG2E,
    _aligned,
    _base,
    _configs,
    _fitting,
    _lanes,
    _load_pair,
    _tile_active,
    _wide,
)

# (BLOCK_INNER = key block, num_warps, num_stages); the query block is the host's BLOCK_OUTER
DBIAS_CONFIGS = ((128, 8, 2), (64, 4, 3), (64, 8, 3), (32, 4, 3))
DBIAS_AUTOTUNE_KEY = ["HEAD_DIM", "IS_CAUSAL", "HAS_MASK", "BLOCK_OUTER", "len_bucket"]
GROUP_M = 8  # query blocks per band of grid axis 0
# lengths and the read counts vary per call and gain nothing from specialisation
_DBIAS_VARYING = [
    "seqlen_q", "seqlen_k", "len_bucket", "group", "mask_head_div", "batch_reads", "head_reads",
]  # fmt: skip


def _prune_dbias(configs: list[triton.Config], named_args: dict, **kwargs: object) -> list:
    """Drop configs whose pipelined tiles cannot fit in shared memory (`_fitting`): every
    step loads Q and dO ([BLOCK_OUTER, D] each) and K and V ([BLOCK_INNER, D] each)."""
    args = {**named_args, **kwargs}
    return _fitting(configs, args, lambda c: 2 * args["BLOCK_OUTER"] + 2 * c.kwargs["BLOCK_INNER"])


@triton.jit
def _dbias_read(
    acc, Q, K, V, DO, Lse, Delta, mask_tile, flag_tile, bias2, visible, z, h, hk, m0, n0,
    offs_m, offs_n, offs_d0, offs_d1, d0_ok, d1_ok, rows, cols, len_q, len_k, qk_scale,
    stride_qz, stride_qh, stride_qm, stride_qd, stride_kz, stride_kh, stride_kn, stride_kd,
    stride_vz, stride_vh, stride_vn, stride_vd, stride_doz, stride_doh, stride_dom, stride_dod,
    stride_lz, stride_lh, stride_lm, stride_mz, stride_mh, stride_fz, stride_fh,
    mask_head_div,
    HAS_MASK: tl.constexpr, HAS_D1: tl.constexpr, MASK_D0: tl.constexpr,
    DOT_PREC: tl.constexpr,
):  # fmt: skip
    """acc += dS of one (batch z, query head h) pair over this program's tile. mask_tile,
    flag_tile: the mask's in-tile pointers and the tile's code pointer at batch 0, head 0.
    bias2: the bias tile times LOG2E; visible: inside Lq x Lk and causally visible (both read
    or computed once by the caller). Rows past Lq and keys past Lk load as 0 and give P = 0
    (their lse reads +inf, their scores -inf). [BLOCK_M, BLOCK_N]"""
    mh = h // mask_head_div
    flag_ptr = flag_tile + z.to(tl.int64) * stride_fz + mh.to(tl.int64) * stride_fh
    if _tile_active(flag_ptr, HAS_MASK):
        rows_ok = rows < len_q
        cols_ok = cols < len_k
        q_base = _base(Q, z, h, m0, stride_qz, stride_qh, stride_qm)
        do_base = _base(DO, z, h, m0, stride_doz, stride_doh, stride_dom)
        k_base = _base(K, z, hk, n0, stride_kz, stride_kh, stride_kn)
        v_base = _base(V, z, hk, n0, stride_vz, stride_vh, stride_vn)
        # [BLOCK_M, D0], [BLOCK_M, D1]
        q0, q1, do0, do1 = _load_pair(
            q_base, do_base, offs_m, stride_qm, stride_qd, stride_dom, stride_dod,
            offs_d0, offs_d1, rows_ok, d0_ok, d1_ok, MASK_D0, HAS_D1,
        )  # fmt: skip
        # [BLOCK_N, D0], [BLOCK_N, D1]
        k0, k1, v0, v1 = _load_pair(
            k_base, v_base, offs_n, stride_kn, stride_kd, stride_vn, stride_vd,
            offs_d0, offs_d1, cols_ok, d0_ok, d1_ok, MASK_D0, HAS_D1,
        )  # fmt: skip
        lse2, delta = _load_row_stats(
            _base(Lse, z, h, m0, stride_lz, stride_lh, stride_lm),
            _base(Delta, z, h, m0, stride_lz, stride_lh, stride_lm), offs_m, len_q - m0,
            stride_lm,
        )  # fmt: skip
        # [BLOCK_M, BLOCK_N]
        s = tl.dot(q0, tl.trans(k0), input_precision=DOT_PREC)
        if HAS_D1:
            s += tl.dot(q1, tl.trans(k1), input_precision=DOT_PREC)
        if HAS_MASK:
            mask_ptrs = mask_tile + z.to(tl.int64) * stride_mz + mh.to(tl.int64) * stride_mh
            visible = visible & (tl.load(mask_ptrs, mask=visible, other=0) != 0)
        s = tl.where(visible, s * qk_scale + bias2, float("-inf"))
        p = tl.math.exp2(s - lse2[:, None])
        dp = tl.dot(do0, tl.trans(v0), input_precision=DOT_PREC)
        if HAS_D1:
            dp += tl.dot(do1, tl.trans(v1), input_precision=DOT_PREC)
        acc += p * (dp - delta[:, None])
    return acc


@triton.jit(do_not_specialize=_DBIAS_VARYING)
def _flash_dbias_kernel(
    Q, K, V, DO, Lse, Delta, DB, Mask, Bias, Flags,
    stride_qz, stride_qh, stride_qm, stride_qd,
    stride_kz, stride_kh, stride_kn, stride_kd,
    stride_vz, stride_vh, stride_vn, stride_vd,
    stride_doz, stride_doh, stride_dom, stride_dod,
    stride_lz, stride_lh, stride_lm,
    stride_dbz, stride_dbh, stride_dbm, stride_dbn,
    stride_mz, stride_mh, stride_mm, stride_mn,
    stride_bz, stride_bh, stride_bm, stride_bn,
    stride_fz, stride_fh, stride_fm, stride_fn,
    seqlen_q, seqlen_k, len_bucket, group, mask_head_div, bias_heads, batch_reads, head_reads,
    qk_scale,
    HEAD_DIM: tl.constexpr, HEAD_D0: tl.constexpr, HEAD_D1: tl.constexpr,
    HAS_D1: tl.constexpr, BLOCK_OUTER: tl.constexpr, BLOCK_INNER: tl.constexpr,
    MASK_BLOCK: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr,
    DOT_PREC: tl.constexpr, ALIGN: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    """Summed dbias: program (tile, bias batch zb * bias_heads + bias head hb) writes
    DB[zb, hb, tile] = sum of dS over the pairs (z, h) that read bias (zb, hb), in the order
    z = zb + i // head_reads, h = hb * head_reads + i % head_reads for i < batch_reads *
    head_reads (batch_reads: B for a batch-broadcast bias, else 1; head_reads: Hq / Hb). Tiles
    are BLOCK_OUTER query rows x BLOCK_INNER keys; tile index t on axis 0 covers GROUP_M query
    blocks per band, query block fastest. Causally hidden tiles store 0 without a read."""
    BLOCK_M: tl.constexpr = BLOCK_OUTER
    BLOCK_N: tl.constexpr = BLOCK_INNER
    stride_qz, stride_qh, stride_qm = _aligned(stride_qz, stride_qh, stride_qm, ALIGN)
    stride_kz, stride_kh, stride_kn = _aligned(stride_kz, stride_kh, stride_kn, ALIGN)
    stride_vz, stride_vh, stride_vn = _aligned(stride_vz, stride_vh, stride_vn, ALIGN)
    stride_doz, stride_doh, stride_dom = _aligned(stride_doz, stride_doh, stride_dom, ALIGN)
    t, zhb = tl.program_id(0), tl.program_id(1)
    num_m = tl.cdiv(seqlen_q, BLOCK_M)
    num_n = tl.cdiv(seqlen_k, BLOCK_N)
    band = t // (GROUP_M * num_n)
    first_m = band * GROUP_M
    band_rows = tl.minimum(num_m - first_m, GROUP_M)
    m0 = (first_m + t % band_rows) * BLOCK_M
    n0 = (t % (GROUP_M * num_n)) // band_rows * BLOCK_N
    zb = zhb // bias_heads
    hb = zhb % bias_heads
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    rows = m0 + offs_m
    cols = n0 + offs_n
    offs_d0, offs_d1, d0_ok, d1_ok = _lanes(HEAD_DIM, HEAD_D0, HEAD_D1)
    MASK_D0: tl.constexpr = HEAD_D0 > HEAD_DIM
    in_range = (rows < seqlen_q)[:, None] & (cols < seqlen_k)[None, :]
    shift = seqlen_k - seqlen_q

    b_tile = _base(Bias, zb, hb, m0, stride_bz, stride_bh, stride_bm) + _wide(n0) * stride_bn
    # [BLOCK_M, BLOCK_N]
    b_ptrs = b_tile + offs_m[:, None] * stride_bm + offs_n[None, :] * stride_bn
    bias2 = tl.load(b_ptrs, mask=in_range, other=0.0).to(tl.float32) * LOG2E
    mask_tile = Mask + _wide(m0) * stride_mm + _wide(n0) * stride_mn
    mask_tile = mask_tile + offs_m[:, None] * stride_mm + offs_n[None, :] * stride_mn
    flag_tile = Flags + (m0 // MASK_BLOCK) * stride_fm + (n0 // MASK_BLOCK) * stride_fn
    # one loop, masked by a tile computed once: two loops (masked, unmasked) would each keep
    # their own pipeline buffers (sm90: twice the shared memory)
    visible = in_range
    reads = batch_reads * head_reads
    if IS_CAUSAL:
        visible = visible & (cols[None, :] <= rows[:, None] + shift)
        # a tile hidden from every row reads nothing
        reads = tl.where(n0 > m0 + BLOCK_M - 1 + shift, 0, reads)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for i in range(0, reads):
        z = zb + i // head_reads
        h = hb * head_reads + i % head_reads
        acc = _dbias_read(
            acc, Q, K, V, DO, Lse, Delta, mask_tile, flag_tile, bias2, visible, z, h,
            h // group, m0, n0, offs_m, offs_n, offs_d0, offs_d1, d0_ok, d1_ok, rows, cols,
            seqlen_q, seqlen_k, qk_scale,
            stride_qz, stride_qh, stride_qm, stride_qd, stride_kz, stride_kh, stride_kn,
            stride_kd, stride_vz, stride_vh, stride_vn, stride_vd, stride_doz, stride_doh,
            stride_dom, stride_dod, stride_lz, stride_lh, stride_lm, stride_mz, stride_mh,
            stride_fz, stride_fh, mask_head_div,
            HAS_MASK, HAS_D1, MASK_D0, DOT_PREC,
        )  # fmt: skip
    db_tile = _base(DB, zb, hb, m0, stride_dbz, stride_dbh, stride_dbm) + _wide(n0) * stride_dbn
    db_ptrs = db_tile + offs_m[:, None] * stride_dbm + offs_n[None, :] * stride_dbn
    tl.store(db_ptrs, acc.to(DB.dtype.element_ty), mask=in_range)


_dbias = triton.autotune(
    _configs(DBIAS_CONFIGS),
    DBIAS_AUTOTUNE_KEY,
    prune_configs_by={"early_config_prune": _prune_dbias},
)(_flash_dbias_kernel)

__all__ = ["DBIAS_CONFIGS", "GROUP_M"]
