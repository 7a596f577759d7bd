"""Input validation shared by the oracles (`attnverify.reference`) and the kernels.

Every public entry point calls one `check_<variant>_inputs` function before doing any work, so
bad input raises the same `ValueError` / `TypeError` from both layers, before any launch. A
message names the argument, what was expected and what came.

Imports torch only. Checks that need values (cu_seqlens, seq_lens, block ids) read them once
on the host; that is one synchronisation per call, the price of never computing on bad input.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
ORACLE_DTYPES = (*FLOAT_DTYPES, torch.float64)
FP8_DTYPES = (
    torch.float8_e4m3fn,
    torch.float8_e5m2,
    torch.float8_e4m3fnuz,
    torch.float8_e5m2fnuz,
)
OUT_DTYPES = (torch.bfloat16, torch.float16)
KV_LAYOUTS = ("NHD", "HND")
MAX_HEAD_DIM = 256
HEAD_DIM_MULTIPLE = 8


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _names(dtypes: Sequence[torch.dtype]) -> str:
    return ", ".join(_name(d) for d in dtypes)


def _describe(x: torch.Tensor) -> str:
    return f"{_name(x.dtype)} of shape {tuple(x.shape)} on {x.device}"


def check_tensor(name: str, x: object, ndim: int, dtypes: Sequence[torch.dtype]) -> torch.Tensor:
    """Check that `x` is a tensor of rank `ndim` with a dtype in `dtypes`."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(
            f"{name} must be {ndim}-D; got {x.dim()}-D tensor of shape {tuple(x.shape)}"
        )
    if x.dtype not in dtypes:
        if x.dtype in FP8_DTYPES and not set(dtypes) & set(FP8_DTYPES):
            hint = "; fp8 inputs go to fp8_attention (or a paged fp8 cache)"
        elif x.dtype not in FP8_DTYPES and set(dtypes) <= set(FP8_DTYPES):
            hint = "; non-fp8 inputs go to gqa_attention"
        else:
            hint = ""
        raise TypeError(f"{name} must have dtype in ({_names(dtypes)}); got {_name(x.dtype)}{hint}")
    return x


def check_same(names: Sequence[str], tensors: Sequence[torch.Tensor], what: str) -> None:
    """Check that tensors agree on `what` ("dtype" or "device")."""
    values = [getattr(t, what) for t in tensors]
    if any(v != values[0] for v in values[1:]):
        got = ", ".join(f"{n}={v}" for n, v in zip(names, values, strict=True))
        raise ValueError(f"{', '.join(names)} must share one {what}; got {got}")


def check_head_dim(name: str, head_dim: int, multiple: int = HEAD_DIM_MULTIPLE) -> None:
    """Check 8 <= D <= 256 and D % multiple == 0."""
    if not (multiple <= head_dim <= MAX_HEAD_DIM and head_dim % multiple == 0):
        raise ValueError(
            f"{name} head dim D must be in [{multiple}, {MAX_HEAD_DIM}] with D % {multiple} == 0; "
            f"got D={head_dim}"
        )


def check_heads(hq: int, hk: int, hk_name: str = "k") -> int:
    """Check Hq % Hk == 0 and return the group size G = Hq // Hk."""
    if hk < 1 or hq % hk != 0:
        raise ValueError(
            f"query heads Hq={hq} must be a multiple of kv heads Hk={hk} (from {hk_name}); "
            "GQA maps query head h to kv head h // (Hq // Hk)"
        )
    return hq // hk


def resolve_scale(scale: float | None, head_dim: int) -> float:
    """Default `scale` to 1/sqrt(D) (the caller's D); reject non-finite values."""
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1 or not scale.is_floating_point():
            raise ValueError(
                f"scale must be a finite float or None (1/sqrt(D)); got {_describe(scale)}"
            )
        scale = float(scale)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite float or None (1/sqrt(D)); got {scale!r}")
    return float(scale)


def _check_qkv(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ndim: int, dtypes: Sequence[torch.dtype]
) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, x, ndim, dtypes)
    check_same(("q", "k", "v"), (q, k, v), "device")
    if q.dtype not in FP8_DTYPES:
        check_same(("q", "k", "v"), (q, k, v), "dtype")
    if not (q.shape[-1] == k.shape[-1] == v.shape[-1]):
        raise ValueError(
            "q, k, v must share the head dim D (last dim); got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if k.shape != v.shape:
        raise ValueError(
            f"k and v must have the same shape; got k {tuple(k.shape)}, v {tuple(v.shape)}"
        )


# ---------------------------------------------------------------- varlen


@dataclass(frozen=True)
class VarlenMeta:
    """What `check_varlen_inputs` resolved: scale, maxima and per-sequence lengths (host ints)."""

    scale: float
    max_seqlen_q: int
    max_seqlen_k: int
    seqlens_q: tuple[int, ...]
    seqlens_k: tuple[int, ...]


def _cu_expectation(name: str, total: int) -> str:
    return (
        f"{name} must be int32 of shape (N+1,) starting at 0, non-decreasing, ending at T={total}"
    )


def _check_cu_tensor(name: str, cu: object, total: int, device: torch.device) -> torch.Tensor:
    """A cu_seqlens tensor's type, dtype, rank and device, q's or the CPU (no values read)."""
    if not isinstance(cu, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(cu).__name__}")
    if cu.dtype != torch.int32 or cu.dim() != 1 or cu.numel() < 1:
        raise ValueError(f"{_cu_expectation(name, total)}; got {_describe(cu)}")
    if cu.device != device and cu.device.type != "cpu":
        raise ValueError(f"{name} must be on q's device ({device}) or on the CPU; got {cu.device}")
    return cu


def _check_cu_values(name: str, values: list[int], total: int) -> list[int]:
    """A cu_seqlens tensor's values: start at 0, non-decreasing, end at `total`."""
    expect = _cu_expectation(name, total)
    if values[0] != 0:
        raise ValueError(f"{expect}; got first entry {values[0]}")
    for i in range(1, len(values)):
        if values[i] < values[i - 1]:
            raise ValueError(f"{expect}; got {values[i - 1]} then {values[i]} at index {i}")
    if values[-1] != total:
        raise ValueError(f"{expect}; got last entry {values[-1]}")
    return values


def _check_max_seqlen(name: str, given: int | None, real: int) -> int:
    """`given` (any integer: int, numpy int, 0-d integer tensor) if >= `real`; None gives `real`."""
    if given is None:
        return real
    try:
        value = None if isinstance(given, bool) else operator.index(given)
    except TypeError:
        value = None
    if value is None or value < real:
        raise ValueError(
            f"{name} must be an int >= the longest sequence ({real}) or None; got {given!r}"
        )
    return value


def check_varlen_layout(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    dtypes: Sequence[torch.dtype] = FLOAT_DTYPES,
) -> None:
    """The checks of `check_varlen_inputs` that read no tensor values (no device sync): q
    (Tq, Hq, D); k, v (Tk, Hk, D); cu_seqlens int32 (N+1,) on q's device or on the CPU, the
    same N."""
    _check_qkv(q, k, v, 3, dtypes)
    check_head_dim("q", q.shape[-1])
    check_heads(q.shape[1], k.shape[1])
    tensor_q = _check_cu_tensor("cu_seqlens_q", cu_seqlens_q, q.shape[0], q.device)
    tensor_k = _check_cu_tensor("cu_seqlens_k", cu_seqlens_k, k.shape[0], q.device)
    if tensor_q.numel() != tensor_k.numel():
        raise ValueError(
            "cu_seqlens_q and cu_seqlens_k must describe the same number of sequences N; "
            f"got {tensor_q.numel() - 1} and {tensor_k.numel() - 1}"
        )


def check_varlen_values(
    q: torch.Tensor,
    k: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int | None,
    max_seqlen_k: int | None,
    scale: float | None,
) -> VarlenMeta:
    """The value checks of `check_varlen_inputs`, after `check_varlen_layout`: one host read of
    both cu_seqlens (a device sync unless both are on the CPU), their values, and the maxima
    against the lengths."""
    if cu_seqlens_k is cu_seqlens_q:  # self-attention's usual call: one read of one tensor
        values = cu_seqlens_q.tolist() * 2
    elif cu_seqlens_q.device == cu_seqlens_k.device:
        values = torch.cat([cu_seqlens_q, cu_seqlens_k]).tolist()
    else:  # one on the CPU: its read costs no sync, the other's one
        values = cu_seqlens_q.tolist() + cu_seqlens_k.tolist()
    n = cu_seqlens_q.numel()
    cu_q = _check_cu_values("cu_seqlens_q", values[:n], q.shape[0])
    cu_k = _check_cu_values("cu_seqlens_k", values[n:], k.shape[0])
    lens_q = tuple(b - a for a, b in itertools.pairwise(cu_q))
    lens_k = tuple(b - a for a, b in itertools.pairwise(cu_k))
    return VarlenMeta(
        scale=resolve_scale(scale, q.shape[-1]),
        max_seqlen_q=_check_max_seqlen("max_seqlen_q", max_seqlen_q, max(lens_q, default=0)),
        max_seqlen_k=_check_max_seqlen("max_seqlen_k", max_seqlen_k, max(lens_k, default=0)),
        seqlens_q=lens_q,
        seqlens_k=lens_k,
    )


def check_varlen_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int | None,
    max_seqlen_k: int | None,
    scale: float | None,
    dtypes: Sequence[torch.dtype] = FLOAT_DTYPES,
) -> VarlenMeta:
    """Validate `varlen_attention` inputs: q (Tq, Hq, D); k, v (Tk, Hk, D); cu_seqlens (N+1,).
    `check_varlen_layout` then `check_varlen_values` (kernels run the two apart: see
    `attnverify.kernels.varlen`)."""
    check_varlen_layout(q, k, v, cu_seqlens_q, cu_seqlens_k, dtypes)
    return check_varlen_values(q, k, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale)


def check_grid_thw(grid_thw: object) -> torch.Tensor:
    """Check `grid_thw`: integer tensor of shape (num_images, 3), entries >= 0."""
    if not isinstance(grid_thw, torch.Tensor):
        raise TypeError(f"grid_thw must be a torch.Tensor; got {type(grid_thw).__name__}")
    if grid_thw.dim() != 2 or grid_thw.shape[1] != 3 or grid_thw.is_floating_point():
        raise ValueError(
            f"grid_thw must be an integer tensor of shape (num_images, 3); got {_describe(grid_thw)}"
        )
    if grid_thw.numel() and int(grid_thw.min()) < 0:
        raise ValueError(
            "grid_thw entries (t, h, w patch counts) must be >= 0; got a negative entry"
        )
    return grid_thw


# ---------------------------------------------------------------- gqa


def _check_broadcast(
    name: str, x: torch.Tensor, b: int, hq: int, hk: int, lq: int, lk: int
) -> None:
    allowed = ((1, b), (1, hk, hq), (1, lq), (1, lk))
    if x.dim() != 4 or any(s not in ok for s, ok in zip(x.shape, allowed, strict=True)):
        raise ValueError(
            f"{name} must be 4-D (Bm, Hm, Lqm, Lkm) with Bm in {{1, {b}}}, Hm in {{1, {hk}, {hq}}}, "
            f"Lqm in {{1, {lq}}}, Lkm in {{1, {lk}}}; got shape {tuple(x.shape)}"
        )


def check_mask_bias(
    q: torch.Tensor,
    k: torch.Tensor,
    mask: torch.Tensor | None,
    bias: torch.Tensor | None,
) -> None:
    """Check the gqa `mask` (bool) and `bias` (q's dtype or float32) against the broadcast rules."""
    b, hq, lq, _ = q.shape
    hk, lk = k.shape[1], k.shape[2]
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a torch.Tensor or None; got {type(mask).__name__}")
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be bool (True = attend); got {_name(mask.dtype)}")
        _check_broadcast("mask", mask, b, hq, hk, lq, lk)
        check_same(("q", "mask"), (q, mask), "device")
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"bias must be a torch.Tensor or None; got {type(bias).__name__}")
        allowed = (q.dtype, torch.float32)
        if bias.dtype not in allowed:
            raise TypeError(f"bias must have dtype in ({_names(allowed)}); got {_name(bias.dtype)}")
        _check_broadcast("bias", bias, b, hq, hk, lq, lk)
        check_same(("q", "bias"), (q, bias), "device")


def check_gqa_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    bias: torch.Tensor | None,
    scale: float | None,
    dtypes: Sequence[torch.dtype] = FLOAT_DTYPES,
) -> float:
    """Validate `gqa_attention` inputs: q (B, Hq, Lq, D); k, v (B, Hk, Lk, D). Returns the scale."""
    _check_qkv(q, k, v, 4, dtypes)
    check_head_dim("q", q.shape[-1])
    if q.shape[0] != k.shape[0]:
        raise ValueError(f"q and k must share the batch size B; got {q.shape[0]} and {k.shape[0]}")
    check_heads(q.shape[1], k.shape[1])
    check_mask_bias(q, k, mask, bias)
    return resolve_scale(scale, q.shape[-1])


# ---------------------------------------------------------------- fp8


def check_descale(
    name: str, x: object, shapes: Sequence[tuple[int, ...]], device: torch.device
) -> None:
    """Check a descale: float32 tensor with a shape in `shapes`, on `device`."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a float32 torch.Tensor; got {type(x).__name__}")
    want = " or ".join(str(s) for s in shapes)
    if x.dtype != torch.float32 or tuple(x.shape) not in [tuple(s) for s in shapes]:
        raise ValueError(f"{name} must be float32 of shape {want}; got {_describe(x)}")
    if x.device != device:
        raise ValueError(f"{name} must be on the device of q ({device}); got {x.device}")


def check_fp8_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_descale: torch.Tensor,
    k_descale: torch.Tensor,
    v_descale: torch.Tensor,
    scale: float | None,
    out_dtype: torch.dtype,
    head_dim_multiple: int = HEAD_DIM_MULTIPLE,
) -> float:
    """Validate `fp8_attention` inputs: fp8 q (B, Hq, Lq, D), k, v (B, Hk, Lk, D). Returns the scale."""
    _check_qkv(q, k, v, 4, FP8_DTYPES)
    check_head_dim("q", q.shape[-1], head_dim_multiple)
    if q.shape[0] != k.shape[0]:
        raise ValueError(f"q and k must share the batch size B; got {q.shape[0]} and {k.shape[0]}")
    check_heads(q.shape[1], k.shape[1])
    shapes = ((), (q.shape[0], k.shape[1]))
    for name, d in (("q_descale", q_descale), ("k_descale", k_descale), ("v_descale", v_descale)):
        check_descale(name, d, shapes, q.device)
    if out_dtype not in OUT_DTYPES:
        raise TypeError(f"out_dtype must be one of ({_names(OUT_DTYPES)}); got {out_dtype}")
    return resolve_scale(scale, q.shape[-1])


# ---------------------------------------------------------------- paged


@dataclass(frozen=True)
class PagedLayout:
    """What `check_paged_layout` resolved without reading values: scale and cache geometry."""

    scale: float
    block_size: int
    num_blocks: int
    num_kv_heads: int


@dataclass(frozen=True)
class PagedMeta:
    """What `check_paged_inputs` resolved: scale, geometry and per-request lengths (host ints)."""

    scale: float
    block_size: int
    num_blocks: int
    num_kv_heads: int
    seq_lens: tuple[int, ...]


def check_paged_layout(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float | None,
    k_descale: torch.Tensor | None,
    v_descale: torch.Tensor | None,
    num_splits: int | None,
    kv_layout: str,
    dtypes: Sequence[torch.dtype] = FLOAT_DTYPES,
) -> PagedLayout:
    """The rules of `check_paged_inputs` that read no tensor values: types, dtypes, shapes,
    devices, descales, num_splits, kv_layout. Returns the resolved geometry."""
    if kv_layout not in KV_LAYOUTS:
        raise ValueError(
            f"kv_layout must be one of {', '.join(repr(x) for x in KV_LAYOUTS)}; got {kv_layout!r}"
        )
    check_tensor("q", q, 4, dtypes)
    cache_dtypes = (q.dtype, *FP8_DTYPES)
    check_tensor("k_cache", k_cache, 4, cache_dtypes)
    check_tensor("v_cache", v_cache, 4, cache_dtypes)
    check_same(("q", "k_cache", "v_cache"), (q, k_cache, v_cache), "device")
    check_same(("k_cache", "v_cache"), (k_cache, v_cache), "dtype")
    if k_cache.shape != v_cache.shape:
        raise ValueError(
            f"k_cache and v_cache must have the same shape; got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}"
        )
    if kv_layout == "NHD":
        num_blocks, block_size, hk, d = k_cache.shape
    else:
        num_blocks, hk, block_size, d = k_cache.shape
    if d != q.shape[-1]:
        raise ValueError(
            f"q and k_cache must share the head dim D; got {q.shape[-1]} and {d} ({kv_layout})"
        )
    check_head_dim("q", d)
    check_heads(q.shape[1], hk, "k_cache")
    is_fp8 = k_cache.dtype in FP8_DTYPES
    for name, d_ in (("k_descale", k_descale), ("v_descale", v_descale)):
        if d_ is None:
            continue
        if not is_fp8:
            raise ValueError(
                f"{name} applies to fp8 caches only; the cache is {_name(k_cache.dtype)}"
            )
        check_descale(name, d_, ((), (hk,)), q.device)
    b = q.shape[0]
    if (
        not isinstance(block_tables, torch.Tensor)
        or block_tables.dtype != torch.int32
        or block_tables.dim() != 2
        or block_tables.shape[0] != b
    ):
        got = (
            _describe(block_tables)
            if isinstance(block_tables, torch.Tensor)
            else type(block_tables).__name__
        )
        raise ValueError(f"block_tables must be int32 of shape (B={b}, max_blocks); got {got}")
    if (
        not isinstance(seq_lens, torch.Tensor)
        or seq_lens.dtype != torch.int32
        or tuple(seq_lens.shape) != (b,)
    ):
        got = _describe(seq_lens) if isinstance(seq_lens, torch.Tensor) else type(seq_lens).__name__
        raise ValueError(f"seq_lens must be int32 of shape (B={b},); got {got}")
    check_same(("q", "block_tables", "seq_lens"), (q, block_tables, seq_lens), "device")
    if num_splits is not None and (
        isinstance(num_splits, bool) or not isinstance(num_splits, int) or num_splits < 1
    ):
        raise ValueError(f"num_splits must be an int >= 1 or None (automatic); got {num_splits!r}")
    return PagedLayout(
        scale=resolve_scale(scale, d),
        block_size=block_size,
        num_blocks=num_blocks,
        num_kv_heads=hk,
    )


def check_paged_values(
    block_tables: torch.Tensor, seq_lens: torch.Tensor, layout: PagedLayout
) -> tuple[int, ...]:
    """The value rules of `check_paged_inputs` (one host read of each tensor): every seq_len in
    [0, max_blocks * block_size], and the block ids a request reads (its first
    ceil(seq_len / block_size) entries) in [0, num_blocks). Returns seq_lens as ints."""
    block_size, num_blocks = layout.block_size, layout.num_blocks
    lens = seq_lens.tolist()
    capacity = block_tables.shape[1] * block_size
    tables = block_tables.tolist()
    for i, n in enumerate(lens):
        if n < 0 or n > capacity:
            raise ValueError(
                f"seq_lens[{i}] must be in [0, max_blocks * block_size = {capacity}]; got {n}"
            )
        used = tables[i][: -(-n // block_size)]
        bad = [j for j, blk in enumerate(used) if not 0 <= blk < num_blocks]
        if bad:
            j = bad[0]
            raise ValueError(
                f"block_tables[{i}, {j}] = {used[j]} is used (seq_lens[{i}] = {n}) and must be a "
                f"block id in [0, num_blocks = {num_blocks})"
            )
    return tuple(lens)


def check_paged_inputs(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float | None,
    k_descale: torch.Tensor | None,
    v_descale: torch.Tensor | None,
    num_splits: int | None,
    kv_layout: str,
    dtypes: Sequence[torch.dtype] = FLOAT_DTYPES,
) -> PagedMeta:
    """Validate `paged_attention` inputs (see `reference.paged.paged_attention` for shapes):
    `check_paged_layout`, then `check_paged_values`."""
    layout = check_paged_layout(
        q, k_cache, v_cache, block_tables, seq_lens, scale, k_descale, v_descale, num_splits,
        kv_layout, dtypes,
    )  # fmt: skip
    lens = check_paged_values(block_tables, seq_lens, layout)
    return PagedMeta(
        scale=layout.scale,
        block_size=layout.block_size,
        num_blocks=layout.num_blocks,
        num_kv_heads=layout.num_kv_heads,
        seq_lens=lens,
    )


def check_merge_inputs(
    out: torch.Tensor, lse: torch.Tensor, dtypes: Sequence[torch.dtype] = FLOAT_DTYPES
) -> None:
    """Validate `merge_attention_states` inputs: out (..., S, D), lse (..., S) float32, S >= 1."""
    for name, x in (("out", out), ("lse", lse)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    check_tensor("out", out, out.dim(), dtypes)
    if out.dim() < 2:
        raise ValueError(
            f"out must be (..., S, D) with at least 2 dims; got shape {tuple(out.shape)}"
        )
    if lse.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"lse must be float32 (float64 for the oracle); got {_name(lse.dtype)}")
    if tuple(lse.shape) != tuple(out.shape[:-1]):
        raise ValueError(
            f"lse must have shape out.shape[:-1] = {tuple(out.shape[:-1])}; got {tuple(lse.shape)}"
        )
    if out.shape[-2] < 1:
        raise ValueError("out must hold at least one split (S >= 1) in dim -2; got S = 0")
    check_same(("out", "lse"), (out, lse), "device")


__all__ = [
    "FLOAT_DTYPES",
    "FP8_DTYPES",
    "KV_LAYOUTS",
    "ORACLE_DTYPES",
    "OUT_DTYPES",
    "PagedLayout",
    "PagedMeta",
    "VarlenMeta",
    "check_descale",
    "check_fp8_inputs",
    "check_gqa_inputs",
    "check_grid_thw",
    "check_head_dim",
    "check_heads",
    "check_mask_bias",
    "check_merge_inputs",
    "check_paged_inputs",
    "check_paged_layout",
    "check_paged_values",
    "check_same",
    "check_tensor",
    "check_varlen_inputs",
    "check_varlen_layout",
    "check_varlen_values",
    "resolve_scale",
]
