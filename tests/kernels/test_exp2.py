"""The mixed exp2 (`attnverify.kernels._exp2`): its polynomial lane, emulated bit for bit.

The inline PTX runs only on NVIDIA GPUs (the device check compares the kernels that use it
against the oracle); here a numpy emulation of the exact instruction sequence checks the fit,
the range reduction and the special values on the CPU, with the constants parsed back from
the PTX string itself.
"""

from __future__ import annotations

import re
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from attnverify.kernels._exp2 import MIXED_ASM, POLY_COEFFS, POLY_MAX_REL_ERROR

MAGIC = np.float64(12582912.0)


def _ptx_constants() -> list[float]:
    """Every float32 immediate of the PTX, in order of appearance."""
    return [
        struct.unpack(">f", bytes.fromhex(h))[0]
        for h in re.findall(r"0f([0-9A-F]{8})", str(MIXED_ASM.value))
    ]


def _fma32(a: np.ndarray, b: np.ndarray | float, c: np.ndarray | float) -> np.ndarray:
    """float32 fma: the float32 product is exact in float64; one rounding of the sum."""
    return (np.float64(a) * np.float64(b) + np.float64(c)).astype(np.float32)


def emulate(x: np.ndarray) -> np.ndarray:
    """The polynomial lane of MIXED_ASM on float32 x, instruction by instruction."""
    x = x.astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        m = np.where(np.isnan(x), x, np.maximum(x, np.float32(-127.0)))  # max.NaN.f32
        r = np.floor(m.astype(np.float64) + MAGIC).astype(np.float32)  # add.rm.f32 (exact)
        j = (r.astype(np.float64) - MAGIC).astype(np.float32)  # sub.f32 (exact)
        f = (m.astype(np.float64) - j).astype(np.float32)  # sub.f32 (exact)
        c1, c2, c3, c4, c5 = (np.float32(c) for c in POLY_COEFFS)
        p = _fma32(f, c5, c4)
        for c in (c3, c2, c1, np.float32(1.0)):
            p = _fma32(p, f, c)
        e = ((r.view(np.uint32).astype(np.uint64) + 127) << 23) & 0xFFFFFFFF  # add.s32, shl.b32
        s = e.astype(np.uint32).view(np.float32)
        return (p.astype(np.float64) * s.astype(np.float64)).astype(np.float32)  # mul.f32


def _rel_error(x: np.ndarray) -> np.ndarray:
    exact = np.exp2(x.astype(np.float32).astype(np.float64))
    return np.abs(emulate(x).astype(np.float64) / exact - 1.0)


def test_ptx_carries_the_fitted_constants() -> None:
    consts = _ptx_constants()
    assert consts[:2] == [-127.0, 12582912.0]
    # fma order in the PTX: c5 with c4, then c3, c2, c1, 1
    c1, c2, c3, c4, c5 = (float(np.float32(c)) for c in POLY_COEFFS)
    assert consts[3:9] == [c5, c4, c3, c2, c1, 1.0]
    assert str(MIXED_ASM.value).count("ex2.approx.ftz.f32") == 3


def test_relative_error_over_the_softmax_range() -> None:
    # every float32 step near the integers (where the range reduction switches) and a dense
    # grid of [-126, 0]; softmax arguments are score - row max <= ~0
    grid = np.linspace(-126.0, 0.0, 2_000_001, dtype=np.float64).astype(np.float32)
    ints = np.arange(-126, 1, dtype=np.float32)
    near = np.concatenate(
        [np.nextafter(ints, np.float32(-np.inf)), ints, np.nextafter(ints, np.float32(np.inf))]
    )
    x = np.concatenate([grid, near[near >= -126.0]])
    assert _rel_error(x).max() <= POLY_MAX_REL_ERROR


@given(st.floats(min_value=-125.5, max_value=127.0, width=32))
def test_relative_error_anywhere(x: float) -> None:
    assert _rel_error(np.array([x], dtype=np.float32))[0] <= POLY_MAX_REL_ERROR


@pytest.mark.parametrize("x", [-np.inf, -1e30, -200.0, -127.0, -126.5, -126.0000076])
def test_underflow_is_exact_zero(x: float) -> None:
    # ex2.approx.ftz flushes results below 2**-126 to +0; masked scores (-inf) must give 0
    out = emulate(np.array([x], dtype=np.float32))[0]
    assert out == 0.0 and not np.signbit(out)


def test_powers_of_two_are_exact_and_nan_propagates() -> None:
    x = np.array([0.0, -1.0, -2.0, -64.0, -126.0, 3.0], dtype=np.float32)
    np.testing.assert_array_equal(emulate(x), np.exp2(x))
    assert np.isnan(emulate(np.array([np.nan], dtype=np.float32))[0])
