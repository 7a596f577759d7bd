"""Flash core, shared part: launch configs and the `@triton.jit` tile helpers of every pass.

The forward (`_flash_fwd.py`) and the backward (`_flash_bwd.py`) kernels are built from these
helpers; the schedules they walk (varlen plans, block-sparse tile lists) come from
`_flash_plan.py`. Conventions, shared by all of them:
- Every tensor is read as (z, h, row, d) with explicit strides (varlen: z stride 0, row offset
  from the plan); 64-bit base offsets, 32-bit in-tile offsets.
- Row/head/batch strides of q, k, v, out and the gradients reach the kernels divided by ALIGN
  (when they allow it), so the compiler knows every row is 16-byte aligned (D = 72 vectorizes).
- Head dim: tile 0 covers lanes [0, D0), tile 1 (HAS_D1) the power-of-two tile ending at D; the
  overlap is zeroed in one operand and never stored (`_common.HeadDimSplit`).
- Scores in base 2 (`exp2`, pre-multiplied by LOG2E); lse stored in natural log.
"""

from __future__ import annotations

import functools

import triton
import triton.language as tl

from attnverify.arch import interpreter_active
from attnverify.kernels import _autotune as autotune_policy

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
AUTOTUNE_ENV = autotune_policy.ENV  # "0": the first surviving config; "rotate": one per key
INTERPRETER_BLOCK = 32
SMEM_BUDGET = 200 * 1024  # when the device cannot be asked (interpreter)

# (BLOCK_INNER, num_warps, num_stages) candidates per pass
FWD_CONFIGS = ((128, 8, 3), (64, 4, 3), (128, 4, 2), (64, 8, 2), (128, 8, 4))  # last: small D
BWD_CONFIGS = ((32, 4, 5), (64, 8, 3), (32, 8, 3), (64, 4, 2))
FALLBACK_CONFIGS = [
    triton.Config({"BLOCK_INNER": b}, num_warps=4, num_stages=s)
    for b, s in ((32, 2), (32, 1), (16, 1))
]
AUTOTUNE_KEY = ["HEAD_DIM", "IS_CAUSAL", "HAS_MASK", "HAS_BIAS", "IS_VARLEN", "BLOCK_OUTER"]

# Lengths, group and head divisors, sequence counts and the lse / tile-list strides vary per
# call and gain nothing from specialisation: one compile serves them all (the verifier draws
# hundreds of shapes; each specialisation is a compile per autotune config).
VARYING = [
    "seqlen_q",
    "seqlen_k",
    "num_seqs",
    "search_top",
    "group",
    "mask_head_div",
    "bias_head_div",
    "stride_lz",
    "stride_lh",
    "stride_tz",
    "stride_th",
    "stride_to",
]


def candidates(gpu: tuple[tuple[int, int, int], ...]) -> list[triton.Config]:
    """Autotune candidates from (BLOCK_INNER, num_warps, num_stages); one under the interpreter."""
    if interpreter_active():
        return [triton.Config({"BLOCK_INNER": INTERPRETER_BLOCK}, num_warps=4, num_stages=1)]
    return [triton.Config({"BLOCK_INNER": b}, num_warps=w, num_stages=s) for b, w, s in gpu]


@functools.cache
def smem_limit(device_index: int) -> int:
    """Shared memory one program may use on a CUDA/HIP device (227 KiB on H100/H200)."""
    props = triton.runtime.driver.active.utils.get_device_properties(device_index)
    return props["max_shared_mem"]


def smem_estimate(config: triton.Config, args: dict) -> int:
    """Shared memory of a pass under `config`, bytes: the pipelined inner tiles (K, V or Q,
    dO) per stage, the outer tiles kept resident (Q; K and V or Q and dO in the backward), with
    a mask one BLOCK_OUTER x BLOCK_INNER byte tile, and in the backward with a bias one such
    tile of the bias. Checked against sm90 compiles (bf16, D in 72/128/256, every config):
    exact for the forward, an upper bound for the backward passes."""
    width = args["HEAD_D0"] + (args["HEAD_D1"] if args["HAS_D1"] else 0)
    elem = args["Q"].element_size()
    inner, outer = config.kwargs["BLOCK_INNER"], args["BLOCK_OUTER"]
    forward = "Out" in args
    resident = 1 if forward else 2
    pipelined = max(config.num_stages, 1) * 2 * inner * width * elem
    mask = outer * inner if args["HAS_MASK"] else 0
    bias = outer * inner * args["Bias"].element_size() if args["HAS_BIAS"] and not forward else 0
    return pipelined + resident * outer * width * elem + mask + bias


def prune(configs: list[triton.Config], named_args: dict, **kwargs: object) -> list:
    """Drop configs whose tiles cannot fit in the device's shared memory, then apply the
    `$ATTNVERIFY_AUTOTUNE` policy (`kernels._autotune`: all, the first, or one per key)."""
    args = {**named_args, **kwargs}
    q = args["Q"]
    limit = smem_limit(q.device.index or 0) if q.is_cuda else SMEM_BUDGET
    kept = [c for c in configs if smem_estimate(c, args) <= limit]
    if not kept:
        kept = [c for c in FALLBACK_CONFIGS if smem_estimate(c, args) <= limit]
        kept = kept or FALLBACK_CONFIGS[-1:]
    passes = ("Out", "DK", "DQ")
    key = (*(args[k] for k in AUTOTUNE_KEY), args.get("DBIAS_MODE"), str(q.dtype),
           next(p for p in passes if p in args))  # fmt: skip
    return autotune_policy.select(kept, key)


def autotuned(kernel: triton.JITFunction, gpu: tuple, key: list[str]) -> triton.runtime.Autotuner:
    """`kernel` autotuned over `gpu` configs (smem-pruned) on `key`."""
    return triton.autotune(candidates(gpu), key, prune_configs_by={"early_config_prune": prune})(
        kernel
    )


# ------------------------------------------------------------------ jit helpers


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
def _work_item(Work, pid, seqlen_q, seqlen_k, num_seqs, search_top, IS_VARLEN: tl.constexpr):
    """(start_q, len_q, start_k, len_k, block) of program `pid`.

    varlen: `Work` is a plan from `_flash_plan.varlen_plan` (row r: first item, start_q, len_q,
    start_k, len_k of the r-th heaviest sequence; row N: the item count). The sequence of item
    `pid` is the last row whose first item is <= pid (a branch-free binary search, `search_top`
    the largest power of two <= N); items past the count get empty lengths (no work, no stores).
    """
    if IS_VARLEN:
        j = pid * 0
        step = search_top
        while step > 0:
            cand = j + step
            first = tl.load(Work + tl.minimum(cand, num_seqs - 1) * 5)
            j = tl.where((cand < num_seqs) & (first <= pid), cand, j)
            step = step // 2
        w = Work + j * 5
        live = pid < tl.load(Work + num_seqs * 5)
        blk = pid - tl.load(w)
        start_q = tl.load(w + 1)
        len_q = tl.where(live, tl.load(w + 2), 0)
        start_k = tl.load(w + 3)
        len_k = tl.where(live, tl.load(w + 4), 0)
    else:
        start_q = pid * 0
        len_q = seqlen_q + start_q
        start_k = start_q
        len_k = seqlen_k + start_q
        blk = pid
    return start_q, len_q, start_k, len_k, blk


@triton.jit
def _tile_lists(Tiles, z, h, outer, stride_tz, stride_th, stride_to, HAS_MASK: tl.constexpr):
    """Pointer to the tile list of one outer block and its (full, partial) counts.

    A list row (`_flash_plan.mask_tile_lists`) is [n_full, n_partial, entries...]: full tiles
    (mask all True, in range, causally visible: no mask load, no bounds) from the front,
    partial ones from the back. Without a mask: a dummy pointer and zero counts.
    """
    if HAS_MASK:
        row = _base(Tiles, z, h, outer, stride_tz, stride_th, stride_to)
        n_full = tl.load(row)
        n_part = tl.load(row + 1)
        entries = row + 2  # _flash_plan.LIST_HEADER
    else:
        entries = Tiles
        n_full = outer * 0
        n_part = n_full
    return entries, n_full, n_part


@triton.jit
def _tile_start(i, entries, n_entries, LISTED: tl.constexpr, FROM_END: tl.constexpr,
                BLOCK: tl.constexpr, MASK_BLOCK: tl.constexpr):  # fmt: skip
    """First row (or key) of the i-th BLOCK-sized tile of a loop: i * BLOCK, or (LISTED) the
    i-th BLOCK-sized piece of the listed MASK_BLOCK tiles (read from the end with FROM_END)."""
    if LISTED:
        SUB: tl.constexpr = MASK_BLOCK // BLOCK
        j = i // SUB
        if FROM_END:
            j = n_entries - 1 - j
        start = tl.load(entries + j) * MASK_BLOCK + (i % SUB) * BLOCK
    else:
        start = i * BLOCK
    return start


@triton.jit
def _load_split(ptrs0, ptrs1, rows_ok, d0_ok, d1_ok, MASK_ROWS: tl.constexpr,
                MASK_D0: tl.constexpr, HAS_D1: tl.constexpr, ZERO_OVERLAP: tl.constexpr):  # fmt: skip
    """Both head-dim tiles of a row block ([R, D0], [R, D1]; tile 1 = tile 0 without D1).
    ZERO_OVERLAP zeroes tile 1's lanes shared with tile 0 (do it in one operand per product)."""
    if MASK_ROWS:
        if MASK_D0:
            x0 = tl.load(ptrs0, mask=rows_ok[:, None] & d0_ok[None, :], other=0.0)
        else:
            x0 = tl.load(ptrs0, mask=rows_ok[:, None], other=0.0)
    elif MASK_D0:
        x0 = tl.load(ptrs0, mask=d0_ok[None, :], other=0.0)
    else:
        x0 = tl.load(ptrs0)
    x1 = x0
    if HAS_D1:
        if MASK_ROWS:
            x1 = tl.load(ptrs1, mask=rows_ok[:, None], other=0.0)
        else:
            x1 = tl.load(ptrs1)
        if ZERO_OVERLAP:
            x1 = tl.where(d1_ok[None, :], x1, 0.0)
    return x0, x1


@triton.jit
def _scores(
    q0, q1, k0, k1, rows, cols, len_q, len_k, causal_shift, qk_scale,
    mask_ptrs, bias_ptrs,
    MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_D1: tl.constexpr, DOT_PREC: tl.constexpr,
):  # fmt: skip
    """Scores in base 2: (q.k * scale + bias) * LOG2E, -inf where hidden. [BLOCK_M, BLOCK_N]

    MASKED: bounds, causal and mask applied; else the tile is known fully visible (interior,
    or listed full by the mask summary) and no mask is read.
    """
    # [BLOCK_M, BLOCK_N]
    s = tl.dot(q0, tl.trans(k0), input_precision=DOT_PREC)
    if HAS_D1:
        s += tl.dot(q1, tl.trans(k1), input_precision=DOT_PREC)
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
    return s


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


@triton.jit
def _row_loops(m0, len_q, len_k, entries, n_full_listed, n_part_listed,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MASK_BLOCK: tl.constexpr,
               IS_CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr):  # fmt: skip
    """Trip counts of the two KV loops of a query block (forward, dq pass): unmasked tiles
    [0, a), then masked tiles [a, b). With a mask both loops walk the block's tile lists."""
    if HAS_MASK:
        SUB: tl.constexpr = MASK_BLOCK // BLOCK_N
        a = n_full_listed * SUB
        lo2 = a * 0
        b = n_part_listed * SUB
    else:
        n_full, n_end = _row_range(m0, len_q, len_k, BLOCK_M, BLOCK_N, IS_CAUSAL)
        a = n_full // BLOCK_N
        lo2 = a
        b = (n_end + BLOCK_N - 1) // BLOCK_N
    return a, lo2, b


@triton.jit
def _col_loops(n0, len_q, len_k, n_full_listed, n_part_listed,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MASK_BLOCK: tl.constexpr,
               IS_CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr):  # fmt: skip
    """Query-tile ranges of a KV block (dk/dv pass), in BLOCK_M tiles: masked [lo, a),
    unmasked [a, b), masked [b, c) — the last two walk the tile lists when there is a mask
    (then [lo, a) is empty and [b, c) starts at 0)."""
    if HAS_MASK:
        SUB: tl.constexpr = MASK_BLOCK // BLOCK_M
        lo = n0 * 0
        a = lo
        b = n_full_listed * SUB
        b2 = lo
        c = n_part_listed * SUB
    else:
        m_end = (len_q + BLOCK_M - 1) // BLOCK_M * BLOCK_M
        if IS_CAUSAL:
            shift = len_k - len_q
            m_lo = tl.maximum(n0 - shift, 0) // BLOCK_M * BLOCK_M
            first_full = (tl.maximum(n0 + BLOCK_N - 1 - shift, 0) + BLOCK_M - 1) // BLOCK_M
            a_row = tl.minimum(tl.maximum(first_full * BLOCK_M, m_lo), m_end)
        else:
            m_lo = n0 * 0
            a_row = m_lo
        full_end = len_q // BLOCK_M * BLOCK_M
        if n0 + BLOCK_N > len_k:
            full_end = a_row
        b_row = tl.maximum(a_row, full_end)
        lo = m_lo // BLOCK_M
        a = a_row // BLOCK_M
        b = b_row // BLOCK_M
        b2 = b
        c = m_end // BLOCK_M
    return lo, a, b, b2, c
