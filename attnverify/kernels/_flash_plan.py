"""Flash core, schedules: the varlen plan and the block-sparse tile lists, built on the device.

Both are small Triton kernels launched before the attention passes, with no host read of
cu_seqlens or of the mask (no synchronisation, nothing copied to the host):
- `varlen_plan`: the sequences ordered heaviest first (by the length of the other side), with
  the first grid item of each; the attention kernels find their sequence by binary search
  (`_flash_tiles._work_item`). Grid items are row blocks, so skewed batches (one 8k image and
  many 256-token ones) start the long sequences' blocks first.
- `mask_tile_classes` + `mask_tile_lists`: every MASK_BLOCK^2 tile classed in parallel (one
  read of the mask), then per outer block (a query block for the forward and dq passes, a KV
  block for the dk/dv pass) the tiles that hold a visible key, split into full ones (mask all
  True, in range, causally visible: run with no mask load and no bounds) and partial ones.
  Tiles whose mask block is all False appear in neither list: no loads, no math.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from attnverify.kernels._common import cdiv

PLAN_FIELDS = 5  # first item, start_q, len_q, start_k, len_k
PLAN_CHUNK = 64
LIST_HEADER = 2  # n_full, n_partial before the entries of a tile-list row (`_tile_lists`)
LIST_CHUNK = 128  # tile classes compacted per step


@triton.jit
def _varlen_plan_kernel(
    CuRows, CuCols, Plan, num_seqs, BLOCK: tl.constexpr, CHUNK: tl.constexpr,
    ROWS_ARE_QUERIES: tl.constexpr,
):  # fmt: skip
    """Plan rows of sequences [pid * CHUNK, +CHUNK): each goes to row r = its rank (heaviest
    first: longer other side, then lower index), with first item = the blocks of the rows
    ranked before it. Row N (written by the last-ranked sequence) holds the item count."""
    i = tl.program_id(0) * CHUNK + tl.arange(0, CHUNK)
    ok_i = i < num_seqs
    start_r = tl.load(CuRows + i, mask=ok_i, other=0)
    rows_i = tl.load(CuRows + i + 1, mask=ok_i, other=0) - start_r
    start_c = tl.load(CuCols + i, mask=ok_i, other=0)
    work_i = tl.load(CuCols + i + 1, mask=ok_i, other=0) - start_c
    blocks_i = (rows_i + BLOCK - 1) // BLOCK
    rank = tl.zeros([CHUNK], tl.int32)
    first = tl.zeros([CHUNK], tl.int32)
    for j0 in range(0, num_seqs, CHUNK):
        j = j0 + tl.arange(0, CHUNK)
        ok_j = j < num_seqs
        c0 = tl.load(CuCols + j, mask=ok_j, other=0)
        work_j = tl.load(CuCols + j + 1, mask=ok_j, other=0) - c0
        r0 = tl.load(CuRows + j, mask=ok_j, other=0)
        blocks_j = (tl.load(CuRows + j + 1, mask=ok_j, other=0) - r0 + BLOCK - 1) // BLOCK
        # [CHUNK (j), CHUNK (i)]: sequence j is scheduled before sequence i
        before = (work_j[:, None] > work_i[None, :]) | (
            (work_j[:, None] == work_i[None, :]) & (j[:, None] < i[None, :])
        )
        before = before & ok_j[:, None]
        rank += tl.sum(before.to(tl.int32), 0)
        first += tl.sum(tl.where(before, blocks_j[:, None], 0), 0)
    row = Plan + rank * 5
    if ROWS_ARE_QUERIES:
        sq, lq, sk, lk = start_r, rows_i, start_c, work_i
    else:
        sq, lq, sk, lk = start_c, work_i, start_r, rows_i
    tl.store(row, first, mask=ok_i)
    tl.store(row + 1, sq, mask=ok_i)
    tl.store(row + 2, lq, mask=ok_i)
    tl.store(row + 3, sk, mask=ok_i)
    tl.store(row + 4, lk, mask=ok_i)
    last = ok_i & (rank == num_seqs - 1)
    tl.store(Plan + num_seqs * 5 + tl.zeros([CHUNK], tl.int32), first + blocks_i, mask=last)


def varlen_plan(
    cu_rows: torch.Tensor, cu_cols: torch.Tensor, block: int, *, rows_are_queries: bool
) -> torch.Tensor:
    """Device-built schedule of a varlen pass whose grid items are `block` rows of a sequence.

    Args:
        cu_rows: (N+1,) int32 cu_seqlens of the side the grid walks (queries for the forward
            and dq passes, keys for the dk/dv pass); cu_cols the other side.
        block: rows per grid item.

    Returns:
        (N+1, 5) int32 on the device: row r = first item, start_q, len_q, start_k, len_k of
        the r-th heaviest sequence; row N = (item count, unused...). The grid needs at most
        `max_items(T_rows, N, block)` items.
    """
    num_seqs = cu_rows.numel() - 1
    # every row is written (ranks are a permutation); row N holds only the count
    plan = torch.empty((num_seqs + 1, PLAN_FIELDS), dtype=torch.int32, device=cu_rows.device)
    grid = (cdiv(num_seqs, PLAN_CHUNK),)
    _varlen_plan_kernel[grid](
        cu_rows, cu_cols, plan, num_seqs, BLOCK=block, CHUNK=PLAN_CHUNK,
        ROWS_ARE_QUERIES=rows_are_queries,
    )  # fmt: skip
    return plan


def max_items(total_rows: int, num_seqs: int, block: int) -> int:
    """Upper bound of sum_n ceil(L_n / block) given sum_n L_n = total_rows over N sequences."""
    return cdiv(total_rows, block) + max(num_seqs - 1, 0)


@triton.jit
def _tile_class_kernel(
    Mask, Classes, stride_mz, stride_mh, stride_mm, stride_mn, len_q, len_k, n_k_tiles,
    MASK_BLOCK: tl.constexpr, IS_CAUSAL: tl.constexpr,
):  # fmt: skip
    """Class of one MASK_BLOCK^2 tile: 0 nothing visible, 1 partly, 2 every pair visible (mask
    True, in range, causally visible). Classes: (Bm, Hm, nq, nk) uint8, contiguous."""
    pid, h, z = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    qi = pid // n_k_tiles
    ki = pid % n_k_tiles
    rows = qi * MASK_BLOCK + tl.arange(0, MASK_BLOCK)
    cols = ki * MASK_BLOCK + tl.arange(0, MASK_BLOCK)
    # [MASK_BLOCK, MASK_BLOCK]
    visible = (rows < len_q)[:, None] & (cols < len_k)[None, :]
    if IS_CAUSAL:
        visible = visible & (cols[None, :] <= rows[:, None] + len_k - len_q)
    base = Mask + z.to(tl.int64) * stride_mz + h.to(tl.int64) * stride_mh
    ptrs = base + rows.to(tl.int64)[:, None] * stride_mm + cols[None, :] * stride_mn
    live = tl.sum((tl.load(ptrs, mask=visible, other=0) != 0).to(tl.int32))
    cls = tl.where(live == MASK_BLOCK * MASK_BLOCK, 2, tl.where(live > 0, 1, 0))
    n_tiles = tl.num_programs(0)
    out = Classes + (z.to(tl.int64) * tl.num_programs(1) + h) * n_tiles + pid
    tl.store(out, cls.to(tl.uint8))


@triton.jit
def _tile_lists_kernel(
    Classes, Lists, stride_co, stride_ci, n_inner, stride_lz, stride_lh, stride_lo,
    HEADER: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    """Compact the classes of outer block `pid` into its list row: [n_full, n_partial, full
    tiles ascending ..., partial tiles descending from the row's end]."""
    o, h, z = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    nh = tl.num_programs(1)
    cls_row = Classes + (z.to(tl.int64) * nh + h) * (tl.num_programs(0) * n_inner) + o * stride_co
    row = Lists + z.to(tl.int64) * stride_lz + h.to(tl.int64) * stride_lh + o * stride_lo
    n_full = o * 0
    n_part = o * 0
    for c0 in range(0, n_inner, CHUNK):
        t = c0 + tl.arange(0, CHUNK)
        cls = tl.load(cls_row + t * stride_ci, mask=t < n_inner, other=0)
        full = (cls == 2).to(tl.int32)
        part = (cls == 1).to(tl.int32)
        tl.store(row + HEADER + n_full + tl.cumsum(full, 0) - 1, t, mask=full != 0)
        tl.store(row + HEADER + n_inner - n_part - tl.cumsum(part, 0), t, mask=part != 0)
        n_full += tl.sum(full, 0)
        n_part += tl.sum(part, 0)
    tl.store(row, n_full)
    tl.store(row + 1, n_part)


def mask_tile_classes(
    mask: torch.Tensor, seqlen_q: int, seqlen_k: int, block: int, *, causal: bool
) -> torch.Tensor:
    """Class of every `block x block` tile of the (Lq, Lk) score matrix under `mask`.

    Args:
        mask: (Bm, Hm, Lqm, Lkm) bool, True = attend; broadcast dims of size 1 (read at stride 0).
        seqlen_q, seqlen_k: Lq, Lk.
        block: MASK_BLOCK, the tile edge; every BLOCK_M / BLOCK_N of the passes divides it.
        causal: bottom-right causal: tiles above the diagonal are empty, on it partial.

    Returns:
        (Bm, Hm, ceil(Lq / block), ceil(Lk / block)) uint8: 0 nothing visible (skipped),
        1 partly visible (masked tile), 2 fully visible (no mask read, no bounds).
    """
    nq, nk = cdiv(seqlen_q, block), cdiv(seqlen_k, block)
    bm, hm = mask.shape[:2]
    classes = torch.empty((bm, hm, nq, nk), dtype=torch.uint8, device=mask.device)
    strides = [0 if n == 1 else s for n, s in zip(mask.shape, mask.stride(), strict=True)]
    _tile_class_kernel[(nq * nk, hm, bm)](
        mask.view(torch.uint8), classes, *strides, seqlen_q, seqlen_k, nk,
        MASK_BLOCK=block, IS_CAUSAL=causal,
    )  # fmt: skip
    return classes


def mask_tile_lists(classes: torch.Tensor, *, rows: bool) -> torch.Tensor:
    """Block-sparse schedule from `mask_tile_classes`.

    Args:
        classes: (Bm, Hm, nq, nk) uint8 tile classes.
        rows: True: one list row per query tile listing KV tiles (forward, dq pass);
            False: one per KV tile listing query tiles (dk/dv pass).

    Returns:
        (Bm, Hm, n_outer, 2 + n_inner) int32: per row [n_full, n_partial, entries]; full tiles
        from entry 0 up, partial ones from the last entry down (both ascending in tile index).
    """
    bm, hm, nq, nk = classes.shape
    n_outer, n_inner = (nq, nk) if rows else (nk, nq)
    lists = torch.empty(
        (bm, hm, n_outer, LIST_HEADER + n_inner), dtype=torch.int32, device=classes.device
    )
    stride_co, stride_ci = (nk, 1) if rows else (1, nk)
    _tile_lists_kernel[(n_outer, hm, bm)](
        classes, lists, stride_co, stride_ci, n_inner, *lists.stride()[:3],
        HEADER=LIST_HEADER, CHUNK=LIST_CHUNK,
    )  # fmt: skip
    return lists


def list_strides(lists: torch.Tensor) -> tuple[int, int, int]:
    """(z, h, outer) strides of a tile-list tensor, 0 on broadcast (size-1) batch/head dims."""
    bm, hm = lists.shape[:2]
    return (0 if bm == 1 else lists.stride(0), 0 if hm == 1 else lists.stride(1), lists.stride(2))


__all__ = ["list_strides", "mask_tile_classes", "mask_tile_lists", "max_items", "varlen_plan"]
