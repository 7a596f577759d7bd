"""Shared flash-attention core: one forward and one backward (dk/dv pass, dq pass) in Triton.

This module is the host side: `FlashProblem`, `FlashConfig`, the varlen work tables, argument
packing (`_prepare`, strides divided by ALIGN) and the launchers `flash_forward` /
`flash_backward`. The kernels live in `_flash_fwd` (forward) and `_flash_bwd` (dk/dv, dq);
configs, pruning, the autotune key and the jit helpers they share in `_flash_tiles`; when to
load through TMA descriptors, and the descriptors, in `_flash_tma`.

Used by `kernels.varlen` (packed sequences, cu_seqlens) and `kernels.gqa` (batched, mask and
bias); the differences are constexpr flags, never copies of a kernel:
- IS_VARLEN: rows of sequence n start at cu_seqlens[n]; 1-D grids walk a host-built work
  table of (sequence, block, head) items, heaviest first over all heads
  (`_common.varlen_work_table`).
- IS_CAUSAL: bottom-right per sequence, query i sees key j iff j <= i + Lk - Lq.
- HAS_MASK / HAS_BIAS: (Bm, Hm, Lqm, Lkm) tensors read through zero strides on broadcast dims;
  a kv-headed one (Hm == Hk) is read by query head h at h // G. Tiles whose mask block is all
  False are skipped: no K/V loads, no math. `_tile_codes` summarises the mask per tile on the
  device (`_flash_mask`); the backward reads the codes as flags, the forward walks lists of
  the tiles to visit (`_tile_lists`) and reads the mask only in tiles that are not all True;
  wide tiles keep those list loops unpipelined (`_list_stages`).
- HEADS_FIRST: the grid runs query heads fastest for a gqa bias several heads share
  (`_heads_first`), so that they read each bias tile at about the same time.
- GQA: query head h reads kv head h // G.
- Head dims: D = D0 (power of two) + D1 (power-of-two remainder tile ending at D, its overlap
  with D0 zeroed), see `_common.HeadDimSplit`; row strides reach the kernels divided by 8 so
  the compiler knows rows are 16-byte aligned (D = 72 loads vectorize).
Any Lq / Lk: interior tiles run unmasked, boundary and diagonal tiles masked.
- Forward K/V loads: TMA descriptors on NVIDIA sm90+ where the layout allows (`tma_policy`,
  `$ATTNVERIFY_FLASH_TMA`), else pointers; bitwise the same out and lse either way. Host
  descriptors over K and V as (Z, Hk, rows, D), varlen (1, Hk, T, D); varlen masked tiles
  (a sequence's partial last tile, causal diagonal tiles) load through pointers, as the
  descriptor would read the next sequence there. The backward's inner-loop tiles (Q and dO
  of the dk/dv pass, K and V of the dq pass) likewise, under the same policy; bitwise the
  same dq, dk, dv and dbias.

Layout handled here: every tensor as (z, h, row, d) with explicit strides (varlen: z stride 0,
row offset from the work table). 64-bit base offsets; in-tile offsets stay 32-bit.
Numerics: scores in float32, softmax in base 2 (`exp2`, scores pre-multiplied by LOG2E),
lse stored in natural log (float32). Rows with no visible key: out 0, lse -inf, zero grads.
Backward is deterministic (no atomics): dk/dv per query head (summed over the group on the
host when G > 1), dq in its own pass, dbias per query head reduced on the host, or, for a
full bias that several (batch, query head) pairs share, summed on chip by its own kernel
(`_flash_dbias`).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import triton
from triton.runtime.errors import OutOfResources

from attnverify.arch import interpreter_active
from attnverify.kernels import _autotune as autotune_policy
from attnverify.kernels._common import (
    HeadDimSplit,
    split_head_dim,
    varlen_work_table,
)
from attnverify.kernels._flash_bwd import QDO_DESC_NAMES, _dkdv, _dq, _set_qdo_block_shapes
from attnverify.kernels._flash_dbias import GROUP_M, _dbias
from attnverify.kernels._flash_fwd import KV_DESC_NAMES, _fwd, _set_kv_block_shapes
from attnverify.kernels._flash_mask import _tile_codes_kernel, _tile_lists_kernel
from attnverify.kernels._flash_tiles import BWD_CONFIGS as BWD_CONFIGS  # re-exported
from attnverify.kernels._flash_tiles import FWD_CONFIGS as FWD_CONFIGS  # re-exported
from attnverify.kernels._flash_tiles import (
    INTERPRETER_BLOCK,
    LOG2E,
    fallback_configs,
)
from attnverify.kernels._flash_tma import TMA_ENV as TMA_ENV  # re-exported
from attnverify.kernels._flash_tma import TMA_POLICIES as TMA_POLICIES  # re-exported
from attnverify.kernels._flash_tma import (
    _bwd_descriptors,
    _largest_key_block,
    _pair_descriptors,
    _use_tma,
    tma_policy,
)

GPU_MASK_BLOCK = 128  # granularity of the tile-level mask summary; every BLOCK_* divides it
GRID_AXIS_LIMIT = 65535  # CUDA's limit on grid axes 1 and 2
LIST_STAGE_BYTES = 128 * 1024  # `_list_stages`: the most one pipelined list iteration loads
LIST_STAGE_WIDTH = 128  # `_list_stages`: the widest 16-bit K/V row kept pipelined


@dataclass(frozen=True)
class FlashConfig:
    """A pinned launch config: the row block of the grid, the inner loop block, warps, stages."""

    block_outer: int
    block_inner: int
    num_warps: int = 4
    num_stages: int = 1


def _outer_block(
    split: HeadDimSplit, dtype: torch.dtype, interpreter: bool, rows_are_queries: bool = True
) -> int:
    """Rows of a program's own block: query rows (forward, dq pass) or keys (dk/dv pass).
    The dk/dv pass keeps two float32 [keys, D] accumulators in registers. At 128 keys it
    spilled at every config (sm90, triton 3.6). 64 keys with 128-row query tiles ran the bench
    backward 1.55x faster on an H200, autotuned (ci/notes_flash.md, session 20)."""
    if interpreter:
        return INTERPRETER_BLOCK
    if dtype == torch.float32 and split.padded > 128:
        return 32
    if dtype == torch.float32 or split.padded > 128 or not rows_are_queries:
        return 64
    return 128


@dataclass(frozen=True)
class VarlenLengths:
    """Per-sequence row starts and lengths of a varlen call (host ints, from cu_seqlens)."""

    starts_q: tuple[int, ...]
    starts_k: tuple[int, ...]
    seqlens_q: tuple[int, ...]
    seqlens_k: tuple[int, ...]

    @classmethod
    def from_seqlens(cls, seqlens_q: tuple[int, ...], seqlens_k: tuple[int, ...]) -> VarlenLengths:
        starts_q = tuple(itertools.accumulate(seqlens_q, initial=0))[:-1]
        starts_k = tuple(itertools.accumulate(seqlens_k, initial=0))[:-1]
        return cls(starts_q, starts_k, tuple(seqlens_q), tuple(seqlens_k))


@dataclass(frozen=True)
class FlashProblem:
    """Geometry and options of one call (host ints; no validation happens here).

    gqa: `batch = B`, `seqlen_q = Lq`, `seqlen_k = Lk`. varlen: `batch = 1` (seqlen_* unused)
    and `lengths`, which reads cu_seqlens on the host (a device sync, validated there; memoized
    by the caller): the launchers call it as late as they can, after the rest of their host
    work, so that the GPU idles only from that read to the launch.
    """

    is_varlen: bool
    batch: int
    num_q_heads: int
    num_kv_heads: int
    causal: bool
    scale: float
    seqlen_q: int = 0
    seqlen_k: int = 0
    lengths: Callable[[], VarlenLengths] | None = None

    @property
    def group(self) -> int:
        return self.num_q_heads // self.num_kv_heads


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


# ------------------------------------------------------------------ launchers


@dataclass(frozen=True)
class _Common:
    """Arguments every kernel takes, resolved once per launch, and that launch's grid."""

    kwargs: dict
    grid: tuple[int, int, int]
    work: torch.Tensor


# varlen work tables kept on their device, 24 bytes per block and head: 48 KiB for 16k tokens,
# 16 heads and 128-row blocks, 3 MiB for 1M tokens (64 such tables: 192 MiB)
WORK_TABLE_CACHE = 64


@functools.lru_cache(maxsize=WORK_TABLE_CACHE)
def _cached_work_table(
    seqlens_rows: tuple[int, ...],
    seqlens_cols: tuple[int, ...],
    starts_rows: tuple[int, ...],
    starts_cols: tuple[int, ...],
    block: int,
    heads: int,
    rows_are_queries: bool,
    device: torch.device,
) -> torch.Tensor:
    table = varlen_work_table(
        seqlens_rows, seqlens_cols, starts_rows, starts_cols, block, heads=heads,
        rows_are_queries=rows_are_queries, device=device,
    )  # fmt: skip
    if table.is_cuda:
        # the copy is asynchronous on this stream; a later launch on another stream must not
        # read the table before it lands (cheap: the caller has just synced on cu_seqlens)
        torch.cuda.current_stream(table.device).synchronize()
    return table


def _work_table(
    problem: FlashProblem, block: int, rows_are_queries: bool, device: torch.device
) -> torch.Tensor:
    """The varlen work table of one grid, built once per (lengths, block, heads, side, device).

    Building it is host Python plus a host-to-device copy, and it runs while the GPU idles: the
    caller has just read cu_seqlens on the host. Repeated calls (every step of a vision encoder
    with fixed image sizes, every benchmark repetition) reuse the device tensor. Kernels only
    read it; a new table is on the device before any stream can read it, and `record_stream`
    keeps an evicted table's memory from reuse until the launches that read it are done.
    """
    p = problem.lengths()
    if rows_are_queries:
        key = (p.seqlens_q, p.seqlens_k, p.starts_q, p.starts_k)
    else:
        key = (p.seqlens_k, p.seqlens_q, p.starts_k, p.starts_q)
    table = _cached_work_table(*key, block, problem.num_q_heads, rows_are_queries, device)
    if table.is_cuda and not torch.cuda.is_current_stream_capturing():
        table.record_stream(torch.cuda.current_stream(table.device))
    return table


def _block_sizes(
    q: torch.Tensor, split: HeadDimSplit, config: FlashConfig | None, rows_are_queries: bool
) -> tuple[int, int]:
    interpreter = interpreter_active() or q.device.type == "cpu"
    if config:
        outer = config.block_outer
    else:
        outer = _outer_block(split, q.dtype, interpreter, rows_are_queries)
    base = INTERPRETER_BLOCK if interpreter else GPU_MASK_BLOCK
    mask_block = max(base, outer, config.block_inner if config else 0)
    return outer, mask_block


def _prepare(
    q: torch.Tensor,
    problem: FlashProblem,
    mask: torch.Tensor | None,
    bias: torch.Tensor | None,
    config: FlashConfig | None,
    *,
    rows_are_queries: bool,
) -> _Common:
    """Shared kwargs and the grid of one pass: over query blocks (forward, dq) or key blocks
    (dk/dv). Only that pass's varlen work table is built, last (it reads the lengths)."""
    split = split_head_dim(q.shape[-1])
    outer, mask_block = _block_sizes(q, split, config, rows_are_queries)
    flags = _tile_codes(mask, problem, mask_block) if mask is not None else None
    kwargs = dict(
        Mask=mask.view(torch.uint8) if mask is not None else q,
        Bias=bias if bias is not None else q,
        Flags=flags if flags is not None else q,
        **_stride_kw("m", "zhmn", _broadcast(mask)),
        **_stride_kw("b", "zhmn", _broadcast(bias)),
        **_stride_kw("f", "zhmn", _broadcast(flags)),
        seqlen_q=problem.seqlen_q,
        seqlen_k=problem.seqlen_k,
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
    heads_first = _heads_first(problem, bias, outer, rows_are_queries)
    kwargs["HEADS_FIRST"] = heads_first
    if problem.is_varlen:
        work = _work_table(problem, outer, rows_are_queries, q.device)
        grid = (work.shape[0], 1, 1)
        lengths = problem.lengths()  # memoized: read by the work table
        longest = max((*lengths.seqlens_q, *lengths.seqlens_k), default=0)
    else:
        work = q
        length = problem.seqlen_q if rows_are_queries else problem.seqlen_k
        grid = (triton.cdiv(length, outer), problem.num_q_heads, problem.batch)
        if heads_first:
            grid = (grid[1], grid[0], grid[2])
        longest = max(problem.seqlen_q, problem.seqlen_k)
    kwargs["len_bucket"] = _len_bucket(longest)
    return _Common(kwargs, grid, work)


def _len_bucket(longest: int) -> int:
    """The autotune key's length class (`_flash_tiles.AUTOTUNE_KEY`): the bit length of the
    longest query or key sequence, capped at 16384 (15 classes)."""
    return min(max(longest, 1), 16384).bit_length()


def _heads_first(
    problem: FlashProblem, bias: torch.Tensor | None, outer: int, rows_are_queries: bool
) -> bool:
    """Whether the grid runs query heads fastest (axes (head, block, batch), HEADS_FIRST):
    for a gqa bias that several query heads read (head dim 1 or Hk), so that the programs of
    one block, every head, run together and share each bias tile through L2 rather than each
    head reading it from HBM; the block count must fit grid axis 1. Measured on an H200
    (ci/notes_flash.md): the (1, 1, L, L) bias forward 1.03x / 1.02x faster (Hk 16 / 4,
    autotuned)."""
    if problem.is_varlen or bias is None or bias.shape[1] == problem.num_q_heads:
        return False
    length = problem.seqlen_q if rows_are_queries else problem.seqlen_k
    return triton.cdiv(length, outer) <= GRID_AXIS_LIMIT


def _stride_kw(prefix: str, axes: str, strides: tuple[int, ...]) -> dict[str, int]:
    """{"stride_<prefix><axis>": stride} keyword arguments of a kernel."""
    return {f"stride_{prefix}{a}": s for a, s in zip(axes, strides, strict=True)}


ALIGN = 8  # elements: 16 bytes of float16 / bfloat16 (D % 8 == 0 by contract)


def _alignment(is_varlen: bool, *tensors: torch.Tensor) -> int:
    """ALIGN when every z/h/row stride of `tensors` is a multiple of it and D is unit-stride
    (the usual layouts), else 1. Strides reach the kernels divided by this value."""
    ok = all(
        x.stride(-1) == 1 and all(s % ALIGN == 0 for s in _strides(x, is_varlen)[:3])
        for x in tensors
    )
    return ALIGN if ok else 1


def _named(prefix: str, x: torch.Tensor, is_varlen: bool, align: int) -> dict[str, int]:
    z, h, r, d = _strides(x, is_varlen)
    return _stride_kw(prefix, "zhmd", (z // align, h // align, r // align, d))


def _named_kv(prefix: str, x: torch.Tensor, is_varlen: bool, align: int) -> dict[str, int]:
    z, h, r, d = _strides(x, is_varlen)
    return _stride_kw(prefix, "zhnd", (z // align, h // align, r // align, d))


# (kernel, dtype, autotune key values) -> index of the config that fitted: under a pinning
# policy in its `pinned_order` plus the fallbacks; where autotuning ran out of shared memory, in
# the kept configs plus the fallbacks (`_TUNED_OUT`)
_PINNED_FITS: dict[tuple, int] = {}
_TUNED_OUT: dict[tuple, int] = {}


def _launch(
    kernel,
    grid: tuple[int, int, int] | Callable[[dict], tuple[int, int, int]],
    config: FlashConfig | None,
    *,
    fallback: bool = True,
    **kwargs: object,
):
    """Launch `kernel`: its plain jit function with a pinned `config`, else per the autotune
    policy (`attnverify.kernels._autotune`); `grid` may be a function of the config's
    meta-parameters. The pinning policies ("0", "rotate") launch the policy's pick among the
    configs the kernel's early pruning keeps (`_prune`, `_prune_dbias`), or the next one that
    fits: pruning estimates only the pipelined tiles' shared memory, and mask, bias and
    resident tiles can push a config past the device's (on an H200 the first backward config
    of a gqa case, D=80 with a bias, asked for 268 KiB of 227). With `fallback`, the small
    `FALLBACK_CONFIGS` come after the kept configs, and autotuning whose every config runs
    out of shared memory (a compiler or a device with less than the configs were chosen for)
    launches the first of them that fits; without, OutOfResources reaches the caller
    (`flash_forward` first retries with unpipelined mask lists). The config that fitted is
    remembered per kernel, dtype and autotune key.

    Raises:
        OutOfResources: no config fits the device (with `fallback`: not even the smallest).
    """
    if isinstance(grid, tuple) and 0 in grid:
        return
    if config is not None:
        kernel.fn[grid](
            **kwargs,
            BLOCK_INNER=config.block_inner,
            num_warps=config.num_warps,
            num_stages=config.num_stages,
        )
        return
    key = (kernel.fn.__name__, kwargs["Q"].dtype, *(kwargs[name] for name in kernel.keys))
    kept = kernel.early_config_prune(kernel.configs, kwargs)
    order = autotune_policy.pinned_order(kept, key)
    fits, first = _PINNED_FITS, 0
    if order is None:
        if key not in _TUNED_OUT:
            try:
                kernel[grid](**kwargs)
                return
            except OutOfResources:
                if not fallback:
                    raise
        # every kept config is too big here: start at the fallbacks
        order, fits, first = kept, _TUNED_OUT, len(kept)
    if fallback:
        hook = kernel.configs[0].pre_hook if kernel.configs else None
        known = {_config_tuple(c) for c in order}
        order = [*order, *(c for c in fallback_configs(hook) if _config_tuple(c) not in known)]
    for index in range(fits.get(key, first), len(order)):
        pick = order[index]
        if pick.pre_hook is not None:
            pick.pre_hook({**kwargs, **pick.kwargs})
        try:
            kernel.fn[grid](
                **kwargs, **pick.kwargs, num_warps=pick.num_warps, num_stages=pick.num_stages
            )
        except OutOfResources:
            if index == len(order) - 1:
                raise
            continue
        fits[key] = index
        return


def _config_tuple(config: triton.Config) -> tuple[int, int, int]:
    return config.kwargs["BLOCK_INNER"], config.num_warps, config.num_stages


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
    """Allocate out (q's shape and dtype) and lse (float32), launch the forward kernel. K and
    V load through TMA descriptors as `tma_policy` says; out and lse are bitwise the same
    either way. Varlen: `problem.lengths()` (the cu_seqlens read) comes after every other
    host step, right before the launch."""
    vl = problem.is_varlen
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if vl:
        lse = torch.empty((q.shape[1], q.shape[0]), dtype=torch.float32, device=q.device)
    else:
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        if vl:
            problem.lengths()  # validates cu_seqlens even when there is nothing to compute
        return out, lse
    k, v = (k, v) if k.numel() else (q, q)
    al = _alignment(vl, q, k, v, out)
    use_tma = _use_tma(q, k, v, vl, _largest_key_block(config))
    split = split_head_dim(q.shape[-1])
    if use_tma:
        descs = _pair_descriptors(k, v, KV_DESC_NAMES, split, vl)
    else:
        descs = dict.fromkeys(KV_DESC_NAMES)
    args = dict(
        Q=q, K=k, V=v, Out=out, Lse=lse, **descs, USE_TMA=use_tma,
        **_named("q", q, vl, al), **_named_kv("k", k, vl, al), **_named_kv("v", v, vl, al),
        **_named("o", out, vl, al), ALIGN=al, RAW_MAX=bias is None and problem.scale > 0,
        **_stride_kw("l", "zhm", _lse_strides(lse, vl)),
    )  # fmt: skip
    common = _prepare(q, problem, mask, bias, config, rows_are_queries=True)
    if mask is not None:
        tiles = _tile_lists(common.kwargs["Flags"], problem, common.kwargs["MASK_BLOCK"])
        common.kwargs.update(Flags=tiles, **_stride_kw("f", "zhmn", _broadcast(tiles)))
    stages = _list_stages(split, q, bias, common) if mask is not None else (None, 2)
    args.update(zip(("CLEAN_STAGES", "REST_STAGES"), stages, strict=True))
    if config is not None:
        _set_kv_block_shapes({**descs, **common.kwargs, "BLOCK_INNER": config.block_inner})
    retry = mask is not None and stages != (1, 1)
    try:
        _launch(
            _fwd, common.grid, config, fallback=not retry, Work=common.work, **args,
            **common.kwargs,
        )  # fmt: skip
    except OutOfResources:
        if not retry:
            raise
        # the list loops' tiles, pipelined, did not fit any config: load them unpipelined
        args.update(CLEAN_STAGES=1, REST_STAGES=1)
        _launch(_fwd, common.grid, config, Work=common.work, **args, **common.kwargs)
    return out, lse


def _list_stages(
    split: HeadDimSplit, q: torch.Tensor, bias: torch.Tensor | None, common: _Common
) -> tuple[int | None, int]:
    """First guess at the pipeline stages of the forward's two mask-list loops (clean tiles,
    rest): (None, 2) - the config's stages, then 2 - or (1, 1). Each iteration loads a whole
    mask block of keys (K and V, the mask and bias tiles), and pipelining that can need more
    shared memory than sm90's 227 KiB. Compiled for sm90, pipelined, every config asked for
    229-241 KiB at D = 192 in bf16 (with or without a bias), 322-330 KiB at D = 256, and
    228-240 KiB at D = 112 with a float32 bias; D = 128 fitted with a bf16 bias (192 KiB) and
    without one (164-176 KiB). So 16-bit inputs take (1, 1) past LIST_STAGE_WIDTH lanes or
    LIST_STAGE_BYTES an iteration (D = 128 with a bf16 bias: 112 KiB; with a float32 one:
    144 KiB). float32 (IEEE dots) keeps (None, 2): `flash_forward` retries a launch that runs
    out of shared memory with (1, 1)."""
    if q.element_size() > 2:
        return None, 2
    keys, rows = common.kwargs["MASK_BLOCK"], common.kwargs["BLOCK_OUTER"]
    width = split.d0 + (split.d1 if split.has_d1 else 0)
    bias_size = bias.element_size() if bias is not None else 0
    per_iteration = keys * (2 * width * q.element_size() + rows * (1 + bias_size))
    if width <= LIST_STAGE_WIDTH and per_iteration <= LIST_STAGE_BYTES:
        return None, 2
    return 1, 1


def _tile_codes(mask: torch.Tensor, problem: FlashProblem, block: int) -> torch.Tensor:
    """Per `block x block` tile of a (Bm, Hm, Lqm, Lkm) bool mask (gqa) its code (`_flash_mask`:
    TILE_NONE, TILE_SOME, TILE_ALL; nonzero: the tile has a True): (Bm, Hm, R, nk) uint8 with
    R = 1 for a broadcast query dim, else ceil(Lq / block), and nk = ceil(Lk / block). On the
    device, one read of the mask."""
    bm, hm, lqm, _ = mask.shape
    rows = 1 if lqm == 1 else triton.cdiv(problem.seqlen_q, block)
    num_tiles = triton.cdiv(problem.seqlen_k, block)
    codes = torch.empty((bm, hm, rows, num_tiles), dtype=torch.uint8, device=mask.device)
    if codes.numel():
        m = mask.view(torch.uint8)
        _tile_codes_kernel[(num_tiles, rows, bm * hm)](
            m, codes, problem.seqlen_q, problem.seqlen_k, hm, *_broadcast(m),
            *codes.stride()[:3], BLOCK=block, WIDE=block * max(m.stride()) >= 2**31,
            num_warps=8,  # H200, 67 MB mask: 30.3 us against 33.5 at 4 (ci/notes_flash.md)
        )  # fmt: skip
    return codes


def _tile_lists(codes: torch.Tensor, problem: FlashProblem, block: int) -> torch.Tensor:
    """The forward's key tiles to visit per query row block, from `_tile_codes` codes
    (Bm, Hm, R, nk): (Bm, Hm, R', 2 + nk) int32, R' = ceil(Lq / block) if causal else R.

    A row: [n_clean, n_rest, clean tiles..., unused..., rest codes (last first)]. Clean tiles
    (entries 2 .. 1 + n_clean, increasing tile index j) are all True, inside Lk and, causal,
    wholly visible to every row of the block: the forward visits them without any mask. The
    rest (entries 1 + nk, nk, ..., downwards, increasing j) have a True and need bounds, causal
    or mask checks; each is 2 * j + 1 when its mask elements must be read (not all True), else
    2 * j. Tiles with no True, and causal tiles past the block's last visible key, are left
    out. On the device (no host read)."""
    bm, hm, rows, num_tiles = codes.shape
    if problem.causal:
        rows = triton.cdiv(problem.seqlen_q, block)
    lists = torch.empty((bm, hm, rows, 2 + num_tiles), dtype=torch.int32, device=codes.device)
    _tile_lists_kernel[(rows, bm * hm)](
        codes, lists, problem.seqlen_q, problem.seqlen_k, num_tiles, hm, *_broadcast(codes)[:3],
        *lists.stride()[:3], BLOCK=block, NUM_TILES_P2=triton.next_power_of_2(max(num_tiles, 1)),
        IS_CAUSAL=problem.causal,
    )  # fmt: skip
    return lists


def _dbias_summed(bias: torch.Tensor, problem: FlashProblem) -> bool:
    """Whether dbias comes from the summed dbias kernel (`_flash_dbias`): a bias with full
    query and key dims that several (batch, query head) pairs read (batch 1 < B, or heads
    1 or Hk < Hq). Other biases take the dk/dv pass's dS buffer (`_dbias_buffer`), which then
    holds no more than dbias itself or is summed over a size-1 query or key dim."""
    full = bias.shape[2] != 1 and bias.shape[3] != 1
    shared = bias.shape[0] < problem.batch or bias.shape[1] < problem.num_q_heads
    return full and shared


def _dbias_outer(dtype: torch.dtype, interpreter: bool) -> int:
    """Query rows of a summed dbias tile (`_flash_dbias`). Compiled for sm90 (triton 3.6, D =
    128, no GPU), per DBIAS config: 16-bit inputs at 64 rows use 214-255 registers and spill
    0-20 bytes; float32 spills 2-21 KB at 64 rows, and at 32 rows 0-24 bytes (2.3 KB at the
    two widest configs)."""
    if interpreter:
        return INTERPRETER_BLOCK
    return 32 if dtype == torch.float32 else 64


def _summed_dbias(
    shared: dict, problem: FlashProblem, bias: torch.Tensor, common: _Common
) -> torch.Tensor:
    """dbias in the bias's shape and dtype from the summed dbias kernel. `shared`: the
    backward's tensor and stride arguments; `common`: the dq pass's, whose tile codes (its
    MASK_BLOCK is a multiple of every dbias tile side) the kernel reads as flags."""
    q = shared["Q"]
    dbias = torch.empty(bias.shape, dtype=bias.dtype, device=bias.device)
    interpreter = interpreter_active() or q.device.type == "cpu"
    outer = _dbias_outer(q.dtype, interpreter)
    bb, hb = bias.shape[:2]
    names = [
        "Mask", "Bias", "Flags", "seqlen_q", "seqlen_k", "len_bucket", "group", "mask_head_div",
        "qk_scale", "HEAD_DIM", "HEAD_D0", "HEAD_D1", "HAS_D1", "MASK_BLOCK", "IS_CAUSAL",
        "HAS_MASK", "DOT_PREC", *(f"stride_{x}{axis}" for x in "mbf" for axis in "zhmn"),
    ]  # fmt: skip
    args = {**shared, **{name: common.kwargs[name] for name in names}}
    del args["scale"]  # dS needs no softmax scale beyond qk_scale
    num_m = triton.cdiv(problem.seqlen_q, outer)

    def grid(meta: dict) -> tuple[int, int, int]:
        return (num_m * triton.cdiv(problem.seqlen_k, meta["BLOCK_INNER"]), bb * hb, 1)

    _launch(
        _dbias, grid, None,
        DB=dbias, **_stride_kw("db", "zhmn", dbias.stride()), bias_heads=hb,
        batch_reads=problem.batch // bb, head_reads=problem.num_q_heads // hb,
        BLOCK_OUTER=outer, GROUP_M=GROUP_M, **args,
    )  # fmt: skip
    return dbias


def _dbias_buffer(
    q: torch.Tensor, problem: FlashProblem, bias: torch.Tensor, outer: int, masked: bool
) -> tuple[torch.Tensor, int]:
    """float32 (B, Hq, Lq or 1, Lk or number of KV blocks) buffer and its DBIAS_MODE;
    uninitialised where the dk/dv pass writes every element (`_dbias_written`), else zeros
    (skipped tiles hold dS = 0). For a (1, 1, L, L) bias at B = 1, Hq = 16, L = 8192 that
    skips a 4.3 GB memset."""
    reduce_q = bias.shape[2] == 1
    reduce_k = bias.shape[3] == 1
    rows = 1 if reduce_q else problem.seqlen_q
    cols = triton.cdiv(problem.seqlen_k, outer) if reduce_k else problem.seqlen_k
    mode = {(False, False): 1, (True, False): 2, (False, True): 3, (True, True): 4}
    alloc = torch.empty if _dbias_written(bias, problem, masked) else torch.zeros
    buf = alloc(
        (problem.batch, problem.num_q_heads, rows, cols), dtype=torch.float32, device=q.device
    )
    return buf, mode[(reduce_q, reduce_k)]


def _dbias_written(bias: torch.Tensor, problem: FlashProblem, masked: bool) -> bool:
    """Whether the dk/dv pass writes every element of the dbias buffer: modes 2 and 4 (query
    dim summed) store each key block's sums once; modes 1 and 3 store every tile they visit,
    which is every tile unless causal masking or a mask skips some."""
    return bias.shape[2] == 1 or not (problem.causal or masked)


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
    """dq, dk, dv (input dtypes, summed over each query-head group) and dbias (bias's shape).
    The dk/dv pass loads its query tiles' Q and dO, the dq pass its key tiles' K and V, through
    TMA descriptors as `tma_policy` says (each pass on its own: both operands TMA-legal and
    at least the pass's largest inner block of rows); the results are bitwise the same either
    way."""
    vl = problem.is_varlen
    g = problem.group
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if g == 1:
        dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
        dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    else:
        shape = list(k.shape)
        shape[1] = problem.num_q_heads
        dk = torch.empty(shape, dtype=torch.float32, device=k.device)
        dv = torch.empty(shape, dtype=torch.float32, device=k.device)
    dbias = None
    if q.numel() == 0 or k.numel() == 0:
        if vl:
            problem.lengths()  # validates cu_seqlens even when there is nothing to compute
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
    lse_strides = _stride_kw("l", "zhm", _lse_strides(lse, vl))
    al = _alignment(vl, q, k, v, do, dq, dk, dv)
    shared = dict(
        Q=q, K=k, V=v, DO=do, Lse=lse, Delta=delta, ALIGN=al,
        **_named("q", q, vl, al), **_named_kv("k", k, vl, al), **_named_kv("v", v, vl, al),
        **_named("do", do, vl, al), **lse_strides, scale=problem.scale,
    )  # fmt: skip
    tma_dkdv, qdo_descs = _bwd_descriptors(q, do, q, QDO_DESC_NAMES, vl, config_dkdv)
    tma_dq, kv_descs = _bwd_descriptors(k, v, q, KV_DESC_NAMES, vl, config_dq)
    common = _prepare(q, problem, mask, bias, config_dkdv, rows_are_queries=False)
    summed = need_dbias and _dbias_summed(bias, problem)
    if need_dbias and not summed:
        outer = common.kwargs["BLOCK_OUTER"]
        db_buf, mode = _dbias_buffer(q, problem, bias, outer, mask is not None)
    else:
        db_buf, mode = q, 0
    if config_dkdv is not None:
        _set_qdo_block_shapes(
            {**qdo_descs, **common.kwargs, "BLOCK_INNER": config_dkdv.block_inner}
        )
    _launch(
        _dkdv, common.grid, config_dkdv,
        DK=dk, DV=dv, DB=db_buf, Work=common.work, **qdo_descs, USE_TMA=tma_dkdv,
        **_named_kv("dk", dk, vl, al), **_named_kv("dv", dv, vl, al),
        **_stride_kw("db", "zhmn", db_buf.stride() if mode else (0, 0, 0, 0)),
        DBIAS_MODE=mode, **shared, **common.kwargs,
    )  # fmt: skip
    common = _prepare(q, problem, mask, bias, config_dq, rows_are_queries=True)
    if config_dq is not None:
        _set_kv_block_shapes({**kv_descs, **common.kwargs, "BLOCK_INNER": config_dq.block_inner})
    _launch(
        _dq, common.grid, config_dq,
        DQ=dq, Work=common.work, **kv_descs, USE_TMA=tma_dq, **_named("dq", dq, vl, al),
        **shared, **common.kwargs,
    )  # fmt: skip
    if summed:
        dbias = _summed_dbias(shared, problem, bias, common)
    elif need_dbias:
        dbias = _reduce_dbias(db_buf, bias, problem)
    return dq, _sum_group(dk, k, problem), _sum_group(dv, v, problem), dbias


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


__all__ = [
    "TMA_ENV",
    "TMA_POLICIES",
    "FlashConfig",
    "FlashProblem",
    "flash_backward",
    "flash_forward",
    "tma_policy",
]
