"""check(): every variant against the oracle in lower precision; failures, shrinking, replay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from attnverify import reference
from attnverify.verify import Case, check, replay
from attnverify.verify.case import VARIANTS
from attnverify.verify.specs import get_spec

from .emulation import lower_precision

EXAMPLES = 6


def reference_impl(variant: str):
    """The oracle in float32 with kernel-like outputs (out in the input/out dtype, lse fp32)."""
    if variant == "merge":
        return lower_precision(reference.merge_attention_states)
    if variant == "fp8":
        return lower_precision(reference.fp8_attention, out_dtype_key="out_dtype")
    name = {"gqa": "gqa_attention", "varlen": "varlen_attention", "paged": "paged_attention"}
    return lower_precision(getattr(reference, name[variant]))


@pytest.mark.parametrize("variant", VARIANTS)
def test_runner_reference_in_float32_passes(variant: str, tmp_path: Path) -> None:
    seen = []
    report = check(
        variant,
        reference_impl(variant),
        examples=EXAMPLES,
        replay_dir=tmp_path,
        progress=lambda done, total, r: seen.append((done, total)),
    )
    assert report.passed, str(report)
    expected = 2 * (EXAMPLES + len(get_spec(variant).pinned_cases()))
    assert report.num_cases == expected, report.num_cases
    assert seen[-1] == (expected, expected), seen
    rows = report.summary()
    assert {r["quantity"] for r in rows} >= {"out", "lse"}, rows
    assert all(r["failures"] == 0 and r["cases"] > 0 for r in rows), rows
    json.dumps(report.to_dict())
    assert not list(tmp_path.iterdir()), "a passing run wrote replay files"


def _drop_keys_past_64(q, k, v, **kwargs):
    """gqa that silently ignores keys beyond the first 64 (a missing last-tile loop); exact
    up to 64 keys, so the minimal failing case has Lk = 65."""
    if k.shape[2] <= 64:
        return lower_precision(reference.gqa_attention)(q, k, v, **kwargs)
    return lower_precision(reference.gqa_attention)(q, k[:, :, :64], v[:, :, :64], **_cut(kwargs))


def _cut(kwargs):
    out = dict(kwargs)
    for name in ("mask", "bias"):
        x = out.get(name)
        if x is not None and x.shape[-1] > 64:
            out[name] = x[..., :64]
    out["causal"] = False
    return out


def test_runner_shrinks_failure_to_minimal_case_and_replays(tmp_path: Path) -> None:
    report = check(
        "gqa",
        _drop_keys_past_64,
        dtypes=["float32"],
        examples=30,
        grads=False,
        replay_dir=tmp_path,
        pinned=False,
    )
    assert not report.passed
    (failure,) = report.failures
    case = failure.case
    assert case.lk == 65, f"not shrunk to the smallest failing Lk: {case.short()}"
    assert (case.heads_q, case.heads_k, case.batch, case.mask_shape) == (1, 1, 1, None), case
    path = Path(failure.replay_path)
    assert path.exists() and path.parent == tmp_path
    data = json.loads(path.read_text())
    assert Case.from_dict(data["case"]) == case and data["grads"] is False
    again = replay(path, _drop_keys_past_64)
    assert not again.passed and again.case == case
    fixed = replay(path, reference_impl("gqa"))
    assert fixed.passed, str(fixed)
    assert "attnverify replay" in str(report) and "gqa/float32/out" in str(report)


def _raises(q, k, v, **kwargs):
    raise RuntimeError("kernel launch failed: too many resources requested")


def _wrong_shape(q, k, v, **kwargs):
    out, lse = lower_precision(reference.gqa_attention)(q, k, v, **kwargs)
    return out.transpose(1, 2), lse


def _writes_input(q, k, v, **kwargs):
    result = lower_precision(reference.gqa_attention)(q, k, v, **kwargs)
    with torch.no_grad():
        k.mul_(1.0)
        k[0, 0, 0, 0] = 0
    return result


def _no_lse(q, k, v, **kwargs):
    kwargs.pop("return_lse")
    return lower_precision(reference.gqa_attention)(q, k, v, **kwargs, return_lse=True)[0]


@pytest.mark.parametrize(
    ("impl", "message"),
    [
        (_raises, "too many resources"),
        (_wrong_shape, "shape"),
        (_writes_input, "wrote into its inputs: k"),
        (_no_lse, "expected (out, lse)"),
    ],
    ids=["raises", "wrong-shape", "writes-input", "no-lse"],
)
def test_runner_broken_impl_is_a_failed_case_not_an_exception(impl, message, tmp_path) -> None:
    case = Case(variant="gqa", dtype="float16", seed=3, heads_q=2, lq=5, lk=9, layout="packed")
    report = check("gqa", impl, cases=[case], grads=False, replay_dir=tmp_path)
    assert not report.passed
    text = str(report)
    assert message in text, text
    json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert report.results[0].replay_path is not None


def test_runner_backward_missing_is_reported(tmp_path: Path) -> None:
    def no_grad(q, k, v, **kwargs):
        with torch.no_grad():
            return lower_precision(reference.gqa_attention)(q, k, v, **kwargs)

    case = Case(variant="gqa", dtype="float32", seed=0, lq=3, lk=4)
    report = check("gqa", no_grad, cases=[case], replay_dir=tmp_path)
    assert not report.passed and "grads=False" in str(report)
    assert check("gqa", no_grad, cases=[case], grads=False, replay_dir=tmp_path).passed


def test_runner_empty_rows_must_be_exact_zero(tmp_path: Path) -> None:
    def empty_rows_mean_v(q, k, v, **kwargs):
        out, lse = lower_precision(reference.gqa_attention)(q, k, v, **kwargs)
        mean = v.float().mean(dim=2, keepdim=True).repeat_interleave(q.shape[1] // k.shape[1], 1)
        return torch.where(torch.isneginf(lse).unsqueeze(-1), mean.to(out.dtype), out), lse

    case = Case(variant="gqa", dtype="float16", seed=0, lq=6, lk=2, causal=True)
    report = check("gqa", empty_rows_mean_v, cases=[case], grads=False, replay_dir=tmp_path)
    out = report.results[0].comparisons[0]
    assert not out.passed and out.zero_violations > 0, str(out)


def test_runner_unwritten_output_rows_show(tmp_path: Path) -> None:
    def forgets_last_row(q, k, v, **kwargs):
        out, lse = lower_precision(reference.gqa_attention)(q, k, v, **kwargs)
        res = torch.empty(out.shape, dtype=out.dtype)
        res[:, :, :-1] = out[:, :, :-1]
        return res, lse

    case = Case(variant="gqa", dtype="float16", seed=1, heads_q=2, lq=5, lk=20)
    report = check("gqa", forgets_last_row, cases=[case], grads=False, replay_dir=tmp_path)
    out = report.results[0].comparisons[0]
    assert not out.passed and out.max_abs_index[2] == case.lq - 1, str(out)


def test_runner_pinned_case_failure_is_reported_with_replay(tmp_path: Path) -> None:
    def decode_top_left(q, k, v, *, causal=False, **kwargs):
        if causal and q.shape[2] == 1:
            k, v = k[:, :, :1], v[:, :, :1]
        return lower_precision(reference.gqa_attention)(q, k, v, causal=causal, **kwargs)

    report = check(
        "gqa", decode_top_left, dtypes=["float16"], examples=1, grads=False, replay_dir=tmp_path
    )
    assert not report.passed and not report.errors, str(report)
    (failure,) = report.failures
    assert failure.case in get_spec("gqa").pinned_cases(), failure.case.short()
    assert failure.replay_path and Path(failure.replay_path).exists()


def test_runner_no_dtype_is_an_error_not_a_vacuous_pass(tmp_path: Path) -> None:
    report = check("gqa", reference_impl("gqa"), dtypes=[], replay_dir=tmp_path)
    assert report.num_cases == 0 and not report.passed
    assert "no input dtype" in str(report), str(report)
