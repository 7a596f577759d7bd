"""Host-side helpers shared by the kernel modules: head-dim tiling, work tables, block masks.

Imports torch only (no Triton), so every function here is plain, testable host code. The
Triton cores (`_flash.py`, ...) call these to decide tile shapes and to build the small index
tensors their grids read.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from attnverify.arch import interpreter_active

MIN_DOT_TILE = 16
# start_q, len_q, start_k, len_k, block index within the sequence, head
WORK_FIELDS = 6


@dataclass(frozen=True)
class HeadDimSplit:
    """A head dim D covered by one power-of-two tile, plus an optional power-of-two remainder.

    Tile 0 covers lanes [0, d0); tile 1 (if `d1 > 0`) covers [D - d1, D), so it ends exactly at
    D and is loaded without lane masks: the lanes it shares with tile 0 are zeroed in one
    operand of each product and never stored. Only D = 8 (a single 16-lane tile) masks lanes.
    Examples: 72 = 64 + 16 (lanes 56..71), 80 = 64 + 16, 96 = 64 + 32, 136 = 128 + 16,
    200 = 128 + 128 (lanes 72..199). `d1 == 0` means a single tile.
    """

    head_dim: int
    d0: int
    d1: int

    @property
    def has_d1(self) -> bool:
        return self.d1 > 0

    @property
    def padded(self) -> int:
        return self.d0 + self.d1


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for ints (host code: `triton.cdiv` is a jit function, slow to call here)."""
    return -(-a // b)


def _pow2_at_least(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


@functools.cache
def split_head_dim(head_dim: int) -> HeadDimSplit:
    """Split `head_dim` into a power-of-two tile `d0` (the largest <= D, >= 16) and a remainder.

    The remainder, if any, gets the smallest power-of-two tile >= max(16, D - d0), so a non
    power-of-two D costs at most one small extra tile instead of padding to the next power of 2.
    Memoized (a launch asks up to 8 times; the split is immutable).
    """
    d0 = max(MIN_DOT_TILE, 1 << (head_dim.bit_length() - 1))
    rest = head_dim - d0
    d1 = max(MIN_DOT_TILE, _pow2_at_least(rest)) if rest > 0 else 0
    return HeadDimSplit(head_dim=head_dim, d0=d0, d1=d1)


def use_interpreter(x: torch.Tensor) -> bool:
    """True when kernels on `x` run through the Triton CPU interpreter."""
    return interpreter_active() or x.device.type == "cpu"


def varlen_work_table(
    seqlens_rows: Sequence[int],
    seqlens_cols: Sequence[int],
    starts_rows: Sequence[int],
    starts_cols: Sequence[int],
    block: int,
    *,
    heads: int,
    rows_are_queries: bool,
    device: torch.device,
) -> torch.Tensor:
    """Flattened (sequence, block, head) work items for a varlen grid, the heaviest first.

    One item per `block` rows of every sequence with rows, per head (for the forward and dq
    passes the rows are queries, for the dk/dv pass keys). The work of an item is the length
    of the other side. Items run heaviest first over all heads (longest-processing-time
    order), so skewed batches (one 8k image and many 256-token ones) leave no long block for
    the last wave; items of equal work run head by head, a head's blocks together, so they
    share that head's inner-loop operands (K and V; Q and dO in the dk/dv pass) through L2.
    Measured on an H100 (ci/notes_flash.md, forward): ordering heaviest first within each
    head, heads one after another, ran 1024 + 2048 + 4096 + 8192 tokens at D = 128, and
    31 x 256 + 8192 tokens at D = 72 and 128, 2% slower; running every head of an item
    together ran one 8192-token sequence 4-9% slower (L2).

    Returns:
        (P * heads, 6) int32 on `device`: start_q, len_q, start_k, len_k, block index, head.
    """
    items = []
    for n, (rows, cols) in enumerate(zip(seqlens_rows, seqlens_cols, strict=True)):
        for blk in range(-(-rows // block)):
            items.append((cols, n, blk))
    items.sort(key=lambda t: -t[0])
    table = []
    for _, n, blk in items:
        if rows_are_queries:
            lq, lk, sq, sk = seqlens_rows[n], seqlens_cols[n], starts_rows[n], starts_cols[n]
        else:
            lq, lk, sq, sk = seqlens_cols[n], seqlens_rows[n], starts_cols[n], starts_rows[n]
        table.append((sq, lq, sk, lk, blk))
    base = torch.tensor(table, dtype=torch.int32).reshape(-1, WORK_FIELDS - 1)
    count = base.shape[0]
    if count == 0:
        return torch.empty((0, WORK_FIELDS), dtype=torch.int32, device=device)
    # item i of a run of equal work [a, a + size) goes, for head h, to a * heads + h * size + i - a
    work = torch.tensor([t[0] for t in items], dtype=torch.int64)
    index = torch.arange(count)
    first = torch.ones(count, dtype=torch.bool)
    first[1:] = work[1:] != work[:-1]
    run_start = torch.cummax(torch.where(first, index, 0), 0).values
    run_size = torch.bincount(run_start, minlength=count)[run_start]
    head = torch.arange(heads).unsqueeze(1)
    pos = run_start * heads + head * run_size + index - run_start  # (heads, P)
    out = torch.empty((count * heads, WORK_FIELDS), dtype=torch.int32)
    out[pos.reshape(-1), : WORK_FIELDS - 1] = base.repeat(heads, 1)
    out[pos.reshape(-1), WORK_FIELDS - 1] = head.expand(heads, count).reshape(-1).to(torch.int32)
    return out.to(device, non_blocking=True)


def call_directly(*tensors: torch.Tensor | None) -> bool:
    """Whether a public function may run its implementation directly rather than through its
    torch custom op: eager (not compiling), no input that needs a gradient while grad mode is
    on, no active dispatch mode (fake tensors, flop counters) and only plain, non-meta
    tensors (not fake, not functorch-wrapped; subclasses such as Parameter keep the op). The
    op's dispatch is host time only: 46 of 138 us of a varlen forward's host work (launch
    excluded) on the CPU machine, which a short call cannot hide behind its kernel."""
    if torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None:
        return False
    given = [t for t in tensors if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in given):
        return False
    return all(
        type(t) is torch.Tensor
        and t.device.type != "meta"
        and not torch._C._functorch.is_functorch_wrapped_tensor(t)
        for t in given
    )


def env_choice(name: str, choices: tuple[str, ...], default: str) -> str:
    """`$name` (read now), one of `choices`; `default` when unset.

    Raises:
        ValueError: the variable holds something else (the message names it and the choices).
    """
    value = os.environ.get(name, default)
    if value not in choices:
        raise ValueError(f"${name} must be one of {', '.join(choices)}; got {value!r}")
    return value


__all__ = [
    "MIN_DOT_TILE",
    "WORK_FIELDS",
    "HeadDimSplit",
    "call_directly",
    "cdiv",
    "env_choice",
    "split_head_dim",
    "use_interpreter",
    "varlen_work_table",
]
