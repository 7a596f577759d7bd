"""Flash core, mask tile summaries: two small kernels that run before the attention kernels.

`_tile_codes_kernel` gives every BLOCK x BLOCK tile of a boolean mask a code: TILE_NONE (no
True: the tile is skipped), TILE_SOME, TILE_ALL (every element inside Lq x Lk is True). The
backward reads the codes as flags (nonzero: visit the tile). `_tile_lists_kernel` turns a row
of codes into the forward's lists of tiles to visit (`_flash._tile_lists` states the layout),
so that the forward's loops load K/V unconditionally (pipelined) and only where needed read
the mask. Both run on the device (no host read) and are launched by `_flash`.
"""

from __future__ import annotations

import triton
import triton.language as tl

TILE_NONE, TILE_SOME, TILE_ALL = 0, 1, 2
# the same codes as the kernels see them (a jit function reads only constexpr globals)
_NONE, _SOME, _ALL = tl.constexpr(TILE_NONE), tl.constexpr(TILE_SOME), tl.constexpr(TILE_ALL)


@triton.jit
def _tile_codes_kernel(
    Mask, Codes, len_q, len_k, heads,
    stride_mz, stride_mh, stride_mm, stride_mn, stride_cz, stride_ch, stride_cr,
    BLOCK: tl.constexpr, WIDE: tl.constexpr,
):  # fmt: skip
    """Program (j, r, z * heads + h): the code of the tile of rows [r * BLOCK, ...) and keys
    [j * BLOCK, ...) of mask (z, h) (uint8 view of a bool (Bm, Hm, Lqm, Lkm) mask; a broadcast
    dim has stride 0, so the tile repeats its one row or column). Elements past Lq or Lk do
    not count. One read of the tile, 32-bit in-tile offsets unless WIDE; "any" and "all"
    as max and min. On an H200, #6's 67 MB bench mask: 30 us (2.2 TB/s) at 8 warps, where
    a sum per element at 64-bit offsets took 55 us (ci/notes_flash.md)."""
    j, r, zh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    z = zh // heads
    h = zh % heads
    offs = tl.arange(0, BLOCK)
    inside = (r * BLOCK + offs < len_q)[:, None] & (j * BLOCK + offs < len_k)[None, :]
    corner = Mask + z.to(tl.int64) * stride_mz + h.to(tl.int64) * stride_mh
    corner += (r * BLOCK).to(tl.int64) * stride_mm + (j * BLOCK).to(tl.int64) * stride_mn
    # in-tile offsets in 32 bits unless BLOCK times a stride passes 2^31 (the host's WIDE)
    step = offs
    if WIDE:
        step = offs.to(tl.int64)
    # [BLOCK, BLOCK] of 0 / 1 (bool bytes); outside Lq x Lk: 0 for "any", 1 for "all"
    x = tl.load(corner + step[:, None] * stride_mm + step[None, :] * stride_mn,
                mask=inside, other=0)  # fmt: skip
    any_true = tl.max(tl.max(x, 1), 0) != 0
    all_true = tl.min(tl.min(tl.where(inside, x, 1), 1), 0) != 0
    code = tl.where(any_true, tl.where(all_true, _ALL, _SOME), _NONE)
    out = Codes + z.to(tl.int64) * stride_cz + h.to(tl.int64) * stride_ch + r * stride_cr + j
    tl.store(out, code.to(tl.uint8))


@triton.jit
def _tile_lists_kernel(
    Codes, Lists, len_q, len_k, num_tiles, heads,
    stride_cz, stride_ch, stride_cr, stride_lz, stride_lh, stride_lr,
    BLOCK: tl.constexpr, NUM_TILES_P2: tl.constexpr, IS_CAUSAL: tl.constexpr,
):  # fmt: skip
    """Program (r, z * heads + h): the forward's lists of row block r of mask (z, h) from its
    row of codes (stride_cr 0: one row of codes serves every row block). Layout in
    `_flash._tile_lists`."""
    r, zh = tl.program_id(0), tl.program_id(1)
    z = zh // heads
    h = zh % heads
    j = tl.arange(0, NUM_TILES_P2)
    codes_row = Codes + z.to(tl.int64) * stride_cz + h.to(tl.int64) * stride_ch + r * stride_cr
    # [NUM_TILES_P2]
    code = tl.load(codes_row + j, mask=j < num_tiles, other=_NONE)
    active = code != _NONE
    clean = (code == _ALL) & ((j + 1) * BLOCK <= len_k)
    if IS_CAUSAL:
        # bottom-right: row i sees key t iff t <= i + Lk - Lq
        shift = len_k - len_q
        last_row = tl.minimum((r + 1) * BLOCK, len_q) - 1
        active = active & (j * BLOCK < tl.minimum(tl.maximum(last_row + 1 + shift, 0), len_k))
        clean = clean & ((j + 1) * BLOCK - 1 <= r * BLOCK + shift)
    clean = clean & active
    rest = active & (clean == 0)
    out = Lists + z.to(tl.int64) * stride_lz + h.to(tl.int64) * stride_lh + r * stride_lr
    at_clean = tl.cumsum(clean.to(tl.int32), 0) + 1  # entries 2 .. from the front
    at_rest = num_tiles - tl.cumsum(rest.to(tl.int32), 0) + 2  # from the back
    tl.store(out + at_clean, j, mask=clean)
    tl.store(out + at_rest, 2 * j + (code == _SOME).to(tl.int32), mask=rest)
    tl.store(out, tl.sum(clean.to(tl.int32), 0))
    tl.store(out + 1, tl.sum(rest.to(tl.int32), 0))


__all__ = ["TILE_ALL", "TILE_NONE", "TILE_SOME"]
