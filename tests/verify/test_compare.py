"""compare(): verdicts and debugging facts on known tensors; it never raises."""

from __future__ import annotations

import dataclasses
import json
import math

import torch

from attnverify.verify.compare import compare
from attnverify.verify.tolerance import eps, lookup

RULE = lookup("gqa", "float16", "out")
F16 = torch.float16


def _tensors(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(ref float64 (2, 3, 4, 8), baseline = ref rounded through float16)."""
    gen = torch.Generator().manual_seed(seed)
    ref = torch.randn((2, 3, 4, 8), generator=gen, dtype=torch.float64)
    return ref, ref.to(F16).to(torch.float64)


def test_compare_identical_passes() -> None:
    ref, base = _tensors()
    c = compare("gqa/float16/out", "out", ref.clone(), ref, base, RULE, F16)
    assert c.passed, str(c)
    assert c.max_abs == 0 and c.mismatches == 0 and c.nan_disagreements == 0


def test_compare_reports_single_outlier_with_index_and_path() -> None:
    ref, base = _tensors()
    impl = base.clone()
    base_err = float((base - ref).abs().max())
    bump = 10 * RULE.ratio * base_err + 1.0
    impl[1, 2, 3, 4] += bump
    c = compare("gqa/float16/out", "out", impl, ref, base, RULE, F16)
    assert not c.passed
    assert c.max_abs_index == (1, 2, 3, 4), c.max_abs_index
    assert c.mismatches == 1, c.mismatches
    assert c.numel == ref.numel()
    assert math.isclose(c.max_abs, abs(float(impl[1, 2, 3, 4] - ref[1, 2, 3, 4])))
    assert c.baseline_max_abs == base_err
    assert c.ratio > RULE.ratio
    text = str(c)
    assert text.startswith("gqa/float16/out: MISMATCH"), text
    assert "(1, 2, 3, 4)" in text and "1 / 192" in text, text


def test_compare_within_ratio_of_baseline_passes() -> None:
    ref, base = _tensors()
    impl = ref + (base - ref) * (RULE.ratio * 0.9)
    c = compare("p", "out", impl, ref, base, RULE, F16)
    assert c.passed, str(c)


def test_compare_just_beyond_ratio_fails() -> None:
    ref, base = _tensors()
    floor = RULE.floor_ulps * eps(F16) * float(ref.abs().max())
    base_err = float((base - ref).abs().max())
    impl = ref.clone()
    impl[0, 0, 0, 0] += 1.01 * (RULE.ratio * base_err + floor)
    c = compare("p", "out", impl, ref, base, RULE, F16)
    assert not c.passed, str(c)


def test_compare_nan_where_oracle_finite_fails() -> None:
    ref, base = _tensors()
    impl = ref.clone()
    impl[0, 1, 2, 3] = float("nan")
    c = compare("p", "out", impl, ref, base, RULE, F16)
    assert not c.passed
    assert c.nan_disagreements == 1 and c.first_nan_disagreement == (0, 1, 2, 3)


def test_compare_inf_pattern_must_match() -> None:
    ref = torch.tensor([0.5, -math.inf, 1.5], dtype=torch.float64)
    rule = lookup("gqa", "float16", "lse")
    same = compare("p", "lse", ref.clone(), ref, ref, rule, torch.float32)
    assert same.passed, str(same)
    finite = compare("p", "lse", torch.tensor([0.5, -1e30, 1.5]), ref, ref, rule, torch.float32)
    assert not finite.passed and finite.first_nan_disagreement == (1,)
    flipped = compare("p", "lse", torch.tensor([0.5, math.inf, 1.5]), ref, ref, rule, torch.float32)
    assert not flipped.passed


def test_compare_structural_zero_rows_must_be_exact() -> None:
    ref, base = _tensors()
    ref[0, 0, 1] = 0.0
    base[0, 0, 1] = 0.0
    zeros = torch.zeros((*ref.shape[:-1], 1), dtype=torch.bool)
    zeros[0, 0, 1] = True
    impl = base.clone()
    impl[0, 0, 1, 5] = eps(F16) * 1e-3
    c = compare("p", "out", impl, ref, base, RULE, F16, zeros=zeros)
    assert not c.passed and c.zero_violations == 1 and c.first_zero_violation == (0, 0, 1, 5)
    ok = compare("p", "out", base.clone(), ref, base, RULE, F16, zeros=zeros)
    assert ok.passed, str(ok)


def test_compare_nan_baseline_cannot_excuse_large_errors() -> None:
    ref, _ = _tensors()
    base = torch.full_like(ref, float("nan"))
    impl = ref * (1 + 2 * RULE.cap)
    c = compare("p", "out", impl, ref, base, RULE, F16)
    assert not c.passed, str(c)
    ref_max = float(ref.abs().max())
    assert c.bound == RULE.cap * ref_max + RULE.floor_ulps * eps(F16) * ref_max, c.bound


def test_compare_overflowed_baseline_is_capped() -> None:
    ref, _ = _tensors()
    base = ref + 1e4
    impl = ref * (1 + 2 * RULE.cap)
    c = compare("p", "out", impl, ref, base, RULE, F16)
    assert not c.passed, str(c)


def test_compare_magnitude_gives_cancelled_quantity_a_floor() -> None:
    rule = lookup("gqa", "float32", "dq")
    ref = torch.zeros(4, 8, dtype=torch.float64)
    impl = torch.full((4, 8), eps(torch.float32))
    without = compare("p", "dq", impl, ref, ref, rule, torch.float32)
    assert not without.passed
    with_mag = compare("p", "dq", impl, ref, ref, rule, torch.float32, magnitude=1.0)
    assert with_mag.passed, str(with_mag)


def test_compare_never_raises() -> None:
    ref, base = _tensors()
    wrong_shape = compare("p", "out", ref[:1], ref, base, RULE, F16)
    assert not wrong_shape.passed and "shape" in wrong_shape.reason
    not_tensor = compare("p", "out", None, ref, base, RULE, F16)
    assert not not_tensor.passed and "NoneType" in not_tensor.reason
    boolean = compare("p", "out", ref > 0, ref, base, RULE, F16)
    assert not boolean.passed
    empty = torch.zeros(0, 3, dtype=torch.float64)
    assert compare("p", "out", empty.clone(), empty, empty, RULE, F16).passed


def test_compare_to_dict_is_json() -> None:
    ref, base = _tensors()
    impl = ref.clone()
    impl[0, 0, 0, 0] = float("nan")
    d = compare("p", "out", impl, ref, base, RULE, F16).to_dict()
    text = json.dumps(d)
    assert json.loads(text)["nan_disagreements"] == 1


def test_compare_logit_rel_floor_scales_with_logit_scale_not_dtype() -> None:
    """logit_rel adds logit_rel * S * max|ref| to the floor whatever the quantity's dtype: an
    error just under it passes at S, fails at S / 4, and fp16 and bf16 quantities agree."""
    ref, _ = _tensors()
    rule = dataclasses.replace(RULE, floor_ulps=0.0, logit_rel=2.0**-14)
    s = 1000.0
    impl = ref.clone()
    impl[0, 0, 0, 0] += 0.9 * rule.logit_rel * s * float(ref.abs().max())
    for dtype in (F16, torch.bfloat16):
        assert compare("p", "out", impl, ref, ref, rule, dtype, logit_scale=s).passed
        assert not compare("p", "out", impl, ref, ref, rule, dtype, logit_scale=s / 4).passed
