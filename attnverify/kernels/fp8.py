"""FP8 attention forward (Triton): the kernel behind `attnverify.kernels.fp8_attention`.

Layouts as gqa: q (B, Hq, Lq, D); k, v (B, Hk, Lk, D), any strides, in an fp8 dtype the arch
supports (`float8_e4m3fn`, `float8_e5m2`; `*_fnuz` on gfx94x); Hq = G * Hk, query head h reads
kv head h // G. Descales float32 `()` or `(B, Hk)`: the real value of x is `x.float() * descale`.
Head dims D in [16, 256] with D % 16 == 0. Forward only; out in `out_dtype` (bf16 | fp16), lse
float32 natural log. Causal is bottom-right aligned; rows with no visible key give 0 and -inf.

Numerics (as FlashAttention-3 fp8):
- q_descale * k_descale * scale is folded into the softmax scale (log2 units, exp2);
- the unnormalised probabilities P = exp(s - m) are rounded to V's fp8 dtype before P @ V
  (an fp8 x fp8 tensor-core product); the row sum uses the unrounded P;
- v_descale / row sum multiplies the output tile once, at the end;
- on sm90 the fp8 tensor cores accumulate with reduced precision (scores, hence lse, carry up to
  ~1e-3 of the summands' magnitude, see `QK_ACC_CHUNK`); under the interpreter P is first
  rounded onto the fp8 grid exactly (`_round_to_fp8_grid`), because the interpreter's cast
  mis-rounds.

V layout: on arches whose fp8 tensor-core GEMM needs a K-major B operand (`Arch.fp8_v_k_major`:
NVIDIA Ada/Hopper) V is made sequence-contiguous (`v.stride(-2) == 1`) before the launch, by
`prepare_fp8_v` (a tiled Triton transpose, `_transpose_v_kernel`); elsewhere V keeps its own
strides. The kernel reads every tensor through its strides, so the result does not depend on
the layout V arrives in.

Loads: K and V tiles come through TMA descriptors on NVIDIA sm90+ when their strides are
16-byte aligned (out-of-range rows and columns read 0), else through masked pointer loads.
Programs: a 1-D grid of query blocks; causal runs longest blocks first over all heads.
Configs: a candidate list per kind of launch (`_prune_configs`), autotuned from Lk =
`TUNE_MIN_LK` on, else its first entry; `$ATTNVERIFY_AUTOTUNE` (`attnverify.kernels._autotune`)
0 pins the first entry and rotate one entry per key (the verifier's policy).

Head dims that are not a power of two are split into two power-of-two column chunks, never
padded to the next power of two: D = 80 -> 64 + 32 (16 lanes masked), 96 -> 64 + 32,
144 -> 128 + 32. Chunks are at least 32 wide (the K minimum of an fp8 dot).

Oracle: `attnverify.reference.fp8.fp8_attention`. Device notes: `ci/notes_fp8.md`.
"""

from __future__ import annotations

import contextlib
import math

import torch
import triton
import triton.language as tl

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # triton without host TMA descriptors: pointer loads only
    TensorDescriptor = None

from attnverify.arch import Arch, current_arch, interpreter_active
from attnverify.kernels import _autotune as autotune_policy
from attnverify.kernels._gate import enforce_verified
from attnverify.validation import FP8_DTYPES, check_fp8_inputs, check_tensor

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
HEAD_DIM_MULTIPLE = 16
MIN_DOT_K = 32
# Not torch.finfo(dtype).eps: torch reports 2^-3 for float8_e5m2fnuz.
FP8_MANTISSA_BITS = {
    torch.float8_e4m3fn: 3,
    torch.float8_e4m3fnuz: 3,
    torch.float8_e5m2: 2,
    torch.float8_e5m2fnuz: 2,
}


def _set_block_shapes(nargs: dict) -> None:
    """Config pre-hook: TMA block shapes [1, 1, BLOCK_N, BLOCK_D] (V K-major: BLOCK_D, BLOCK_N)."""
    bn = nargs["BLOCK_N"]
    for name, width in (("k_desc0", nargs["BLOCK_D0"]), ("k_desc1", nargs["BLOCK_D1"])):
        if nargs[name] is not None:
            nargs[name].block_shape = [1, 1, bn, width]
    for name, width in (("v_desc0", nargs["BLOCK_D0"]), ("v_desc1", nargs["BLOCK_D1"])):
        if nargs[name] is not None:
            nargs[name].block_shape = (
                [1, 1, width, bn] if nargs["V_SEQ_CONTIG"] else [1, 1, bn, width]
            )


def _config(
    block_m: int, block_n: int, warps: int, stages: int, *, maxnreg: int | None = None
) -> triton.Config:
    """A launch config: tile sizes, warps, pipeline stages and a register cap per thread
    (`maxnreg`: more programs per SM)."""
    return triton.Config(
        {"BLOCK_M": block_m, "BLOCK_N": block_n},
        num_warps=warps,
        num_stages=stages,
        maxnreg=maxnreg,
        pre_hook=_set_block_shapes,
    )


# The interpreter runs one small pinned config (CPU time grows with the tile size).
INTERPRETER_CONFIG = _config(32, 32, 4, 1)
# Candidates per kind of launch, best first (the first is the untuned default below
# `TUNE_MIN_LK`); measured at the bench shape on an H200 (ci/notes_fp8.md). BLOCK_M 64 with 4
# warps fits two programs per SM, three with maxnreg 168.
TMA_CONFIGS = [
    _config(128, 128, 4, 3),
    _config(64, 128, 4, 3),
    _config(64, 128, 4, 2, maxnreg=168),
    _config(64, 64, 4, 3, maxnreg=168),
]
TMA_CAUSAL_CONFIGS = [
    _config(64, 128, 4, 3),
    _config(128, 128, 8, 3),
    _config(64, 64, 4, 3),
    _config(64, 128, 4, 2, maxnreg=168),
]
POINTER_CONFIGS = [
    _config(128, 64, 4, 3),
    _config(128, 64, 4, 4),
    _config(128, 128, 8, 3),
    _config(64, 128, 4, 3),
]
# Padded head dims over 128: 8 warps, 64-key tiles, 3 stages (registers, shared memory).
WIDE_CONFIGS = [_config(128, 64, 8, 3)]
GPU_CONFIGS = TMA_CONFIGS + TMA_CAUSAL_CONFIGS + POINTER_CONFIGS + WIDE_CONFIGS
# Tuned per head dim, causality, load path, V layout (K-major V pipelines differently),
# accumulation precision and Lk's power of two up to 16384 (`lk_bucket`, an argument the kernel
# does not read): a config tuned on a short first call is not reused for long sequences.
AUTOTUNE_KEY = ["HEAD_DIM", "IS_CAUSAL", "USE_TMA", "V_SEQ_CONTIG", "QK_ACC_CHUNK", "lk_bucket"]
# Shorter key ranges launch the first config `_prune_configs` keeps, untuned: tuning gains little
# there, and every new autotune key compiles every config (the verifier draws hundreds of keys).
TUNE_MIN_LK = 2048
# Tile of `_transpose_v_kernel` (sequence x head dim, bytes).
TRANSPOSE_BLOCK_L = 128
TRANSPOSE_BLOCK_D = 64

# Accumulation precision of Q K^T on sm90 (Triton's max_num_imprecise_acc; ignored elsewhere).
# Hopper's fp8 MMA adds products with reduced precision, so scores (hence lse) carry ~1e-4..1e-3
# relative error. Promoting to fp32 after every QK_ACC_CHUNK products only helps partly, since
# each 32-product MMA step is itself imprecise; measured on an H200 (ci/notes_fp8.md): 0 (the
# hardware default) 777 TFLOP/s, lse error 46x the fp32 baseline's (median over a random
# sweep); 32: 602 TFLOP/s, 20x.
QK_ACC_CHUNK = 0


def _prune_configs(configs: list[triton.Config], named_args: dict, **kwargs: object) -> list:
    """The candidate list for this launch: `WIDE_CONFIGS` for padded head dims over 128, else
    by load path and causality (`configs`, the autotuner's full list, is not needed)."""
    padded = kwargs["BLOCK_D0"] + (kwargs["BLOCK_D1"] if kwargs["HAS_D1"] else 0)
    if padded > 128:
        return WIDE_CONFIGS
    if not kwargs["USE_TMA"]:
        return POINTER_CONFIGS
    return TMA_CAUSAL_CONFIGS if kwargs["IS_CAUSAL"] else TMA_CONFIGS


def split_head_dim(head_dim: int) -> tuple[int, int]:
    """Column chunks (BLOCK_D0, BLOCK_D1) covering D: powers of two >= 32, BLOCK_D1 = 0 if unused.

    BLOCK_D0 is the largest power of two <= D (at least 32); the rest, if any, is rounded up to
    a power of two >= 32. From D = 64 up the waste is at most 23% (D = 208 -> 128 + 128),
    against up to 78% for padding to the next power of two; D = 16 and 48 pad to 32 and 64
    (the fp8 dot's minimum K is 32).
    """
    d0 = max(MIN_DOT_K, 1 << (head_dim.bit_length() - 1))
    rest = head_dim - d0
    d1 = 0 if rest <= 0 else max(MIN_DOT_K, triton.next_power_of_2(rest))
    return d0, d1


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


_fp8_fwd_tuned = triton.autotune(
    configs=GPU_CONFIGS,
    key=AUTOTUNE_KEY,
    prune_configs_by={"early_config_prune": _prune_configs},
)(_fp8_fwd_kernel)


def _descale_strides(descale: torch.Tensor) -> tuple[int, int]:
    return (descale.stride(0), descale.stride(1)) if descale.dim() == 2 else (0, 0)


def _tma_aligned(x: torch.Tensor, contiguous_dim: int) -> bool:
    """TMA can address x: unit stride in `contiguous_dim`, other strides and base 16-byte aligned."""
    others = [st for i, st in enumerate(x.stride()) if i != contiguous_dim % x.dim()]
    return (
        x.stride(contiguous_dim) == 1
        and all(st % 16 == 0 for st in others)
        and x.data_ptr() % 16 == 0
        and min(x.shape) > 0
    )


def _tma_eligible(k: torch.Tensor, v: torch.Tensor, arch: Arch) -> bool:
    """TMA loads for K and V: NVIDIA sm90+, aligned strides, and V K-major unless sm100+."""
    if TensorDescriptor is None or interpreter_active() or arch.vendor != "nvidia":
        return False
    if arch.capability < (9, 0) or not _tma_aligned(k, -1):
        return False
    return _tma_aligned(v, -2) or (arch.capability >= (10, 0) and _tma_aligned(v, -1))


def _kv_descriptors(k: torch.Tensor, v: torch.Tensor, has_d1: bool) -> list:
    """Host TMA descriptors over (B, Hk, Lk, D) K and V (V as (B, Hk, D, Lk) if K-major).

    Block shapes are placeholders until `_set_block_shapes` runs for the chosen config.
    """
    if v.stride(-2) == 1:
        v_shape = [*v.shape[:2], v.shape[3], v.shape[2]]
        v_strides = [v.stride(0), v.stride(1), v.stride(3), 1]
    else:
        v_shape, v_strides = list(v.shape), list(v.stride())
    descs = []
    for chunk in (0, 1):
        if chunk == 1 and not has_d1:
            descs += [None, None]
            continue
        descs.append(TensorDescriptor(k, list(k.shape), list(k.stride()), [1, 1, 16, 16]))
        descs.append(TensorDescriptor(v, v_shape, v_strides, [1, 1, 16, 16]))
    k0, v0, k1, v1 = descs
    return [k0, k1, v0, v1]


def _launch_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_descale: torch.Tensor,
    k_descale: torch.Tensor,
    v_descale: torch.Tensor,
    scale: float,
    causal: bool,
    out_dtype: torch.dtype,
    return_lse: bool,
    *,
    arch: Arch | None = None,
    config: triton.Config | None = None,
    use_tma: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Allocate out (B, Hq, Lq, D) and lse (B, Hq, Lq), launch.

    `config` pins a config (default: autotuned on GPU from Lk = `TUNE_MIN_LK` on, else the
    first config `_prune_configs` keeps; `$ATTNVERIFY_AUTOTUNE` 0 / rotate pick one config as
    `attnverify.kernels._autotune` says; `INTERPRETER_CONFIG`
    under the interpreter); `use_tma` forces TMA loads on or off (default: where `_tma_eligible`).
    """
    b, hq, lq, d = q.shape
    hk, lk = k.shape[1], k.shape[2]
    out = torch.empty((b, hq, lq, d), dtype=out_dtype, device=q.device)
    lse = torch.empty((b, hq, lq), dtype=torch.float32, device=q.device) if return_lse else None
    if out.numel() == 0:
        return out, lse
    if use_tma is None:
        use_tma = _tma_eligible(k, v, arch if arch is not None else current_arch(q.device))
    d0, d1 = split_head_dim(d)
    descs = _kv_descriptors(k, v, d1 > 0) if use_tma else [None] * 4
    lse_arg = lse if lse is not None else out
    lse_strides = (lse.stride(0), lse.stride(1)) if lse is not None else (0, 0)
    args = (
        q, k, v, out, lse_arg, q_descale, k_descale, v_descale, *descs,
        *q.stride(), *k.stride(), *v.stride(), *out.stride()[:3], *lse_strides,
        *_descale_strides(q_descale), *_descale_strides(k_descale), *_descale_strides(v_descale),
        lq, lk, hq, hq // hk, scale, min(max(lk, 1), 16384).bit_length(),
    )  # fmt: skip
    meta = {
        "HEAD_DIM": d,
        "BLOCK_D0": d0,
        "BLOCK_D1": max(d1, MIN_DOT_K),
        "HAS_D1": d1 > 0,
        "IS_CAUSAL": causal,
        "USE_TMA": use_tma,
        "V_SEQ_CONTIG": v.stride(-2) == 1,
        "STORE_LSE": return_lse,
        # P's fp8 format (V's dtype): mantissa bits and the exponent of its smallest normal.
        "EXACT_P_ROUNDING": interpreter_active(),
        "P_MANT": FP8_MANTISSA_BITS[v.dtype],
        "P_MIN_EXP": round(math.log2(torch.finfo(v.dtype).tiny)),
        # at most the K of each Q K^T dot (the chunk widths)
        "QK_ACC_CHUNK": min(QK_ACC_CHUNK, d0, d1 or d0),
    }
    if config is None and interpreter_active():
        config = INTERPRETER_CONFIG
    if config is None and (lk < TUNE_MIN_LK or autotune_policy.policy() != "1"):
        key = (d, causal, use_tma, meta["V_SEQ_CONTIG"], return_lse, str(q.dtype), str(v.dtype))
        config = autotune_policy.select(_prune_configs(GPU_CONFIGS, {}, **meta), key)[0]
    # Launch on q's GPU (the current device may be another one).
    with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
        if config is None:
            grid = lambda m: (triton.cdiv(lq, m["BLOCK_M"]) * hq * b,)
            _fp8_fwd_tuned[grid](*args, **meta)
        else:
            names = ("k_desc0", "k_desc1", "v_desc0", "v_desc1")
            _set_block_shapes({**dict(zip(names, descs, strict=True)), **meta, **config.kwargs})
            grid = (triton.cdiv(lq, config.kwargs["BLOCK_M"]) * hq * b,)
            _fp8_fwd_kernel[grid](
                *args, **meta, **config.kwargs, num_warps=config.num_warps,
                num_stages=config.num_stages, maxnreg=config.maxnreg,
            )  # fmt: skip
    return out, lse


def _check_arch(arch: Arch, named: tuple[tuple[str, torch.Tensor], ...]) -> None:
    """Raise TypeError unless `arch` has fp8 matrix units taking every tensor's dtype."""
    if not arch.has_fp8:
        raise TypeError(
            f"fp8 attention is not supported on arch {arch.name}: it has no fp8 matrix units "
            f"(supported fp8 dtypes: {arch.fp8_dtype_names()}); use gqa_attention with "
            "float16/bfloat16 inputs"
        )
    for name, x in named:
        if x.dtype not in arch.fp8_dtypes:
            raise TypeError(
                f"{name} has dtype {str(x.dtype).removeprefix('torch.')}, which arch {arch.name} "
                f"does not support; supported fp8 dtypes on {arch.name}: {arch.fp8_dtype_names()}"
            )


def _v_for_arch(v: torch.Tensor, arch: Arch) -> torch.Tensor:
    if not arch.fp8_v_k_major or v.stride(-2) == 1:
        return v
    # (B, Hk, D, Lk_pitch) in memory, Lk_pitch = Lk rounded up to 16 (TMA-aligned rows),
    # returned as the (B, Hk, Lk, D) view: v.stride(-2) == 1.
    b, hk, lk, d = v.shape
    buf = torch.empty((b, hk, d, -(-lk // 16) * 16), dtype=v.dtype, device=v.device)
    vt = buf[..., :lk]
    if v.numel() == 0 or not (v.is_cuda or interpreter_active()):
        vt.copy_(v.transpose(-1, -2))
    else:
        # A tiled Triton transpose runs near copy bandwidth; torch's strided fp8 copy does not.
        x, y = v.view(torch.uint8), buf.view(torch.uint8)
        block_d = min(TRANSPOSE_BLOCK_D, triton.next_power_of_2(d))
        grid = (b * hk, triton.cdiv(lk, TRANSPOSE_BLOCK_L), triton.cdiv(d, block_d))
        with torch.cuda.device(v.device) if v.is_cuda else contextlib.nullcontext():
            _transpose_v_kernel[grid](
                x, y, hk, lk, *x.stride(), *y.stride()[:3], HEAD_DIM=d,
                BLOCK_L=TRANSPOSE_BLOCK_L, BLOCK_D=block_d,
            )  # fmt: skip
    return vt.transpose(-1, -2)


def prepare_fp8_v(v: torch.Tensor) -> torch.Tensor:
    """Return V in the memory layout the current arch's fp8 P @ V wants; pay the copy once.

    On arches whose fp8 tensor-core GEMM needs a K-major B operand (`Arch.fp8_v_k_major`: NVIDIA
    sm89 <= cc < sm100) that is sequence-contiguous V: the result is a (B, Hk, Lk, D) view of a
    (B, Hk, D, Lk) contiguous tensor, `v.stride(-2) == 1`. Where V already has
    `v.stride(-2) == 1`, or the arch needs no particular layout (sm100+, AMD, the interpreter),
    `v` itself is returned (no copy). `fp8_attention` calls this on every V it gets, so a caller
    holding a KV cache calls it once and passes the result.

    Args:
        v: (B, Hk, Lk, D) fp8 (a dtype the arch supports), any strides.

    Returns:
        (B, Hk, Lk, D) tensor with the values of `v`: `v` itself or a sequence-contiguous copy.

    Raises:
        TypeError: `v` is not a 4-D fp8 tensor, or the arch lacks fp8 / this fp8 dtype.
    """
    check_tensor("v", v, 4, FP8_DTYPES)
    arch = current_arch(v.device)
    _check_arch(arch, (("v", v),))
    return _v_for_arch(v, arch)


def fp8_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_descale: torch.Tensor,
    k_descale: torch.Tensor,
    v_descale: torch.Tensor,
    *,
    causal: bool = False,
    scale: float | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention on fp8 inputs with descales: softmax(scale * (q dq)(k dk)^T) (v dv). Forward only.

    Causal is bottom-right aligned: query i sees key j iff j <= i + Lk - Lq, e.g. Lq=2, Lk=4::

        q0: x x x .
        q1: x x x x

    GQA: Hq = G * Hk; query head h reads kv head h // G, and a (B, Hk) q_descale is read by
    query head h at [b, h // G]. The real value of an fp8 tensor is `x.float() * descale`.
    q_descale * k_descale * scale is folded into the softmax scale; the probabilities are rounded
    to V's fp8 dtype before the fp8 P @ V product (FlashAttention-3's numerics; the verifier's
    fp8 baseline does the same); v_descale scales the output. On Ada/Hopper V is first made
    sequence-contiguous (`prepare_fp8_v`; pass a prepared V to skip the copy); the result does
    not depend on V's layout.

    Args:
        q: (B, Hq, Lq, D) float8_e4m3fn | float8_e5m2 (float8_e4m3fnuz | float8_e5m2fnuz on
            gfx94x): a dtype of `current_arch().fp8_dtypes`. D in [16, 256], D % 16 == 0.
        k, v: (B, Hk, Lk, D), fp8 dtypes of the arch (may differ from q's). Any strides.
        q_descale, k_descale, v_descale: float32 of shape () or (B, Hk).
        causal: bottom-right causal mask.
        scale: multiplies the dequantized q.k; default 1 / sqrt(D).
        out_dtype: bfloat16 | float16.
        return_lse: also return the logsumexp of each row.

    Returns:
        out (B, Hq, Lq, D) in out_dtype; with return_lse also lse (B, Hq, Lq) float32, natural
        log. Rows with no visible key (Lk = 0, or causal rows i < Lq - Lk) give out 0, lse -inf.

    Raises:
        TypeError, ValueError: bad shapes, dtypes, descales, head dim or out_dtype; an arch
            without fp8 or without one of the input dtypes (the message lists the arch's dtypes).
        UnverifiedKernelError: ATTNVERIFY_REQUIRE_VERIFIED=1 and no verification record for this
            kernel source on this device (the message names the `attnverify verify` command).
    """
    scale = check_fp8_inputs(
        q, k, v, q_descale, k_descale, v_descale, scale, out_dtype, HEAD_DIM_MULTIPLE
    )
    arch = current_arch(q.device)
    _check_arch(arch, (("q", q), ("k", k), ("v", v)))
    enforce_verified("fp8", q.device)
    out, lse = _launch_fwd(
        q, k, _v_for_arch(v, arch), q_descale, k_descale, v_descale, scale, causal, out_dtype,
        return_lse, arch=arch,
    )  # fmt: skip
    return (out, lse) if return_lse else out


__all__ = ["fp8_attention", "prepare_fp8_v", "split_head_dim"]
