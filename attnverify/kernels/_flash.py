"""Shared flash-attention core: launchers of one forward and one backward (dk/dv pass, dq pass).

Used by `kernels.varlen` (packed sequences, cu_seqlens) and `kernels.gqa` (batched, mask and
bias); the differences are constexpr flags, never copies of a kernel:
- IS_VARLEN: rows of sequence n start at cu_seqlens[n]; grids walk a device-built plan of
  (sequence, block) items, heaviest sequences first (`_flash_plan.varlen_plan`): no host read
  of cu_seqlens here.
- IS_CAUSAL: bottom-right per sequence, query i sees key j iff j <= i + Lk - Lq.
- HAS_MASK / HAS_BIAS: (Bm, Hm, Lqm, Lkm) tensors read through zero strides on broadcast dims;
  a kv-headed one (Hm == Hk) is read by query head h at h // G. With a mask the passes walk
  device-built tile lists (`_flash_plan.mask_tile_lists`): tiles all False are skipped (no
  K/V loads, no math), tiles all True run without reading the mask.
- GQA: query head h reads kv head h // G.
- Head dims: D = D0 (power of two) + D1 (power-of-two remainder tile ending at D), see
  `_common.HeadDimSplit`; row strides reach the kernels divided by ALIGN.
Kernels: `_flash_fwd` (forward), `_flash_bwd` (dk/dv and dq passes), helpers `_flash_tiles`.
Numerics: scores in float32, softmax in base 2, lse stored in natural log (float32). Rows with
no visible key: out 0, lse -inf, zero grads. Backward is deterministic (no atomics): dk/dv per
query head (summed over the group on the host when G > 1), dq in its own pass, dbias per query
head reduced on the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnverify.kernels._common import HeadDimSplit, cdiv, split_head_dim, use_interpreter
from attnverify.kernels._flash_bwd import flash_dkdv, flash_dq
from attnverify.kernels._flash_fwd import flash_fwd
from attnverify.kernels._flash_plan import (
    list_strides,
    mask_tile_classes,
    mask_tile_lists,
    max_items,
    varlen_plan,
)
from attnverify.kernels._flash_tiles import AUTOTUNE_ENV, INTERPRETER_BLOCK, LOG2E

GPU_MASK_BLOCK = 128  # edge of the block-sparse tiles; every BLOCK_* of the passes divides it
ALIGN = 8  # elements: 16 bytes of float16 / bfloat16 (D % 8 == 0 by contract)


@dataclass(frozen=True)
class FlashConfig:
    """A pinned launch config: the row block of the grid, the inner loop block, warps, stages."""

    block_outer: int
    block_inner: int
    num_warps: int = 4
    num_stages: int = 1


@dataclass(frozen=True)
class FlashProblem:
    """Geometry and options of one call (no validation happens here).

    gqa: `batch = B`, `seqlen_q = Lq`, `seqlen_k = Lk`. varlen: `batch = 1`, `seqlen_q = Tq`,
    `seqlen_k = Tk` and the (N+1,) int32 `cu_seqlens_q` / `cu_seqlens_k` on the device (read
    by the plan kernel, never on the host).
    """

    is_varlen: bool
    batch: int
    num_q_heads: int
    num_kv_heads: int
    causal: bool
    scale: float
    seqlen_q: int = 0
    seqlen_k: int = 0
    cu_seqlens_q: torch.Tensor | None = None
    cu_seqlens_k: torch.Tensor | None = None

    @property
    def group(self) -> int:
        return self.num_q_heads // self.num_kv_heads

    @property
    def num_seqs(self) -> int:
        return self.cu_seqlens_q.numel() - 1 if self.is_varlen else 1


def _outer_block(split: HeadDimSplit, dtype: torch.dtype, interpreter: bool) -> int:
    if interpreter:
        return INTERPRETER_BLOCK
    if dtype == torch.float32 and split.padded > 128:
        return 32
    return 64 if dtype == torch.float32 or split.padded > 128 else 128


def _strides(x: torch.Tensor, is_varlen: bool) -> tuple[int, int, int, int]:
    """(z, h, row, d) strides: varlen (T, H, D) has no z; gqa (B, H, L, D)."""
    if is_varlen:
        return (0, x.stride(1), x.stride(0), x.stride(2))
    return tuple(x.stride())


def _lse_strides(x: torch.Tensor, is_varlen: bool) -> tuple[int, int, int]:
    """(z, h, row) strides of an lse-shaped tensor: varlen (Hq, Tq); gqa (B, Hq, Lq)."""
    if is_varlen:
        return (0, x.stride(0), x.stride(1))
    return tuple(x.stride())


def _broadcast(x: torch.Tensor | None) -> tuple[int, int, int, int]:
    """Strides of a (Bm, Hm, Lqm, Lkm) tensor with every size-1 (broadcast) dim read at 0."""
    if x is None:
        return (0, 0, 0, 0)
    return tuple(0 if n == 1 else s for n, s in zip(x.shape, x.stride(), strict=True))


def _head_div(x: torch.Tensor | None, problem: FlashProblem) -> int:
    """Query head h reads head h // div of a mask/bias: Hq-headed 1, kv-headed G."""
    if x is None or x.shape[1] == problem.num_q_heads:
        return 1
    return problem.group


def _stride_kw(prefix: str, axes: str, strides: tuple[int, ...]) -> dict[str, int]:
    """{"stride_<prefix><axis>": stride} keyword arguments of a kernel."""
    return {f"stride_{prefix}{a}": s for a, s in zip(axes, strides, strict=True)}


def _alignment(is_varlen: bool, *tensors: torch.Tensor) -> int:
    """ALIGN when every z/h/row stride of `tensors` is a multiple of it and D is unit-stride
    (the usual layouts), else 1. Strides reach the kernels divided by this value."""
    ok = all(
        x.stride(-1) == 1 and all(s % ALIGN == 0 for s in _strides(x, is_varlen)[:3])
        for x in tensors
    )
    return ALIGN if ok else 1


def _named(prefix: str, axes: str, x: torch.Tensor, is_varlen: bool, align: int) -> dict:
    """Stride keywords of a q/k/v-like tensor, z/h/row strides divided by `align`."""
    z, h, r, d = _strides(x, is_varlen)
    return _stride_kw(prefix, axes, (z // align, h // align, r // align, d))


def _mask_block(q: torch.Tensor, *configs: FlashConfig | None) -> int:
    """Edge of the block-sparse tiles: every block of the passes (pinned ones too) divides it."""
    base = INTERPRETER_BLOCK if use_interpreter(q) else GPU_MASK_BLOCK
    pinned = [max(c.block_outer, c.block_inner) for c in configs if c is not None]
    return max([base, *pinned])


def _tile_classes(
    q: torch.Tensor, problem: FlashProblem, mask: torch.Tensor | None, mask_block: int
) -> torch.Tensor | None:
    """Tile classes of the mask (one device pass over it), shared by the passes of a call."""
    if mask is None:
        return None
    return mask_tile_classes(
        mask, problem.seqlen_q, problem.seqlen_k, mask_block, causal=problem.causal
    )


def _prepare(
    q: torch.Tensor,
    problem: FlashProblem,
    mask: torch.Tensor | None,
    bias: torch.Tensor | None,
    config: FlashConfig | None,
    *,
    rows: bool,
    classes: torch.Tensor | None,
    mask_block: int,
) -> tuple[dict, tuple[int, int, int]]:
    """Keyword arguments shared by every pass, and the grid of a pass whose programs own
    query blocks (`rows`: forward, dq) or KV blocks (dk/dv); builds its plan / tile lists."""
    split = split_head_dim(q.shape[-1])
    outer = config.block_outer if config else _outer_block(split, q.dtype, use_interpreter(q))
    lq, lk = problem.seqlen_q, problem.seqlen_k
    work, num_seqs, search_top = q, 1, 1
    if problem.is_varlen:
        cu_q, cu_k = problem.cu_seqlens_q, problem.cu_seqlens_k
        cu_rows, cu_cols = (cu_q, cu_k) if rows else (cu_k, cu_q)
        work = varlen_plan(cu_rows, cu_cols, outer, rows_are_queries=rows)
        num_seqs = problem.num_seqs
        search_top = 1 << (num_seqs.bit_length() - 1)
        grid = (max_items(lq if rows else lk, num_seqs, outer), problem.num_q_heads, 1)
    else:
        grid = (cdiv(lq if rows else lk, outer), problem.num_q_heads, problem.batch)
    tiles, tile_strides = q, (0, 0, 0)
    if classes is not None:
        tiles = mask_tile_lists(classes, rows=rows)
        tile_strides = list_strides(tiles)
    kwargs = dict(
        Mask=mask.view(torch.uint8) if mask is not None else q,
        Bias=bias if bias is not None else q,
        Tiles=tiles,
        Work=work,
        **_stride_kw("m", "zhmn", _broadcast(mask)),
        **_stride_kw("b", "zhmn", _broadcast(bias)),
        **_stride_kw("t", "zho", tile_strides),
        seqlen_q=lq,
        seqlen_k=lk,
        num_seqs=num_seqs,
        search_top=search_top,
        group=problem.group,
        mask_head_div=_head_div(mask, problem),
        bias_head_div=_head_div(bias, problem),
        qk_scale=problem.scale * LOG2E.value,
        HEAD_DIM=split.head_dim,
        HEAD_D0=split.d0,
        HEAD_D1=split.d1 if split.has_d1 else 16,
        HAS_D1=split.has_d1,
        BLOCK_OUTER=outer,
        MASK_BLOCK=mask_block,
        IS_VARLEN=problem.is_varlen,
        IS_CAUSAL=problem.causal,
        HAS_MASK=mask is not None,
        HAS_BIAS=bias is not None,
        DOT_PREC="ieee" if q.dtype == torch.float32 else None,
    )
    return kwargs, grid


def _launch(kernel, grid: tuple[int, int, int], config: FlashConfig | None, **kwargs: object):
    """Launch the autotuned `kernel`, or its plain jit function with a pinned `config`."""
    if grid[0] == 0:
        return
    if config is None:
        kernel[grid](**kwargs)
    else:
        kernel.fn[grid](
            **kwargs,
            BLOCK_INNER=config.block_inner,
            num_warps=config.num_warps,
            num_stages=config.num_stages,
        )


def flash_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    problem: FlashProblem,
    *,
    mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    config: FlashConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Allocate out (q's shape and dtype) and lse (float32), launch the forward kernel."""
    vl = problem.is_varlen
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse_shape = (q.shape[1], q.shape[0]) if vl else q.shape[:-1]
    lse = torch.empty(lse_shape, dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse
    mask_block = _mask_block(q, config)
    classes = _tile_classes(q, problem, mask, mask_block)
    kwargs, grid = _prepare(
        q, problem, mask, bias, config, rows=True, classes=classes, mask_block=mask_block
    )
    k, v = (k, v) if k.numel() else (q, q)
    al = _alignment(vl, q, k, v, out)
    _launch(
        flash_fwd, grid, config, Q=q, K=k, V=v, Out=out, Lse=lse, ALIGN=al,
        **_named("q", "zhmd", q, vl, al), **_named("k", "zhnd", k, vl, al),
        **_named("v", "zhnd", v, vl, al), **_named("o", "zhmd", out, vl, al),
        **_stride_kw("l", "zhm", _lse_strides(lse, vl)), **kwargs,
    )  # fmt: skip
    return out, lse


def _dbias_buffer(
    q: torch.Tensor, problem: FlashProblem, bias: torch.Tensor, outer: int, sparse: bool
) -> tuple[torch.Tensor, int]:
    """float32 (B, Hq, Lq or 1, Lk or number of KV blocks) buffer and its DBIAS_MODE.

    Zero-filled only where the dk/dv pass may skip tiles (`sparse`: causal or a mask);
    otherwise every element is written by the kernel."""
    reduce_q = bias.shape[2] == 1
    reduce_k = bias.shape[3] == 1
    rows = 1 if reduce_q else problem.seqlen_q
    cols = cdiv(problem.seqlen_k, outer) if reduce_k else problem.seqlen_k
    mode = {(False, False): 1, (True, False): 2, (False, True): 3, (True, True): 4}
    alloc = torch.zeros if sparse else torch.empty
    buf = alloc(
        (problem.batch, problem.num_q_heads, rows, cols), dtype=torch.float32, device=q.device
    )
    return buf, mode[(reduce_q, reduce_k)]


def _reduce_dbias(buf: torch.Tensor, bias: torch.Tensor, problem: FlashProblem) -> torch.Tensor:
    """Sum the per-query-head dS buffer down to the bias's own (broadcast) shape."""
    if bias.shape[3] == 1:
        buf = buf.sum(dim=3, keepdim=True)
    hm = bias.shape[1]
    if hm == 1:
        buf = buf.sum(dim=1, keepdim=True)
    elif hm != problem.num_q_heads:
        b, _, r, c = buf.shape
        buf = buf.view(b, problem.num_kv_heads, problem.group, r, c).sum(dim=2)
    if bias.shape[0] == 1:
        buf = buf.sum(dim=0, keepdim=True)
    return buf.to(bias.dtype)


def _sum_group(buf: torch.Tensor, like: torch.Tensor, problem: FlashProblem) -> torch.Tensor:
    """Per-query-head dk/dv buffer -> per-kv-head gradient in `like`'s dtype."""
    g = problem.group
    if g == 1:
        return buf
    if problem.is_varlen:
        t, _, d = buf.shape
        return buf.view(t, problem.num_kv_heads, g, d).sum(dim=2).to(like.dtype)
    b, _, n, d = buf.shape
    return buf.view(b, problem.num_kv_heads, g, n, d).sum(dim=2).to(like.dtype)


def flash_backward(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    dlse: torch.Tensor | None,
    problem: FlashProblem,
    *,
    mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    need_dbias: bool = False,
    config_dkdv: FlashConfig | None = None,
    config_dq: FlashConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """dq, dk, dv (input dtypes, summed over each query-head group) and dbias (bias's shape)."""
    vl = problem.is_varlen
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if problem.group == 1:
        dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
        dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    else:
        shape = list(k.shape)
        shape[1] = problem.num_q_heads
        dk = torch.empty(shape, dtype=torch.float32, device=k.device)
        dv = torch.empty(shape, dtype=torch.float32, device=k.device)
    dbias = None
    if q.numel() == 0 or k.numel() == 0:
        dq.zero_()
        dk.zero_()
        dv.zero_()
        if need_dbias:
            dbias = torch.zeros_like(bias)
        return dq, _sum_group(dk, k, problem), _sum_group(dv, v, problem), dbias
    delta = (out.float() * do.float()).sum(-1)
    delta = delta.transpose(0, 1) if vl else delta
    if dlse is not None:
        delta = delta - dlse
    delta = delta.contiguous()
    lse = lse.contiguous()
    al = _alignment(vl, q, k, v, do, dq, dk, dv)
    shared = dict(
        Q=q, K=k, V=v, DO=do, Lse=lse, Delta=delta, ALIGN=al, scale=problem.scale,
        **_named("q", "zhmd", q, vl, al), **_named("k", "zhnd", k, vl, al),
        **_named("v", "zhnd", v, vl, al), **_named("do", "zhmd", do, vl, al),
        **_stride_kw("l", "zhm", _lse_strides(lse, vl)),
    )  # fmt: skip
    mask_block = _mask_block(q, config_dkdv, config_dq)
    classes = _tile_classes(q, problem, mask, mask_block)
    kwargs, grid = _prepare(
        q, problem, mask, bias, config_dkdv, rows=False, classes=classes, mask_block=mask_block
    )
    db_buf, mode = q, 0
    if need_dbias:
        sparse = problem.causal or mask is not None
        db_buf, mode = _dbias_buffer(q, problem, bias, kwargs["BLOCK_OUTER"], sparse)
    _launch(
        flash_dkdv, grid, config_dkdv, DK=dk, DV=dv, DB=db_buf, DBIAS_MODE=mode,
        **_named("dk", "zhnd", dk, vl, al), **_named("dv", "zhnd", dv, vl, al),
        **_stride_kw("db", "zhmn", db_buf.stride() if mode else (0, 0, 0, 0)),
        **shared, **kwargs,
    )  # fmt: skip
    kwargs, grid = _prepare(
        q, problem, mask, bias, config_dq, rows=True, classes=classes, mask_block=mask_block
    )
    _launch(
        flash_dq, grid, config_dq, DQ=dq, **_named("dq", "zhmd", dq, vl, al), **shared, **kwargs
    )
    if need_dbias:
        dbias = _reduce_dbias(db_buf, bias, problem)
    return dq, _sum_group(dk, k, problem), _sum_group(dv, v, problem), dbias


__all__ = ["AUTOTUNE_ENV", "FlashConfig", "FlashProblem", "flash_backward", "flash_forward"]
