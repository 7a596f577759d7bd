"""exp2 of a score tile with part of the work moved off the special-function unit (NVIDIA).

Softmax computes one exp2 per score. On Hopper the multi-function unit (MUFU) retires 16 exp2
per clock per SM, 1/8 of the FMA rate, so at fp8 speeds the exponentials of a 128 x 128 score
tile take about as long as its two matrix products. `exp2_tile` with `MIXED` computes three
elements of every four with `ex2.approx.ftz.f32` (what `tl.math.exp2` emits) and the fourth
with a polynomial on the FMA pipe: for x >= -127,

    2**x = 2**j * p(f),  j = floor(x),  f = x - j in [0, 1),
    p(f) = 1 + f*(c1 + f*(c2 + f*(c3 + f*(c4 + f*c5)))),  p(0) = 1, p(1) = 2,

with c1..c5 a minimax fit of the relative error on [0, 1] (`POLY_COEFFS`, float32), and 2**j
built in the exponent field. The relative error is below `POLY_MAX_REL_ERROR`, the accuracy of
`ex2.approx` itself, so results are as accurate as `tl.math.exp2`'s (not bitwise equal).
Special values match `ex2.approx.ftz`: x <= -126 (and -inf) give +0, NaN stays NaN; x must be
< 128 (softmax feeds x = score - row max <= ~0).

The idea of emulating part of the exponentials with FMA polynomials is FlashAttention-4's
(Blackwell); this is an independent fit and sequence. Inline PTX: NVIDIA only, never under the
interpreter (callers pass `MIXED` False there and get `tl.math.exp2`).
"""

from __future__ import annotations

import struct

import triton
import triton.language as tl

# c1..c5 of p(f), float32; p(0) = 1 and p(1) = 2 hold by construction (c1 + ... + c5 = 1 up to
# float32 rounding). Minimax relative error of the real-valued fit: 8.2e-8.
POLY_COEFFS = (
    0.6931516528129578,
    0.24016042053699493,
    0.05581594631075859,
    0.00899334903806448,
    0.0018786428263410926,
)
# Bound on |p(f) * 2**j / 2**x - 1| in float32 arithmetic (tests/kernels/test_exp2.py checks
# it on a bit-exact emulation of the sequence below); ex2.approx.f32's documented maximum
# relative error is 2**-22 ~ 2.4e-7.
POLY_MAX_REL_ERROR = 2.4e-7
# Elements per inline-asm call; the last of them takes the polynomial.
MIXED_PACK = 4


def _f32_hex(value: float) -> str:
    """A float32 constant as PTX writes it (0f + 8 hex digits)."""
    return "0f" + struct.pack(">f", value).hex().upper()


def _mixed_asm() -> str:
    """PTX for MIXED_PACK inputs $4..$7 -> outputs $0..$3: ex2.approx for the first three,
    the polynomial for the last (see the module docstring)."""
    c1, c2, c3, c4, c5 = (_f32_hex(c) for c in POLY_COEFFS)
    magic = _f32_hex(12582912.0)  # 1.5 * 2**23: adding it rounds to an integer, kept in the
    # low mantissa bits (floor with .rm rounding)
    return f"""{{
    .reg .f32 m, r, j, f, p, s;
    .reg .b32 e;
    ex2.approx.ftz.f32 $0, $4;
    ex2.approx.ftz.f32 $1, $5;
    ex2.approx.ftz.f32 $2, $6;
    max.NaN.f32 m, $7, {_f32_hex(-127.0)};
    add.rm.f32 r, m, {magic};
    sub.f32 j, r, {magic};
    sub.f32 f, m, j;
    fma.rn.f32 p, f, {c5}, {c4};
    fma.rn.f32 p, p, f, {c3};
    fma.rn.f32 p, p, f, {c2};
    fma.rn.f32 p, p, f, {c1};
    fma.rn.f32 p, p, f, {_f32_hex(1.0)};
    mov.b32 e, r;
    add.s32 e, e, 127;
    shl.b32 e, e, 23;
    mov.b32 s, e;
    mul.f32 $3, p, s;
}}"""


MIXED_ASM = tl.constexpr(_mixed_asm())


@triton.jit
def exp2_tile(x, MIXED: tl.constexpr):
    """2**x elementwise for a float32 tile x (any shape whose per-thread element count is a
    multiple of MIXED_PACK); MIXED: one element in MIXED_PACK by the FMA polynomial."""
    if MIXED:
        return tl.inline_asm_elementwise(
            MIXED_ASM, "=f,=f,=f,=f,f,f,f,f", [x], dtype=tl.float32, is_pure=True, pack=4
        )
    else:
        return tl.math.exp2(x)


__all__ = ["MIXED_PACK", "POLY_COEFFS", "POLY_MAX_REL_ERROR", "exp2_tile"]
