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
    floor = eps(quantity dtype) * M * (floor_ulps + logit_ulps * S) + logit_rel * S * M, M the
    largest absolute summand behind the quantity (spec `magnitudes`: P|V| for out,
    scale * |q|.|k| + |bias| for lse, scale * C|K| for dq, ...; at least max|ref|): a few units
    in the last place of the largest term, what rounding alone costs; it stays non-zero for
    quantities that cancel to ~0 (dq with a single key, a score q.k near 0). S, the logit
    scale, is lse's M (max|lse| for variants without magnitudes); logit_rel, where an arch's
    matrix unit adds a score error of its own;
(c) relative-RMS ratio rule, the same with root-mean-square errors and rms|ref|; catches errors
    spread thinly over many elements;
(d) absolute caps: max|impl - ref| <= cap * max|ref| and rms|impl - ref| <= cap * rms|ref|,
    whatever the baseline did, so a baseline that overflowed or went NaN excuses nothing.

Lookup key: (variant, dtype, quantity, arch) with "*" wildcards; the most specific entry wins.
`dtype` is the case's input dtype name; arch is "interpreter", "gpu" (any GPU) or an arch name
such as "sm90" (that arch only, more specific than "gpu"). `arch_kind(device)` gives the arch
name of a GPU device and "interpreter" for the CPU.

fp32 means IEEE fp32: the fp32 floor is a few fp32 ulps, so an implementation that multiplies
in TF32 (10-bit mantissa, error ~5e-4 relative) fails by three orders of magnitude
(tests/verify/test_tolerance.py::test_tolerance_tf32_fails_fp32).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnverify.arch import current_arch

WILDCARD = "*"
# Arch keys besides arch names ("sm90"): any GPU, and Triton's CPU interpreter.
ARCH_KINDS = ("gpu", "interpreter")


@dataclass(frozen=True)
class Rule:
    """Numbers for one (variant, dtype, quantity, arch).

    Attributes:
        ratio: max-abs error may be this many times the baseline's (rule b).
        floor_ulps: floor of rule (b)/(c) in ulps of the quantity's dtype times max|ref|.
        rms_ratio: relative-RMS error may be this many times the baseline's (rule c).
        cap: absolute cap relative to max|ref| (max-abs) and rms|ref| (RMS) (rule d).
        logit_ulps: extra floor ulps per unit of the logit scale S (fp32: a kernel folds
            log2(e) into the scale and its backward recomputes P = exp2(s - lse) from the
            stored lse, which costs eps * S relative in every p; the autograd baseline does not).
        logit_rel: extra floor logit_rel * S * M whatever the quantity's dtype: an arch whose
            matrix unit leaves every score with an error of order logit_rel * S, which moves
            out by up to that much times its summands (sm89 / sm90 fp8 MMA).
    """

    ratio: float
    floor_ulps: float
    rms_ratio: float
    cap: float
    logit_ulps: float = 0.0
    logit_rel: float = 0.0


# Evidence for every number is in the comment above its entry. "emulation" is
# tests/verify/emulation.py: `flash_gqa` does what our Triton kernels do in torch (fp32 scores
# and accumulators, online softmax over 32-key blocks, exp2 with log2(e) folded into the scale,
# P rounded to the input dtype before P @ V, out rounded once; FlashAttention-2 backward with P
# recomputed from the fp32 lse and dS rounded before dQ/dK), `flash_fp8` the fp8 forward (P
# rounded to V's fp8 dtype per block after the running max). "seen" = the worst ratio
# (impl error / max(baseline error, floor)) over `check` runs with the ci profile on the CPU:
# emulation 300 float16 + 300 bfloat16 + 400 float32 gqa cases with gradients, 600 fp8 cases;
# our Triton kernels under TRITON_INTERPRET=1: 8-16 cases per variant and dtype. Passing needs
# seen <= ratio. The interpreter has no entries of its own: it multiplies exactly in fp32, so the
# kernels' errors there were below the GPU-oriented numbers (seen <= 1.03 in fp32, <= 0.93 fp8).
RULES: dict[tuple[str, str, str, str], Rule] = {
    # Forward output, fp16/bf16: FlashAttention's tests allow 2x the same-precision PyTorch error
    # (flash-attention tests/test_flash_attn.py: `(out - out_ref).abs().max() <= 2 * (out_pt -
    # out_ref).abs().max()`). floor 2 ulps: FA's hopper tests add 2x the output dtype's rounding
    # of the reference (`fwd_atol = 2 * (out_ref + 0.3 - 0.3 - out_ref).abs().max()`); rounding
    # alone costs 0.5 ulp. seen: emulation 0.21 (fp16) / 0.22 (bf16), kernels 0.21. cap 0.1 of
    # the largest summand: nothing correct comes near it (bf16 P rounding is ~0.4%), and a NaN or
    # overflowed fp16 baseline cannot lift the bound beyond it.
    ("*", "*", "out", "*"): Rule(ratio=2.0, floor_ulps=2.0, rms_ratio=2.0, cap=0.1),
    # lse, fp16/bf16: kernels return a float32 lse from fp32 scores, so the baseline's lse (in
    # the input dtype) is far looser than any kernel's error: seen 0.008 (emulation), 0.003
    # (kernels). ratio 2 as for out; floor 4 fp32 ulps of max|lse|.
    ("*", "*", "lse", "*"): Rule(ratio=2.0, floor_ulps=4.0, rms_ratio=2.0, cap=0.05),
    # Gradients, fp16/bf16: FlashAttention's backward tests allow 2-3x (hopper tests: rtol 3 on
    # dq/dk/dv). seen: emulation dq 0.15, dk 0.16, dv 0.17; kernels <= 0.22. The floor is 4 ulps
    # of the largest summand (spec `magnitudes`), so cancelling gradients keep a real floor.
    ("*", "*", "dq", "*"): Rule(ratio=3.0, floor_ulps=4.0, rms_ratio=3.0, cap=0.2),
    ("*", "*", "dk", "*"): Rule(ratio=3.0, floor_ulps=4.0, rms_ratio=3.0, cap=0.2),
    ("*", "*", "dv", "*"): Rule(ratio=3.0, floor_ulps=4.0, rms_ratio=3.0, cap=0.2),
    # dbias = dS summed over the bias's broadcast dims: with Lkm = 1 it cancels to ~0 (rows of
    # dS sum to 0), so it is judged against the floor: seen 0.88 (bf16 emulation), 0.31 kernels.
    ("*", "*", "dbias", "*"): Rule(ratio=3.0, floor_ulps=4.0, rms_ratio=3.0, cap=0.2),
    # fp32 = IEEE fp32. Baseline = the oracle in fp32 (error ~1e-7 relative). An fp32 kernel
    # folds log2(e) into the scale and, backward, recomputes P = exp2(s - lse) from the stored
    # lse: both cost eps * |s| relative in every p, which the autograd baseline does not pay.
    # Evidence: without logit_ulps the emulation failed at ratio 1.23 (out, peaked q/k with
    # scale 0.5, |s| ~ 100) and 2.48 (dv, same inputs); with logit_ulps = 2 (floor grows by 2
    # ulps per unit of S) seen: out 0.56, lse 0.93, dq 0.19, dk 0.14, dv 0.62, dbias 0.06 (400
    # ci + 33 device-profile cases). Our gqa kernel failed lse at 4.78 on D = 136, Lq = Lk = 1
    # when the floor scaled with |lse| = 0.018: its q.k (summands ~1, sum 0.2) rounds at
    # eps * sum|q_i k_i|, hence S = the summands. TF32 (q, k, v rounded to 10 mantissa bits,
    # error ~5e-4 * S relative) still fails by > 10x: 78 of 80 drawn fp32 cases fail, the 2
    # passing are fully masked (nothing computed); test_tolerance_tf32_fails_fp32.
    # floor 8 ulps forward / 16 backward: the Lk = 1 and dq-with-one-key cases, where the fp32
    # baseline is exact and any reordering is not. cap 1e-4 / 1e-3 of the largest summand.
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
    # fp8: baseline = dequantized inputs in fp32 with P rounded through V's fp8 dtype (as
    # flash-attention hopper/test_flash_attn.py does for fp8). A kernel rounds P after its
    # block-local running max, so each p's rounding differs from the baseline's by up to one fp8
    # ulp (6% e4m3, 12.5% e5m2). Emulation over 1818 ci cases: worst 1.68 (e4m3), 1.23 (e5m2);
    # one e5m2 case (seed 7 draws: Lk = 160, scale 0.05, outliers) reached 2.50 in both the
    # emulation and our kernel under the interpreter (identical errors). ratio 3 covers it with
    # a 1.2x margin. cap 0.25: e5m2 P carries 2 mantissa bits.
    ("fp8", "*", "out", "*"): Rule(ratio=3.0, floor_ulps=2.0, rms_ratio=3.0, cap=0.25),
    # fp8 lse: fp32 from dequantized fp32 scores in both; seen 1.09 (emulation, 1818 cases),
    # 0.14 kernels.
    ("fp8", "*", "lse", "*"): Rule(ratio=3.0, floor_ulps=8.0, rms_ratio=3.0, cap=1e-3),
    # fp8 lse on Ada / Hopper (sm89, sm90): their fp8 tensor-core MMA does not accumulate in full
    # fp32 (DeepSeek-V3 report, sec. 3.3.2: about 14 mantissa bits retained on H800): inside each
    # K = 32 MMA step the products are aligned to the largest one and cut, so every score
    # carries an error of order 2^-13 of its summands' magnitude S per step, and lse inherits
    # it; the fp32 baseline cannot model that, and promoting the accumulator every 32 products
    # (QK_ACC_CHUNK) only divides it by 2-7 at a 20% speed cost. Evidence (H200, triton 3.6,
    # ci/notes_fp8.md and the lead's x2 run, 2026-11-21): 252 + 30 harness cases; out passes
    # everywhere (worst ratio 1.27); the floor lse needs, in fp32 ulps of S: median 640, p90
    # 3483, max 9815 (2^-9.7 S; outlier inputs, D = 128, scale 0.5). An earlier 1024 (2^-13 S)
    # failed 28 of 126 cases. floor_ulps 16384 (2^-9 S) covers the worst seen with a 1.7x
    # margin; a 2% scale error still fails lse in 61 of 63 drawn cases (a 1% one in 55 of 63)
    # (tests/verify/test_tolerance.py::test_tolerance_sm90_fp8_lse_still_catches_a_scale_error).
    ("fp8", "*", "lse", "sm89"): Rule(ratio=3.0, floor_ulps=16384.0, rms_ratio=3.0, cap=1e-3),
    ("fp8", "*", "lse", "sm90"): Rule(ratio=3.0, floor_ulps=16384.0, rms_ratio=3.0, cap=1e-3),
    # fp8 out on Ada / Hopper: the same score error moves each p by a factor exp(ds), so out by
    # up to 2 * max|ds| * M (M = P|V|); the fp32 baseline has none of it. It shows where S is
    # large: H100 (session 17), 86 device-profile cases, one failed the generic rule - e4m3,
    # D = 256, "peaked", scale 0.5, S = 1380, M = 4.28: out error 0.207 against 3x the
    # baseline's 0.037, over a whole row (0.12-0.21 in its largest columns, the baseline's
    # 0.007-0.025 there), deterministic over 5 runs, and the same case passes on the CPU
    # (exact fp32 sums) at 0.58x the bound; its lse error, 2.4e-4 S, is the score error. Over
    # the 86 cases the error past 3x the baseline's was at most 1.6e-5 S M (three peaked
    # D = 256 cases). logit_rel 2^-14 (6.1e-5) is 3.7x that (the failing case's bound becomes
    # 0.537 in its device replay, 2.6x its error) and adds 0.06% of M at S = 10 (normal
    # inputs). Its price is power where S is large: a planted 10% V-scale error fails out in
    # all 33 CI draws under it as under the generic rule, but in 27 under 2^-13 and 23 under
    # 2^-12 (outlier and peaked inputs, S in the thousands)
    # (tests/verify/test_tolerance.py::test_tolerance_sm90_fp8_out_still_catches_v_errors).
    # sm89 by the same fp8 MMA, as its lse entry; no sm89 device was measured.
    ("fp8", "*", "out", "sm89"): Rule(
        ratio=3.0, floor_ulps=2.0, rms_ratio=3.0, cap=0.25, logit_rel=2.0**-14
    ),
    ("fp8", "*", "out", "sm90"): Rule(
        ratio=3.0, floor_ulps=2.0, rms_ratio=3.0, cap=0.25, logit_rel=2.0**-14
    ),
    # merge: baseline merges in fp32 (as kernels do) and rounds out to its dtype, so its error is
    # the output rounding itself; floor 2 ulps as for out. seen (kernel): out 0.19, lse 0.05.
    # cap 1% of the largest state: a merge only reweights states.
    ("merge", "*", "out", "*"): Rule(ratio=2.0, floor_ulps=2.0, rms_ratio=2.0, cap=0.01),
    ("merge", "*", "lse", "*"): Rule(ratio=2.0, floor_ulps=8.0, rms_ratio=2.0, cap=1e-5),
}


# Two float64 computations of the same attention (the torch oracle against the independent
# numpy/scipy cross-oracle in tests/reference, or against itself rearranged: per sequence,
# gathered pages, split and merged) agree to this, relative to max(1, max|value|) and to the
# largest |score| where it exceeds 1 (rounding a score s costs ~eps64 * |s| in exp(s - lse)).
# Evidence: worst seen over the reference tests 3.6e-15 (gqa out), about 4500 float64 ulps
# below the bound; fp8 values near the format max with unit descales (|s| ~ 1e10 in e5m2)
# separate two correct computations by 9.4e-5 on outputs ~6e4, inside the score-scaled bound.
ORACLE_AGREEMENT = 1e-12


def arch_kind(device: torch.device | str | None, *, interpreter: bool | None = None) -> str:
    """ "interpreter" for a CPU device (Triton's interpreter), else the GPU's arch name ("sm90";
    `ATTNVERIFY_ARCH` overrides it). `interpreter=False` without a device gives "gpu"."""
    if interpreter is not None and (interpreter or device is None):
        return "interpreter" if interpreter else "gpu"
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cpu":
        return "interpreter"
    return current_arch(dev).name


def _matches(key: str, want: str, field: int) -> bool:
    if key in (WILDCARD, want):
        return True
    return field == 3 and key == "gpu" and want != "interpreter"


def lookup(variant: str, dtype: str, quantity: str, arch: str = "gpu") -> Rule:
    """The most specific rule for (variant, dtype, quantity, arch kind).

    Raises:
        KeyError: no rule matches (every quantity a spec compares has a wildcard entry).
    """
    best: Rule | None = None
    best_score = -1
    want = (variant, dtype, quantity, arch)
    for key, rule in RULES.items():
        if all(_matches(k, w, i) for i, (k, w) in enumerate(zip(key, want, strict=True))):
            # a named arch outranks "gpu", which outranks "*"
            score = sum(k != WILDCARD for k in key) * 2 + (key[3] not in (WILDCARD, "gpu"))
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


__all__ = [
    "ARCH_KINDS",
    "ORACLE_AGREEMENT",
    "RULES",
    "WILDCARD",
    "Rule",
    "arch_kind",
    "eps",
    "lookup",
]
