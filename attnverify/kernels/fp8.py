"""FP8 attention forward (Triton): `fp8_attention`, `prepare_fp8_v` and their host side.

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
  rounded onto the fp8 grid exactly (`_fp8_kernels._round_to_fp8_grid`), because the
  interpreter's cast mis-rounds.

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

Module layout: the @triton.jit code (tile loads, softmax step, `_fp8_fwd_kernel`,
`_transpose_v_kernel`) lives in `attnverify.kernels._fp8_kernels`; this module holds the configs,
autotuning, TMA descriptors, the launch, arch checks and the public functions.

Oracle: `attnverify.reference.fp8.fp8_attention`. Device notes: `ci/notes_fp8.md`.
"""

from __future__ import annotations

import contextlib
import math

import torch
import triton

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # triton without host TMA descriptors: pointer loads only
    TensorDescriptor = None

from attnverify.arch import Arch, current_arch, interpreter_active
from attnverify.kernels import _autotune as autotune_policy
from attnverify.kernels._fp8_kernels import _fp8_fwd_kernel, _transpose_v_kernel
from attnverify.kernels._gate import enforce_verified
from attnverify.validation import FP8_DTYPES, check_fp8_inputs, check_tensor

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
