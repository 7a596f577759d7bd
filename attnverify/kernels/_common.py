"""Host-side helpers shared by the kernel modules: head-dim tiling, interpreter detection.

Imports torch only (no Triton), so every function here is plain, testable host code. The
Triton cores (`_flash.py`, ...) call these to decide tile shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnverify.arch import interpreter_active

MIN_DOT_TILE = 16


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


def split_head_dim(head_dim: int) -> HeadDimSplit:
    """Split `head_dim` into a power-of-two tile `d0` (the largest <= D, >= 16) and a remainder.

    The remainder, if any, gets the smallest power-of-two tile >= max(16, D - d0), so a non
    power-of-two D costs at most one small extra tile instead of padding to the next power of 2.
    """
    d0 = max(MIN_DOT_TILE, 1 << (head_dim.bit_length() - 1))
    rest = head_dim - d0
    d1 = max(MIN_DOT_TILE, _pow2_at_least(rest)) if rest > 0 else 0
    return HeadDimSplit(head_dim=head_dim, d0=d0, d1=d1)


def use_interpreter(x: torch.Tensor) -> bool:
    """True when kernels on `x` run through the Triton CPU interpreter."""
    return interpreter_active() or x.device.type == "cpu"


__all__ = ["MIN_DOT_TILE", "HeadDimSplit", "cdiv", "split_head_dim", "use_interpreter"]
