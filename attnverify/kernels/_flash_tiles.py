"""Flash core, shared device side: launch configs, pruning, autotune key, and the `@triton.jit`
helpers the forward (`_flash_fwd`) and backward (`_flash_bwd`) kernels inline.

Layout (see `_flash`): every tensor as (z, h, row, d) with explicit strides; row strides reach
the kernels divided by ALIGN. Scores are float32 in base 2 (`_scores` pre-multiplies by LOG2E).
Tiles: BLOCK_M query rows x BLOCK_N keys; head dims in two lane tiles D0 + D1
(`_common.HeadDimSplit`).
"""

from __future__ import annotations

from collections.abc import Callable

import triton
import triton.language as tl

from attnverify.arch import interpreter_active
from attnverify.kernels import _common

LOG2E = tl.constexpr(1.4426950408889634)
WORK_FIELDS = tl.constexpr(_common.WORK_FIELDS)  # int32 fields per varlen work-table item
LN2 = tl.constexpr(0.6931471805599453)
INTERPRETER_BLOCK = 32


def _configs(
    gpu: tuple[tuple[int, int, int], ...], pre_hook: Callable[[dict], None] | None = None
) -> list[triton.Config]:
    """(BLOCK_INNER, num_warps, num_stages) candidates; one small config under the interpreter.
    `pre_hook` runs before every launch of a config (the forward sets its TMA block shapes)."""
    if interpreter_active():
        gpu = ((INTERPRETER_BLOCK, 4, 1),)
    return [
        triton.Config({"BLOCK_INNER": b}, num_warps=w, num_stages=s, pre_hook=pre_hook)
        for b, w, s in gpu
    ]


# (64, 8, 3): with a (1, 1, L, L) bias, 1.2x the fastest other config on an H200
# (ci/notes_flash.md)
FWD_CONFIGS = ((128, 8, 3), (64, 4, 3), (128, 4, 2), (64, 8, 2), (64, 8, 3))
# Two configs were dropped for a compiler race (dk rows wrong and moving between identical
# runs; ci/flash_race_check.py, ci/notes_flash.md), both on an H200 with triton 3.6: (32, 8, 3)
# in the dk/dv pass at BLOCK_OUTER = 128, and (32, 4, 5) in the dk/dv pass at 64 keys with
# pointer loads (bf16, D = 128: dk off by 0.099 against 0.006, session 21). (32, 4, 3): head
# dims over 128 in 16 bits need it (sm90, D = 200: with TMA loads only it and the fallbacks fit
# the dk/dv pass's shared memory). (128, 8, 2): 128-row query tiles for the dk/dv pass's
# 64-key blocks (`_flash._outer_block`), 1.55x the bench backward on an H200.
BWD_CONFIGS = ((128, 8, 2), (64, 8, 3), (64, 4, 2), (32, 4, 3))
# (BLOCK_INNER, num_warps, num_stages), smallest shared memory last
FALLBACK_CONFIGS = ((32, 4, 2), (32, 4, 1), (16, 4, 1))
SMEM_BUDGET = 200 * 1024


def fallback_configs(pre_hook: Callable[[dict], None] | None) -> list[triton.Config]:
    """`FALLBACK_CONFIGS` with the kernel's pre-hook: what a launch tries when none of its
    configs fits the device's shared memory."""
    return [
        triton.Config({"BLOCK_INNER": b}, num_warps=w, num_stages=s, pre_hook=pre_hook)
        for b, w, s in FALLBACK_CONFIGS
    ]


def _prune(configs: list[triton.Config], named_args: dict, **kwargs: object) -> list:
    """Drop configs whose pipelined K/V (or Q/dO) tiles cannot fit in shared memory
    (`_fitting`)."""
    return _fitting(configs, {**named_args, **kwargs}, lambda c: 2 * c.kwargs["BLOCK_INNER"])


def _fitting(
    configs: list[triton.Config], args: dict, rows: Callable[[triton.Config], int]
) -> list[triton.Config]:
    """The configs whose pipelined tiles, `rows(config)` rows of the head dim a stage, fit in
    SMEM_BUDGET; with none left, the fitting `FALLBACK_CONFIGS` (or the smallest), which take
    the pre-hook of `configs` (the kernel's, shared by all its configs)."""
    width = args["HEAD_D0"] + (args["HEAD_D1"] if args["HAS_D1"] else 0)
    elem = args["Q"].element_size()

    def smem(c: triton.Config) -> int:
        return max(c.num_stages, 1) * rows(c) * width * elem

    kept = [c for c in configs if smem(c) <= SMEM_BUDGET]
    if not kept:
        fallbacks = fallback_configs(configs[0].pre_hook if configs else None)
        kept = [c for c in fallbacks if smem(c) <= SMEM_BUDGET] or fallbacks[-1:]
    return kept


# len_bucket: the bit length of the longest sequence, capped at 16384 (`_flash._len_bucket`; an
# argument the kernels do not read), so that a config tuned on a short first call is not
# reused for long sequences: the bench verifies its backward at 1024 tokens before timing
# 8192, and the dk/dv pass with a bias then ran a config 1.24x slower than its best
# (ci/notes_flash.md, session 23).
AUTOTUNE_KEY = [
    "HEAD_DIM", "IS_CAUSAL", "HAS_MASK", "HAS_BIAS", "IS_VARLEN", "BLOCK_OUTER", "len_bucket",
]  # fmt: skip
# The forward also tunes per K/V load path (TMA and pointer loads pipeline differently) and per
# stages of its mask-list loops (`_flash._list_stages`; a retry with (1, 1) tunes anew).
FWD_AUTOTUNE_KEY = [*AUTOTUNE_KEY, "USE_TMA", "CLEAN_STAGES", "REST_STAGES"]

# Lengths, group and head divisors, and the lse / tile-flag strides vary per call and gain
# nothing from specialisation: one compile serves them all (the verifier draws hundreds of
# shapes; each specialisation is a compile per autotune config).
_VARYING = [
    "seqlen_q",
    "seqlen_k",
    "len_bucket",
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


# ------------------------------------------------------------------ jit helpers


@triton.jit
def _program(Work, seqlen_q, seqlen_k, IS_VARLEN: tl.constexpr, HEADS_FIRST: tl.constexpr):
    """(h, z, start_q, len_q, start_k, len_k, block) of this program. Varlen: a 1-D grid over
    the work table (`_common.varlen_work_table`), whose items name their head. Dense: grid
    axis 0 is the block, axis 1 the query head, axis 2 the batch; HEADS_FIRST swaps axes 0 and
    1 (`_flash._heads_first`: the programs of one block, every head, run together)."""
    z = tl.program_id(2)
    if IS_VARLEN:
        w = Work + tl.program_id(0).to(tl.int64) * WORK_FIELDS
        start_q = tl.load(w)
        len_q = tl.load(w + 1)
        start_k = tl.load(w + 2)
        len_k = tl.load(w + 3)
        blk = tl.load(w + 4)
        h = tl.load(w + 5)
    else:
        if HEADS_FIRST:
            h, blk = tl.program_id(0), tl.program_id(1)
        else:
            blk, h = tl.program_id(0), tl.program_id(1)
        start_q = blk * 0
        len_q = seqlen_q + start_q
        start_k = start_q
        len_k = seqlen_k + start_q
    return h, z, start_q, len_q, start_k, len_k, blk


@triton.jit
def _lanes(HEAD_DIM: tl.constexpr, HEAD_D0: tl.constexpr, HEAD_D1: tl.constexpr):
    """Head-dim lanes of the two tiles and the lanes each owns. [D0], [D1], [D0], [D1]

    Tile 0 covers [0, D0) (lanes past D masked); tile 1 ends at D, so its loads need no mask,
    and the lanes it shares with tile 0 are zeroed or left unstored (d1_ok False there)."""
    offs_d0 = tl.arange(0, HEAD_D0)
    offs_d1 = (HEAD_DIM - HEAD_D1) + tl.arange(0, HEAD_D1)
    return offs_d0, offs_d1, offs_d0 < HEAD_DIM, offs_d1 >= HEAD_D0


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
def _offsets(offs, stride_r, stride_d, offs_d0, offs_d1):
    """In-tile offsets of rows `offs` in both lane tiles. [BLOCK, D0], [BLOCK, D1]"""
    off0 = offs[:, None] * stride_r + offs_d0[None, :] * stride_d
    off1 = offs[:, None] * stride_r + offs_d1[None, :] * stride_d
    return off0, off1


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
def _desc_tile(desc, z, h, row, col, BLOCK: tl.constexpr, WIDTH: tl.constexpr):
    """TMA load of rows [row, row + BLOCK), columns [col, col + WIDTH) of head h of batch z
    from a host (Z, H, rows, D) descriptor (box [1, 1, BLOCK, WIDTH]; varlen: Z = 1 and rows
    are packed rows); whatever lies outside the tensor reads 0. [BLOCK, WIDTH]"""
    return desc.load([z, h, row, col]).reshape([BLOCK, WIDTH])


@triton.jit
def _pair_tiles(
    x_ptrs, y_ptrs, x_off0, x_off1, y_off0, y_off1, X_desc0, X_desc1, Y_desc0, Y_desc1,
    z, h, row, rows_ok, d0_ok, d1_ok,
    MASKED: tl.constexpr, TMA: tl.constexpr, IS_VARLEN: tl.constexpr, HEAD_DIM: tl.constexpr,
    HEAD_D0: tl.constexpr, HEAD_D1: tl.constexpr, HAS_D1: tl.constexpr, MASK_D0: tl.constexpr,
    MASK_D1: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """The two operands of one inner-loop tile of head h, batch z, in both lane tiles: K and V
    of a key tile (forward, dq pass), Q and dO of a query tile (dk/dv pass). Pointer loads
    start at x_ptrs, y_ptrs; TMA loads at descriptor row `row` (varlen: the packed row, the
    sequence's start plus the tile's row in it). x0, x1, y0, y1: [BLOCK, D0], [BLOCK, D1]
    (x1 = x0, y1 = y0 without tile 1).

    Pointer loads: rows past the sequence (MASKED, rows_ok False) and lanes past D (MASK_D0)
    read 0. TMA loads read the same values (the launcher takes them only where D >= D0): rows
    past the tensor's end (gqa: past Lq or Lk) read 0 from the descriptor. A varlen
    descriptor spans every packed row, so a tile reaching past its sequence would read the
    next sequence's rows, finite or not, and they would reach a result through a product with
    a zero (P @ V, dS @ K, P^T @ dO, dS^T @ Q): 0 * NaN is NaN. So varlen masked tiles (the
    partial last tile, and causal diagonal tiles) take pointer loads, whose masks read 0
    there, unpipelined (the kernels' MASKED_STAGES: pipelined, the later stages' [BLOCK, D]
    pointers stayed live and the sm90 dk/dv pass spilled 380 B instead of 20 at (64, 4, 2));
    full tiles never leave their sequence and take TMA. Two other ways were measured
    on sm90 and dropped (ci/notes_flash.md): zeroing those rows in registers after the load
    cost the dk/dv pass a shared-memory copy of Q and dO and spills; a device-side descriptor
    per sequence, made by every program, cost the forward 10% at 1024-token images (H200)."""
    x0, y0 = _lane_tiles(
        x_ptrs, y_ptrs, x_off0, y_off0, X_desc0, Y_desc0, z, h, row, 0, rows_ok, d0_ok,
        MASKED, TMA and not (IS_VARLEN and MASKED), MASK_D0, BLOCK, HEAD_D0,
    )  # fmt: skip
    x1 = x0
    y1 = y0
    if HAS_D1:
        x1, y1 = _lane_tiles(
            x_ptrs, y_ptrs, x_off1, y_off1, X_desc1, Y_desc1, z, h, row, HEAD_DIM - HEAD_D1,
            rows_ok, d1_ok, MASKED, TMA and not (IS_VARLEN and MASKED), MASK_D1, BLOCK,
            HEAD_D1,
        )  # fmt: skip
    return x0, x1, y0, y1


@triton.jit
def _lane_tiles(
    x_ptrs, y_ptrs, x_off, y_off, X_desc, Y_desc, z, h, row, col, rows_ok, d_ok,
    MASKED: tl.constexpr, TMA: tl.constexpr, MASK_D: tl.constexpr, BLOCK: tl.constexpr,
    WIDTH: tl.constexpr,
):  # fmt: skip
    """One lane tile (columns [col, col + WIDTH)) of both operands of `_pair_tiles`: through
    the descriptors (TMA) or the pointers (base + in-tile offsets, added here: pointer tensors
    formed by the caller were hoisted out of its loop, 64-bit and live). [BLOCK, WIDTH] each."""
    if TMA:
        x = _desc_tile(X_desc, z, h, row, col, BLOCK, WIDTH)
        y = _desc_tile(Y_desc, z, h, row, col, BLOCK, WIDTH)
    else:
        x = _load_tile(x_ptrs + x_off, rows_ok, d_ok, MASKED, MASK_D)
        y = _load_tile(y_ptrs + y_off, rows_ok, d_ok, MASKED, MASK_D)
    return x, y


@triton.jit
def _load_pair(
    x_base, y_base, offs, stride_xr, stride_xd, stride_yr, stride_yd, offs_d0, offs_d1,
    rows_ok, d0_ok, d1_ok, MASK_D0: tl.constexpr, HAS_D1: tl.constexpr,
):  # fmt: skip
    """The two operands a backward program keeps for its whole loop (K and V of its KV block,
    or Q and dO of its query block): rows `offs` from each base, both lane tiles, tile 1's
    overlap with tile 0 zeroed. Returns x0, x1, y0, y1: [BLOCK, D0], [BLOCK, D1] (x1 = x0
    and y1 = y0 when there is no tile 1)."""
    x0 = _load_tile(x_base + offs[:, None] * stride_xr + offs_d0[None, :] * stride_xd,
                    rows_ok, d0_ok, True, MASK_D0)  # fmt: skip
    y0 = _load_tile(y_base + offs[:, None] * stride_yr + offs_d0[None, :] * stride_yd,
                    rows_ok, d0_ok, True, MASK_D0)  # fmt: skip
    x1 = x0
    y1 = y0
    if HAS_D1:
        x1 = _load_tile(x_base + offs[:, None] * stride_xr + offs_d1[None, :] * stride_xd,
                        rows_ok, d1_ok, True, False)  # fmt: skip
        y1 = _load_tile(y_base + offs[:, None] * stride_yr + offs_d1[None, :] * stride_yd,
                        rows_ok, d1_ok, True, False)  # fmt: skip
        x1 = tl.where(d1_ok[None, :], x1, 0.0)
        y1 = tl.where(d1_ok[None, :], y1, 0.0)
    return x0, x1, y0, y1


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
def _query_block_extras(
    Mask, Bias, Flags, z, h, m0, len_q, offs_n, mask_head_div, bias_head_div,
    stride_mz, stride_mh, stride_mm, stride_mn, stride_bz, stride_bh, stride_bm, stride_bn,
    stride_fz, stride_fh, stride_fm, BLOCK_M: tl.constexpr, MASK_BLOCK: tl.constexpr,
):  # fmt: skip
    """Mask, bias and tile-flag pointers of a program over query block m0 (forward, dq): the
    bases at row m0 (column 0) and the in-tile offsets [BLOCK_M, BLOCK_N] of mask and bias.
    Rows past Lq read row Lq - 1 (results discarded), so interior tiles load without masks."""
    m_base = _base(Mask, z, h // mask_head_div, m0, stride_mz, stride_mh, stride_mm)
    b_base = _base(Bias, z, h // bias_head_div, m0, stride_bz, stride_bh, stride_bm)
    f_base = _base(Flags, z, h // mask_head_div, m0 // MASK_BLOCK, stride_fz, stride_fh, stride_fm)
    local = tl.minimum(tl.arange(0, BLOCK_M), len_q - 1 - m0)[:, None]
    m_off = local * stride_mm + offs_n[None, :] * stride_mn
    b_off = local * stride_bm + offs_n[None, :] * stride_bn
    return m_base, b_base, f_base, m_off, b_off


@triton.jit
def _tile_active(flag_ptr, HAS_MASK: tl.constexpr):
    """False when the host's tile summary says this tile's mask block is all False."""
    if HAS_MASK:
        active = tl.load(flag_ptr) != 0
    else:
        active = True
    return active


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


__all__ = [
    "AUTOTUNE_KEY",
    "BWD_CONFIGS",
    "FALLBACK_CONFIGS",
    "FWD_AUTOTUNE_KEY",
    "FWD_CONFIGS",
    "INTERPRETER_BLOCK",
    "LN2",
    "LOG2E",
    "fallback_configs",
]
