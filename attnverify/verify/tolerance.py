"""Tolerance policy: every number the verifier compares with lives in this file.

A quantity (out, lse, dq, dk, dv, dbias) of an implementation passes when all of these hold,
each against the float64 oracle `ref` (see `attnverify.verify.compare`):

(a) exact rules
    - NaN/Inf pattern: where `ref` is NaN/+-Inf the implementation has the same; where `ref` is
      finite the implementation is finite;
    - exact zeros: where `ref` is exactly 0 (empty rows: out 0, gradients through them 0; keys no
      query sees: dk = dv = 0; masked dbias entries) the implementation is exactly 0. Random
      continuous inputs never give an exact float64 zero except structurally, and every
      structural zero of the float64 oracle is an exact zero of any correct kernel. Not applied
      to lse (its -inf is covered by the NaN/Inf pattern);
(b) max-abs ratio rule (FlashAttention's):
        max|impl - ref| <= ratio * max|baseline - ref| + floor,
    baseline = the oracle in the implementation's precision (see each variant spec), and
    floor = eps(quantity dtype) * M * (floor_ulps + logit_ulps * max|lse|), M the largest
    absolute summand behind the quantity (spec `magnitudes`: P|V| for out, scale * C|K| for dq,
    ..., at least max|ref|): a few units in the last place of the largest term, what rounding
    alone costs; it stays non-zero for quantities that cancel to ~0 (dq with a single key);
(c) relative-RMS ratio rule, the same with root-mean-square errors and rms|ref|; catches errors
    spread thinly over many elements;
(d) absolute caps: max|impl - ref| <= cap * max|ref| and rms|impl - ref| <= cap * rms|ref|,
    whatever the baseline did, so a baseline that overflowed or went NaN excuses nothing.

Lookup key: (variant, dtype, quantity, arch kind) with "*" wildcards; the most specific entry
wins. `dtype` is the case's input dtype name; arch kind is "gpu" or "interpreter".

fp32 means IEEE fp32: the fp32 floor is a few fp32 ulps, so an implementation that multiplies
in TF32 (10-bit mantissa, error ~5e-4 relative) fails by three orders of magnitude
(tests/verify/test_tolerance.py::test_tolerance_tf32_fails_fp32).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

WILDCARD = "*"
ARCH_KINDS = ("gpu", "interpreter")


@dataclass(frozen=True)
class Rule:
    """Numbers for one (variant, dtype, quantity, arch kind).

    Attributes:
        ratio: max-abs error may be this many times the baseline's (rule b).
        floor_ulps: floor of rule (b)/(c) in ulps of the quantity's dtype times max|ref|.
        rms_ratio: relative-RMS error may be this many times the baseline's (rule c).
        cap: absolute cap relative to max|ref| (max-abs) and rms|ref| (RMS) (rule d).
        logit_ulps: extra floor ulps per unit of max|lse| (gradients in fp32: a kernel's
            backward recomputes P = exp(s - lse) from the stored lse, which costs
            eps * (|s| + |lse|) relative in every p; the autograd baseline never does that).
    """

    ratio: float
    floor_ulps: float
    rms_ratio: float
    cap: float
    logit_ulps: float = 0.0


# Evidence for every number is in the comment above its entry. "flash-emulation" is
# `tests/verify/test_tolerance.py::flash_emulation`: a blocked online-softmax implementation in
# torch that does what our Triton kernels do (fp32 scores and accumulators, exp2 with log2(e)
# folded into the scale, P rounded to the input dtype before P @ V, the output rounded once).
# Its worst observed ratios over the test's cases are quoted as "seen".
RULES: dict[tuple[str, str, str, str], Rule] = {
    # Forward output: FlashAttention's tests use 2x the same-precision PyTorch error
    # (flash-attention tests/test_flash_attn.py, `(out - out_ref).abs().max() <= 2 * ...`).
    # floor_ulps 2: FA hopper tests add 2x the rounding error of the reference in the output
    # dtype (`fwd_atol = 2 * (out_ref + 0.3 - 0.3 - out_ref).abs().max()`); rounding alone costs
    # 0.5 ulp. cap 0.1: no correct fp16/bf16 kernel comes near 10% of max|out| (flash-emulation
    # seen <= 1.2e-2 in bf16 on peaked inputs); a NaN/overflowed baseline cannot lift the bound
    # beyond it.
    ("*", "*", "out", "*"): Rule(ratio=2.0, floor_ulps=2.0, rms_ratio=2.0, cap=0.1),
    # lse: kernels return float32 lse computed from fp32 scores, so the fp16/bf16 baseline (lse
    # in the input dtype) is 100x looser than the kernel's real error; ratio 2 as for out.
    ("*", "*", "lse", "*"): Rule(ratio=2.0, floor_ulps=4.0, rms_ratio=2.0, cap=0.05),
    # Gradients: FlashAttention's backward tests allow 2-3x (hopper tests use rtol 3 for dq/dk/dv
    # in bf16). dS = P * (dP - delta) cancels, so errors relative to max|dq| are larger than for
    # out: cap 0.2.
    ("*", "*", "dq", "*"): Rule(ratio=3.0, floor_ulps=4.0, rms_ratio=3.0, cap=0.2),
    ("*", "*", "dk", "*"): Rule(ratio=3.0, floor_ulps=4.0, rms_ratio=3.0, cap=0.2),
    ("*", "*", "dv", "*"): Rule(ratio=3.0, floor_ulps=4.0, rms_ratio=3.0, cap=0.2),
    # dbias = sum of dS over broadcast dims: the kernel's reduction order (atomics or a second
    # pass in fp32) differs from the baseline's; ratio 3 as for the other gradients.
    ("*", "*", "dbias", "*"): Rule(ratio=3.0, floor_ulps=4.0, rms_ratio=3.0, cap=0.2),
    # fp32 inputs: baseline = the oracle in fp32, error ~1e-7 relative. An IEEE fp32 kernel
    # reorders sums and uses exp2(x * log2e): flash-emulation seen max ratio <= 1.6 forward; the
    # floor of 8 fp32 ulps (~1e-6 x max|ref|) keeps tiny-baseline cases (Lk = 1) passable while
    # TF32 (5e-4 relative) fails by 500x.
    ("*", "float32", "out", "*"): Rule(
        ratio=2.0, floor_ulps=8.0, rms_ratio=2.0, cap=1e-4, logit_ulps=2.0
    ),
    ("*", "float32", "lse", "*"): Rule(
        ratio=2.0, floor_ulps=8.0, rms_ratio=2.0, cap=1e-4, logit_ulps=2.0
    ),
    ("*", "float32", "dq", "*"): Rule(
        ratio=3.0, floor_ulps=16.0, rms_ratio=3.0, cap=1e-3, logit_ulps=2.0
    ),
    ("*", "float32", "dk", "*"): Rule(
        ratio=3.0, floor_ulps=16.0, rms_ratio=3.0, cap=1e-3, logit_ulps=2.0
    ),
    ("*", "float32", "dv", "*"): Rule(
        ratio=3.0, floor_ulps=16.0, rms_ratio=3.0, cap=1e-3, logit_ulps=2.0
    ),
    ("*", "float32", "dbias", "*"): Rule(
        ratio=3.0, floor_ulps=16.0, rms_ratio=3.0, cap=1e-3, logit_ulps=2.0
    ),
    # fp8: baseline = dequantized inputs in fp32 with P rounded through the fp8 dtype of V
    # (flash-attention hopper/test_flash_attn.py rounds P the same way). A kernel may round P
    # after a different max (tile-local running max) or after scaling P into the fp8 range, so
    # its rounding of each p differs from the baseline's by up to one fp8 ulp: ratio 3
    # (flash-emulation with tile-local max seen <= 1.9). cap 0.25: e5m2 P carries 2 mantissa
    # bits (12.5% per element).
    ("fp8", "*", "out", "*"): Rule(ratio=3.0, floor_ulps=2.0, rms_ratio=3.0, cap=0.25),
    ("fp8", "*", "lse", "*"): Rule(ratio=3.0, floor_ulps=8.0, rms_ratio=3.0, cap=1e-3),
    # merge: baseline computes in fp32 (kernels merge in fp32) and rounds out to its dtype, so
    # the baseline error is the output rounding itself; floor 2 ulps as for out.
    ("merge", "*", "out", "*"): Rule(ratio=2.0, floor_ulps=2.0, rms_ratio=2.0, cap=0.01),
    ("merge", "*", "lse", "*"): Rule(ratio=2.0, floor_ulps=8.0, rms_ratio=2.0, cap=1e-5),
}


def arch_kind(device: torch.device | str | None, *, interpreter: bool | None = None) -> str:
    """ "interpreter" for a CPU device (Triton's interpreter), else "gpu"."""
    if interpreter is not None:
        return "interpreter" if interpreter else "gpu"
    dev = torch.device(device) if device is not None else torch.device("cpu")
    return "interpreter" if dev.type == "cpu" else "gpu"


def lookup(variant: str, dtype: str, quantity: str, arch: str = "gpu") -> Rule:
    """The most specific rule for (variant, dtype, quantity, arch kind).

    Raises:
        KeyError: no rule matches (every quantity a spec compares has a wildcard entry).
    """
    best: Rule | None = None
    best_score = -1
    for (v, d, q, a), rule in RULES.items():
        key = (v, d, q, a)
        want = (variant, dtype, quantity, arch)
        if all(k in (WILDCARD, w) for k, w in zip(key, want, strict=True)):
            score = sum(k != WILDCARD for k in key)
            if score > best_score:
                best, best_score = rule, score
    if best is None:
        raise KeyError(f"no tolerance rule for {(variant, dtype, quantity, arch)}")
    return best


def eps(dtype: torch.dtype) -> float:
    """Machine epsilon of a floating dtype (float64 for non-floating dtypes)."""
    if not dtype.is_floating_point:
        dtype = torch.float64
    return float(torch.finfo(dtype).eps)


__all__ = ["ARCH_KINDS", "RULES", "WILDCARD", "Rule", "arch_kind", "eps", "lookup"]
