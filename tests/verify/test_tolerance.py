"""Tolerance policy: lookup, and the evidence behind its numbers.

- A flash-style implementation (tests/verify/emulation.py: online softmax over KV blocks, exp2
  with log2(e) folded in, P rounded to the input dtype, FlashAttention-2 backward) passes in
  float16, bfloat16 and float32, forward and backward; the fp8 one (P rounded per block after
  the running max) passes too. Their worst ratios are quoted in tolerance.py.
- fp32 is IEEE: the oracle in float32 with q, k, v rounded to TF32 fails fp32 cases.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings

from attnverify import reference
from attnverify.verify import Case, check
from attnverify.verify.case import VARIANTS
from attnverify.verify.runner import run_case
from attnverify.verify.specs import get_spec
from attnverify.verify.tolerance import ARCH_KINDS, RULES, arch_kind, lookup

from .emulation import flash_fp8, flash_gqa, round_tf32, tf32

EXAMPLES = 8


def test_tolerance_lookup_prefers_the_most_specific_entry() -> None:
    assert lookup("gqa", "float32", "out") == RULES[("*", "float32", "out", "*")]
    assert lookup("gqa", "float16", "out") == RULES[("*", "*", "out", "*")]
    assert lookup("fp8", "float8_e5m2", "out") == RULES[("fp8", "*", "out", "*")]
    with pytest.raises(KeyError, match="no tolerance rule"):
        lookup("gqa", "float16", "dz")


# arch names the table keys entries on ("sm89", "sm90"): lookups there must cover everything too
NAMED_ARCHES = sorted({key[3] for key in RULES} - {"*", *ARCH_KINDS})


@pytest.mark.parametrize("variant", VARIANTS)
def test_tolerance_covers_every_quantity(variant: str) -> None:
    spec = get_spec(variant)
    case = Case(variant=variant, dtype="float16", seed=0, bias_shape=(1, 1, 1, 1))
    for dtype in (*spec.default_dtypes(torch.device("cpu")), "bfloat16"):
        for quantity in spec.quantities(case, grads=True):
            for arch in (*ARCH_KINDS, *NAMED_ARCHES):
                rule = lookup(variant, dtype, quantity, arch)
                assert rule.ratio >= 1 and rule.floor_ulps > 0 and 0 < rule.cap < 1, rule


def test_tolerance_round_tf32_keeps_ten_mantissa_bits() -> None:
    x = torch.tensor([1.0 + 2.0**-10, 1.0 + 2.0**-11 + 2.0**-12, 3.0])
    assert round_tf32(x).tolist() == [1.0 + 2.0**-10, 1.0 + 2.0**-10, 3.0]


@pytest.mark.parametrize(
    "case",
    [
        Case(variant="gqa", dtype="float32", seed=1, heads_q=2, head_dim=64, lq=64, lk=64),
        Case(variant="gqa", dtype="float32", seed=2, lq=1, lk=33, head_dim=72, causal=True),
        Case(
            variant="varlen",
            dtype="float32",
            seed=3,
            head_dim=80,
            seqlens_q=(17, 0, 40),
            seqlens_k=(17, 5, 40),
        ),
    ],
    ids=["gqa-64x64", "gqa-decode-d72", "varlen"],
)
def test_tolerance_tf32_fails_fp32(case: Case, tmp_path) -> None:
    fn = reference.gqa_attention if case.variant == "gqa" else reference.varlen_attention
    report = check(case.variant, tf32(fn), cases=[case], grads=False, replay_dir=tmp_path)
    assert not report.passed, str(report)
    out = next(c for c in report.results[0].comparisons if c.quantity == "out")
    assert not out.passed and out.ratio > 10, str(out)


def test_tolerance_tf32_fails_drawn_fp32_cases(tmp_path) -> None:
    report = check(
        "gqa",
        tf32(reference.gqa_attention),
        dtypes=["float32"],
        examples=EXAMPLES,
        grads=False,
        replay_dir=tmp_path,
    )
    assert not report.passed, str(report)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_tolerance_flash_emulation_passes(dtype: str, tmp_path) -> None:
    report = check("gqa", flash_gqa, dtypes=[dtype], examples=EXAMPLES, seed=5, replay_dir=tmp_path)
    assert report.passed, str(report)
    assert report.num_cases == EXAMPLES + len(get_spec("gqa").pinned_cases())


def test_tolerance_flash_fp8_emulation_passes(tmp_path) -> None:
    report = check("fp8", flash_fp8, examples=EXAMPLES, seed=5, replay_dir=tmp_path)
    assert report.passed, str(report)


def test_tolerance_named_arch_outranks_gpu_and_wildcard() -> None:
    """An arch-named entry applies to that arch only; other GPUs and the interpreter keep the
    general fp8 lse rule."""
    general = lookup("fp8", "float8_e4m3fn", "lse", "interpreter")
    assert lookup("fp8", "float8_e4m3fn", "lse", "sm100") == general
    hopper = lookup("fp8", "float8_e4m3fn", "lse", "sm90")
    assert hopper != general
    assert hopper.floor_ulps > general.floor_ulps
    out_general = lookup("fp8", "float8_e4m3fn", "out", "interpreter")
    out_hopper = lookup("fp8", "float8_e4m3fn", "out", "sm90")
    assert out_general.logit_rel == 0.0 < out_hopper.logit_rel
    assert dataclasses.replace(out_hopper, logit_rel=0.0) == out_general


def test_tolerance_arch_kind_names_the_gpu_arch(monkeypatch: pytest.MonkeyPatch) -> None:
    """arch_kind gives "interpreter" on the CPU and the (possibly overridden) arch name on a GPU."""
    assert arch_kind("cpu") == "interpreter"
    monkeypatch.setenv("ATTNVERIFY_ARCH", "sm90")
    assert arch_kind("cuda:0") == "sm90"


def _scaled_fp8(factor: float):
    """The fp8 oracle in fp32 with its softmax scale off by `factor` (a planted scale bug)."""

    def run(q, k, v, q_descale, k_descale, v_descale, *, scale=None, **kw):
        wrong = (scale if scale is not None else q.shape[-1] ** -0.5) * factor
        return reference.fp8_attention(
            q, k, v, q_descale, k_descale, v_descale, scale=wrong, compute_dtype=torch.float32, **kw
        )

    return run


def _ci_fp8_cases() -> list[Case]:
    """The CI profile's e4m3 draws (30, derandomized) and the spec's pinned cases."""
    spec = get_spec("fp8")
    cases: list[Case] = []

    @settings(
        max_examples=30,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(spec.strategy("ci", ["float8_e4m3fn"]))
    def collect(case: Case) -> None:
        cases.append(case)

    collect()
    return cases + spec.pinned_cases()


def _v_scaled_fp8(factor: float):
    """The fp8 oracle in fp32 with v_descale off by `factor` (a planted V-side bug, which lse
    cannot see)."""

    def run(q, k, v, q_descale, k_descale, v_descale, **kw):
        return reference.fp8_attention(
            q, k, v, q_descale, k_descale, v_descale * factor, compute_dtype=torch.float32, **kw
        )

    return run


def test_tolerance_sm90_fp8_out_still_catches_v_errors() -> None:
    """The sm89/sm90 fp8 out floor (logit_rel: the score error of the hardware's accumulation)
    keeps the out check's power: a 10% V-scale error fails out under the sm90 rule in every
    drawn case where it fails under the generic rule, and in at least 90% of the cases."""
    spec = get_spec("fp8")
    caught = {"interpreter": 0, "sm90": 0}
    cases = _ci_fp8_cases()
    for case in cases:
        for arch in caught:
            result = run_case(spec, case, _v_scaled_fp8(1.1), device="cpu", grads=False, arch=arch)
            assert result.error is None, result.error
            caught[arch] += not next(c for c in result.comparisons if c.quantity == "out").passed
    assert caught["sm90"] == caught["interpreter"], caught
    assert caught["sm90"] >= 0.9 * len(cases), f"out caught {caught} of {len(cases)}"


def test_tolerance_sm90_fp8_lse_still_catches_a_scale_error() -> None:
    """The wide sm89/sm90 fp8 lse floor (the hardware's reduced-precision accumulation) keeps
    its power: a 2% softmax-scale error fails lse in at least 90% of drawn cases."""
    spec = get_spec("fp8")
    cases = _ci_fp8_cases()
    caught = 0
    for case in cases:
        result = run_case(spec, case, _scaled_fp8(1.02), device="cpu", grads=False, arch="sm90")
        assert result.error is None, result.error
        caught += not next(c for c in result.comparisons if c.quantity == "lse").passed
    assert caught >= 0.9 * len(cases), f"lse caught {caught} of {len(cases)} 2% scale errors"
